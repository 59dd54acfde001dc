import assert from 'node:assert/strict';
import { test } from 'node:test';
import { listSessions } from './session-list.ts';
import type { SessionView } from './pipeline-core.ts';

const view = (id: string, lastUsedMs: number, o: Partial<SessionView> = {}): SessionView => ({ id, seq: 0, positions: 10, busy: false, moving: false, lastUsedMs, epoch: 1, saved: false, ...o });

test('sessions of every pipeline: busy and moving first, then the most recently used, then by id', () => {
  const list = listSessions([
    { pipelineId: 'p0', sessions: [view('a', 100), view('b', 300), view('c', 50, { busy: true })] },
    { pipelineId: 'p1', sessions: [view('d', 300), view('e', 10)] },
  ], new Set(['e']), 0);
  assert.deepEqual(list.sessions.map((s) => s.id), ['c', 'e', 'b', 'd', 'a']);
  assert.equal(list.total, 5);
  const e = list.sessions.find((s) => s.id === 'e')!;
  assert.equal(e.pipelineId, 'p1');
  assert.equal(e.moving, true, 'a session the coordinator is moving is moving');
  assert.equal(e.lastUsedMs, 10n);
});

test('the limit cuts the list but not the total', () => {
  const list = listSessions([{ pipelineId: 'p0', sessions: [view('a', 1), view('b', 2), view('c', 3)] }], new Set(), 2);
  assert.deepEqual(list.sessions.map((s) => s.id), ['c', 'b']);
  assert.equal(list.total, 3);
  assert.equal(listSessions([], new Set(), 0).sessions.length, 0);
});
