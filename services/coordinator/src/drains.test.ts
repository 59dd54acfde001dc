import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { StageInfoSchema } from '@strata/wire';
import { decodeMark, drainOf, encodeMark, staleMarks, type DrainMark } from './drains.ts';

const stage = (id: string, started: bigint) => create(StageInfoSchema, { workerId: id, l0: 0, l1: 8, nLayer: 8, modelFingerprint: 'fp', modelId: 'm', startedAtMs: started });
const mark = (worker: string, startedAtMs: number, o: Partial<DrainMark> = {}): DrainMark => ({ worker, startedAtMs, pipeline: 'a~b', forced: false, atMs: 5, ...o });
const marks = (...ms: DrainMark[]) => new Map(ms.map((m) => [m.worker, m]));

test('a mark drains the pipeline its worker process is in, whatever the pipeline, and not a restarted process', () => {
  const m = mark('b', 100);
  assert.equal(drainOf([stage('a', 7n), stage('b', 100n)], marks(m)), m);
  assert.equal(drainOf([stage('c', 7n), stage('b', 100n)], marks(m)), m, 'b in another pipeline now: still drained');
  assert.equal(drainOf([stage('a', 7n), stage('b', 101n)], marks(m)), null, 'b restarted');
  assert.equal(drainOf([stage('a', 7n), stage('c', 100n)], marks(m)), null);
});

test('a mark is stale once its worker runs as another process or is stopping; an unheard worker keeps it', () => {
  const ms = marks(mark('a', 1), mark('b', 2), mark('c', 3), mark('d', 4));
  const workers = new Map([['a', { startedAtMs: 1, stopping: false }], ['b', { startedAtMs: 20, stopping: false }], ['c', { startedAtMs: 3, stopping: true }]]);
  assert.deepEqual(staleMarks(ms, workers), ['b', 'c']);
});

test('marks survive the trip through Redis; anything else stored there is left out', () => {
  const m = mark('b', 1_795_000_000_000, { forced: true });
  assert.deepEqual(decodeMark('b', encodeMark(m)), m);
  assert.equal(decodeMark('c', encodeMark(m)), null, 'stored under another worker');
  for (const bad of ['', 'null', '[]', '{"worker":"b"}', '{"worker":"b","startedAtMs":"1","pipeline":"x","forced":false,"atMs":1}']) assert.equal(decodeMark('b', bad), null, bad);
});
