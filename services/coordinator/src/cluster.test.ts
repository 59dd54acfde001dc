import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { StageInfoSchema } from '@strata/wire';
import { clusterTransition, initialCluster, type ClusterMsg } from './cluster.ts';

const stage = (id: string, l0: number, l1: number, fp = 'fp', started = 1n, group = '') =>
  create(StageInfoSchema, { workerId: id, l0, l1, nLayer: 8, modelFingerprint: fp, modelId: 'm', startedAtMs: started, group });
const hb = (info: ReturnType<typeof stage>, nowMs: number, draining = false, reconnects = 0): ClusterMsg => ({ type: 'heartbeat', info, kvCellsUsed: 0, draining, nowMs, reconnects });
const o = { workerTimeoutMs: 3000 };

test('pipelines assemble from stages of one model, split differently, and only once', () => {
  const s = initialCluster();
  const ups: string[] = [];
  const feed = (m: ClusterMsg) => {
    for (const e of clusterTransition(s, m, o).effects) if (e.type === 'pipeline_up') ups.push(e.pipeline.id);
  };
  feed(hb(stage('a', 0, 4), 0));
  feed(hb(stage('x', 0, 8, 'other'), 0));
  assert.deepEqual(ups, ['x'], 'a one-stage pipeline of another model');
  feed(hb(stage('c', 0, 2), 0));
  feed(hb(stage('b', 4, 8), 0));
  feed(hb(stage('d', 2, 8), 0));
  feed(hb(stage('b', 4, 8), 10));
  assert.deepEqual(ups, ['x', 'a~b', 'c~d']);
  assert.equal(s.pipelines.get('c~d')!.stages.map((st) => `${st.l0}:${st.l1}`).join(','), '0:2,2:8');
});

test('a silent, restarted or draining worker takes its pipeline down; a new stage rebuilds one', () => {
  const s = initialCluster();
  const run = (m: ClusterMsg) => clusterTransition(s, m, o).effects.map((e) => `${e.type}:${e.pipeline.id}`);
  run(hb(stage('a', 0, 4), 0));
  assert.deepEqual(run(hb(stage('b', 4, 8), 0)), ['pipeline_up:a~b']);
  run(hb(stage('a', 0, 4), 2500));
  assert.deepEqual(run({ type: 'tick', nowMs: 3500 }), ['pipeline_down:a~b'], 'b missed heartbeats');
  assert.equal(s.workers.has('b'), false);
  assert.deepEqual(run(hb(stage('b', 4, 8), 3600)), ['pipeline_up:a~b']);
  assert.deepEqual(run(hb(stage('b', 4, 8, 'fp', 2n), 3700)), ['pipeline_down:a~b', 'pipeline_up:a~b'], 'restart: its cache is gone');
  assert.deepEqual(run(hb(stage('a', 0, 4), 3800, true)), ['pipeline_down:a~b']);
  assert.equal(s.pipelines.size, 0);
});

test('stages chain only within their pipeline group', () => {
  const s = initialCluster();
  const ups: string[] = [];
  for (const info of [stage('a0', 0, 4, 'fp', 1n, 'A'), stage('b1', 4, 8, 'fp', 1n, 'B'), stage('a1', 4, 8, 'fp', 1n, 'A'), stage('b0', 0, 4, 'fp', 1n, 'B')]) {
    for (const e of clusterTransition(s, hb(info, 0), o).effects) ups.push(e.pipeline.id);
  }
  assert.deepEqual(ups, ['a0~a1', 'b0~b1']);
});

test('stages chain only with stages of the same role; a pipeline takes its stages\' role', () => {
  const s = initialCluster();
  const ups: string[] = [];
  const roled = (id: string, l0: number, l1: number, role: string) => create(StageInfoSchema, { ...stage(id, l0, l1), role });
  for (const info of [roled('a0', 0, 4, 'prefill'), roled('b1', 4, 8, 'decode'), roled('b0', 0, 4, 'decode'), roled('a1', 4, 8, 'prefill'), stage('c0', 0, 8)]) {
    for (const e of clusterTransition(s, hb(info, 0), o).effects) if (e.type === 'pipeline_up') ups.push(`${e.pipeline.id} ${e.pipeline.role}`);
  }
  assert.deepEqual(ups, ['b0~b1 decode', 'a0~a1 prefill', 'c0 both'], 'a worker without a role (older, or not given one) does both');
});

test("a worker's NATS reconnect is told for its pipeline, once per reconnect; a restart is a restart", () => {
  const s = initialCluster();
  const run = (m: ClusterMsg) => clusterTransition(s, m, o).effects.map((e) => `${e.type}:${e.pipeline.id}${e.type === 'reconnected' ? `:${e.workerId}` : ''}`);
  const again = (info: ReturnType<typeof stage>, nowMs: number, reconnects: number) => hb(info, nowMs, false, reconnects);
  run(hb(stage('a', 0, 4), 0));
  assert.deepEqual(run(hb(stage('b', 4, 8), 0)), ['pipeline_up:a~b']);
  assert.deepEqual(run(again(stage('b', 4, 8), 100, 0)), []);
  assert.deepEqual(run(again(stage('b', 4, 8), 200, 1)), ['reconnected:a~b:b']);
  assert.deepEqual(run(again(stage('b', 4, 8), 300, 1)), [], 'told once');
  assert.deepEqual(run(again(stage('b', 4, 8, 'fp', 2n), 400, 0)), ['pipeline_down:a~b', 'pipeline_up:a~b'], 'a restarted worker counts from 0 again');
  assert.deepEqual(run(again(stage('b', 4, 8, 'fp', 2n), 500, 1)), ['reconnected:a~b:b']);
  run(hb(stage('x', 0, 4), 600));
  assert.deepEqual(run(again(stage('x', 0, 4), 700, 3)), [], 'a worker in no pipeline');
});
