import assert from 'node:assert/strict';
import { create } from '@bufbuild/protobuf';
import { test } from 'node:test';
import { ClusterStateSchema, MigrationInfoSchema, SessionInfoSchema, StageLoadSchema, WorkerStateSchema } from '@strata/wire';
import { busyNote, renderMigrations, renderSessions, renderStatus } from './status.ts';

const stage = (workerId: string, l0: number, l1: number) => ({ workerId, l0, l1, nLayer: 8, kvCells: 100, kvStreams: 1, kvType: 'f16', nSeqMax: 4 });
const NOW = 1_000_000;

test('status: pipelines in id order with each worker\'s layers and KV bar, free workers, sessions and migrations', () => {
  const cluster = create(ClusterStateSchema, {
    coordinatorId: 'c1',
    pipelines: [
      { id: 'p1', modelId: 'm', stages: [stage('b0', 0, 3), stage('b1', 3, 8)], draining: true },
      { id: 'p0', modelId: 'm', stages: [stage('a0', 0, 4), stage('a1', 4, 8)], sessions: 1, seqsUsed: 1 },
    ],
    workers: [
      { stage: stage('a0', 0, 4), kvCellsUsed: 50, lastSeenMs: BigInt(NOW), pipelineId: 'p0' },
      { stage: stage('a1', 4, 8), kvCellsUsed: 50, lastSeenMs: BigInt(NOW), pipelineId: 'p0' },
      { stage: stage('b0', 0, 3), lastSeenMs: BigInt(NOW), pipelineId: 'p1' },
      { stage: stage('b1', 3, 8), lastSeenMs: BigInt(NOW - 10_000), pipelineId: 'p1' },
      { stage: stage('x0', 0, 8), kvCellsUsed: 25, lastSeenMs: BigInt(NOW) },
    ],
  });
  const sessions = [create(SessionInfoSchema, { id: 's1', pipelineId: 'p0', positions: 50, busy: true })];
  const migrations = [create(MigrationInfoSchema, { id: 'm-1', sessionId: 's1', fromPipeline: 'p1', toPipeline: 'p0', state: 'copying', createdMs: BigInt(NOW - 300), reason: 'operator' })];
  const text = renderStatus(cluster, sessions, 1, migrations, NOW);
  assert.match(text, /^coordinator c1: 2 pipeline\(s\), 5 worker\(s\), 1 session\(s\), 1 migration\(s\) under way\n/);
  assert.ok(text.indexOf('pipeline p0') < text.indexOf('pipeline p1'), 'pipelines in id order');
  assert.match(text, /\n {2}a0\s+0:4\s+f16\s+████████░░░░░░░░ {2}50%\s+50\/100 cells\n/);
  assert.match(text, /pipeline p1 {2}m {2}0 session\(s\), 0\/4 sequences, 0 queued, draining\n/);
  assert.match(text, /\n {2}b1\s+3:8\s+f16\s+░{16} {3}0%\s+0\/100 cells\s+last heard 10 s ago\n/);
  assert.match(text, /workers in no pipeline\n.*\n {2}x0\s+0:8/);
  assert.match(text, /sessions: s1 \(busy, 50\)/);
  assert.match(text, /m-1\s+s1\s+p1 → p0\s+copying…\s+0\s+–\s+0\s+–\s+300 ms\s+now\s+operator/);
});

test('sessions and migrations tables; an aborted migration says why', () => {
  assert.equal(renderSessions([], 0, NOW), 'no sessions\n');
  assert.equal(renderMigrations([], NOW), 'no migrations\n');
  const s = renderSessions([create(SessionInfoSchema, { id: 's1', pipelineId: 'p0', seq: 2, positions: 1234, lastUsedMs: BigInt(NOW - 5000), epoch: 3n })], 4, NOW);
  assert.equal(s, 'SESSION  PIPELINE  SEQ  POSITIONS  STATE  LAST USED  EPOCH\ns1       p0          2      1,234  idle         5 s      3\n(1 of 4; --limit N shows more)\n');
  const m = renderMigrations([create(MigrationInfoSchema, {
    id: 'm-2', sessionId: 's1', fromPipeline: 'p0', toPipeline: 'p1', state: 'aborted', error: 'no_room: full', createdMs: BigInt(NOW - 61_000), totalMs: 40, reason: 'drain a1',
  })], NOW);
  assert.match(m, /m-2\s+s1\s+p0 → p1\s+aborted\s+0\s+–\s+0\s+–\s+40\.0 ms\s+1 min\s+drain a1\n {2}↳ no_room: full\n$/);
});

test('a worker inside a long step says so, and SLOW past twice its prediction', () => {
  const w = (busyMs: number, slow: boolean, predictedMs: number) => create(WorkerStateSchema, {
    slow, predictedMs, load: create(StageLoadSchema, { busyStepId: 7n, busyTokens: 1024, busyMs }),
  });
  assert.equal(busyNote(w(300, false, 250)), '', 'a short step is not worth a note');
  assert.equal(busyNote(w(4200, false, 3000)), 'step of 1,024 tokens for 4.2 s (3.0 s expected)');
  assert.equal(busyNote(w(4200, true, 300)), 'SLOW: step of 1,024 tokens for 4.2 s (0.3 s expected)');
  assert.equal(busyNote(create(WorkerStateSchema, {})), '');
});
