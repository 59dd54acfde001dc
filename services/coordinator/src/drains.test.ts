import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { StageInfoSchema } from '@strata/wire';
import { decodeMark, drainOf, drainRefusal, encodeMark, staleMarks, type DrainMark, type DrainTarget } from './drains.ts';

const stage = (id: string, started: bigint) => create(StageInfoSchema, { workerId: id, l0: 0, l1: 8, nLayer: 8, modelFingerprint: 'fp', modelId: 'm', startedAtMs: started });
const mark = (worker: string, startedAtMs: number, o: Partial<DrainMark> = {}): DrainMark => ({ worker, startedAtMs, pipeline: 'a~b', forced: false, atMs: 5, ...o });
const marks = (...ms: DrainMark[]) => new Map(ms.map((m) => [m.worker, m]));
const p = (id: string, draining = false, fingerprint = 'fp'): DrainTarget => ({ id, modelId: 'm', fingerprint, draining });

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

test('a drain is refused when no other pipeline of the model would take work, unless the target drains already', () => {
  assert.equal(drainRefusal('w', p('a'), [p('a'), p('b')]), null, 'b takes work');
  assert.equal(drainRefusal('w', p('a', true), [p('a', true), p('b', true)]), null, 'draining it again changes nothing');
  const only = drainRefusal('w', p('a'), [p('a'), p('x', false, 'other')]);
  assert.match(only!, /draining worker w would leave model 'm' with no pipeline that takes work: it is the only pipeline of the model \(pipeline a\)/, 'a pipeline of another model does not count');
  assert.match(only!, /--force/);
  assert.match(drainRefusal('w', p('a'), [p('a'), p('b', true), p('c', true)])!, /the other 2 pipeline\(s\) of the model are draining/);
});

test('marks survive the trip through Redis; anything else stored there is left out', () => {
  const m = mark('b', 1_795_000_000_000, { forced: true });
  assert.deepEqual(decodeMark('b', encodeMark(m)), m);
  assert.equal(decodeMark('c', encodeMark(m)), null, 'stored under another worker');
  for (const bad of ['', 'null', '[]', '{"worker":"b"}', '{"worker":"b","startedAtMs":"1","pipeline":"x","forced":false,"atMs":1}']) assert.equal(decodeMark('b', bad), null, bad);
});
