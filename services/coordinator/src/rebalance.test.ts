import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pickRebalance, type PipelineLoad } from './rebalance.ts';

const p = (id: string, occupancy: number, sessions: [string, number][], o: Partial<PipelineLoad> = {}): PipelineLoad =>
  ({ id, fingerprint: 'fp', draining: false, occupancy, cells: 1000, sessions: sessions.map(([sid, cells]) => ({ id: sid, cells })), ...o });

test('the largest session that fits below the low watermark moves to the emptiest pipeline', () => {
  const move = pickRebalance([p('a', 0.95, [['s1', 300], ['s2', 500], ['s3', 150]]), p('b', 0.3, []), p('c', 0.1, [])], 0.9, 0.7);
  assert.deepEqual(move, { session: 's2', from: 'a', to: 'c', occupancy: 0.95 });
  // c can take at most 0.6 of its cells below 0.7: 500 fits; with c at 0.3, only 300 would.
  assert.equal(pickRebalance([p('a', 0.95, [['s1', 300], ['s2', 500]]), p('c', 0.3, [])], 0.9, 0.7)?.session, 's1');
  // one KV stream per sequence there, of 400 cells: s2 would not fit one
  assert.equal(pickRebalance([p('a', 0.95, [['s1', 300], ['s2', 500]]), p('c', 0.1, [], { perSeq: 400 })], 0.9, 0.7)?.session, 's1');
});

test('no move below the high watermark, to a full, draining or other-model pipeline, or that would ping-pong', () => {
  assert.equal(pickRebalance([p('a', 0.85, [['s', 100]]), p('b', 0, [])], 0.9, 0.7), null, 'below high');
  assert.equal(pickRebalance([p('a', 0.95, [['s', 100]]), p('b', 0.75, [])], 0.9, 0.7), null, 'target above low');
  assert.equal(pickRebalance([p('a', 0.95, [['s', 100]]), p('b', 0, [], { draining: true })], 0.9, 0.7), null, 'target draining');
  assert.equal(pickRebalance([p('a', 0.95, [['s', 100]]), p('b', 0, [], { fingerprint: 'other' })], 0.9, 0.7), null, 'another model');
  assert.equal(pickRebalance([p('a', 0.95, [['s', 950]]), p('b', 0, [])], 0.9, 0.7), null, 'the only session would fill the target past low');
  assert.equal(pickRebalance([p('a', 0.95, [['s', 100]]), p('b', 0, [])], 0, 0.7), null, 'turned off');
});
