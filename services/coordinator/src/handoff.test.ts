// A hand-off's decisions and order against fake ports: what it pushes, claims and adopts, and
// where a request ends up when a step of it fails.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { StageInfoSchema } from '@strata/wire';
import type { PipelineView } from './cluster.ts';
import { CoordinatorError } from './errors.ts';
import { handOff, type HandOffDeps } from './handoff.ts';
import type { MigrationSource, MigrationTarget } from './migration.ts';
import type { MovedSession } from './pipeline-core.ts';

const stage = (w: string, l0: number, l1: number) => create(StageInfoSchema, { workerId: w, modelFingerprint: 'fp', modelId: 'm', nLayer: 8, l0, l1 });
const P: PipelineView = { id: 'P', modelId: 'm', fingerprint: 'fp', role: 'prefill', stages: [stage('p0', 0, 3), stage('p1', 3, 8)] };
const view = (id: string): PipelineView => ({ id, modelId: 'm', fingerprint: 'fp', role: 'decode', stages: [stage(`${id}0`, 0, 8)] });
const MOVED = { job: { requestId: 'r' }, request: {}, tokens: [] } as unknown as MovedSession;

function world(o: { noRoom?: string[]; failPush?: boolean; gone?: boolean } = {}) {
  const calls: string[] = [];
  let here = true;
  const place = { seq: 4, done: 600, cells: 700, decoding: true };
  const deps: HandOffDeps = {
    push: async (p) => {
      calls.push(`push ${p.part.source.workerId}>${p.part.target.workerId} ${p.part.l0}:${p.part.l1} [${p.p0},${p.p1}) seq ${p.seq}>${p.targetSeq}`);
      if (o.failPush) throw new CoordinatorError('push_failed', 'the link broke');
      if (o.gone) here = false;
      return 10;
    },
    claim: async (s, pipeline) => {
      calls.push(`claim ${s} for ${pipeline}`);
      return 3;
    },
  };
  const src: MigrationSource = {
    view: P, place: () => (here ? { ...place } : null), begin: (k) => void calls.push(`begin ${k}`),
    hold: async () => {}, stay: (k) => void calls.push(`stay ${k}`),
    handOver: (k) => {
      calls.push(`hand over ${k}`);
      return MOVED;
    },
  };
  const target = (id: string): MigrationTarget => ({
    view: view(id), draining: () => false,
    reserve: async (cells) => {
      calls.push(`reserve ${id} ${cells}`);
      if (o.noRoom?.includes(id)) throw new CoordinatorError('no_room', `${id} is full`);
      return 9;
    },
    adopt: (k, seq, moved, epoch) => void calls.push(`adopt ${id} ${k} seq ${seq} epoch ${epoch}${moved === MOVED ? '' : ' (other)'}`),
    cancel: async (seq) => void calls.push(`cancel ${id} ${seq}`),
  });
  return { calls, deps, src, targets: [target('D'), target('E')], place };
}

test('a prefilled request moves whole to the first decode pipeline with room, split at other layers', async () => {
  const w = world({ noRoom: ['D'] });
  const r = await handOff(w.deps, '#r', w.src, w.targets, Promise.resolve());
  assert.deepEqual([r.outcome, r.to, r.bytes, r.positions], ['done', 'E', 20, 600]);
  assert.deepEqual(w.calls, [
    'begin #r', 'reserve D 700', 'reserve E 700',
    'push p0>E0 0:3 [0,600) seq 4>9', 'push p1>E0 3:8 [0,600) seq 4>9',
    'hand over #r', 'adopt E #r seq 9 epoch 0',
  ], 'one round (it is held), no claim for a one-off request');
});

test("a session's hand-off claims it for the decode pipeline before the switch", async () => {
  const w = world();
  const r = await handOff(w.deps, 't:s', w.src, w.targets, Promise.resolve());
  assert.equal(r.outcome, 'done');
  assert.deepEqual(w.calls.slice(-3), ['claim t:s for D', 'hand over t:s', 'adopt D t:s seq 9 epoch 3']);
});

test('no room anywhere, or a push that fails: the request decodes where it was prefilled', async () => {
  const full = world({ noRoom: ['D', 'E'] });
  const r = await handOff(full.deps, '#r', full.src, full.targets, Promise.resolve());
  assert.equal(r.outcome, 'stayed');
  assert.match(r.error, /D is full; E is full/);
  assert.deepEqual(full.calls.slice(-1), ['stay #r']);
  const broken = world({ failPush: true });
  const b = await handOff(broken.deps, '#r', broken.src, broken.targets, Promise.resolve());
  assert.equal(b.outcome, 'stayed');
  assert.match(b.error, /push_failed: the link broke/);
  assert.deepEqual(broken.calls.slice(-2), ['stay #r', 'cancel D 9'], 'the reservation is given up');
  const none = world();
  assert.equal((await handOff(none.deps, '#r', none.src, [], Promise.resolve())).error, 'no decode pipeline takes work');
});

test('a request that ended during its hand-off (cancelled) is gone: the reservation is given up', async () => {
  const w = world({ gone: true });
  const r = await handOff(w.deps, '#r', w.src, w.targets, Promise.resolve());
  assert.equal(r.outcome, 'gone');
  assert.deepEqual(w.calls.slice(-2), ['stay #r', 'cancel D 9']);
});

test('the prompt is copied in chunks while it prefills; after the first token only the rest', async () => {
  const w = world();
  w.place.done = 0;
  let first = () => {};
  const prefilled = new Promise<void>((r) => (first = r));
  const running = handOff(w.deps, '#r', w.src, w.targets, prefilled);
  const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
  for (const done of [100, 300, 520, 600]) {
    await wait(50);
    w.place.done = done;
  }
  await wait(50);
  first();
  const r = await running;
  assert.deepEqual([r.outcome, r.positions, r.rounds], ['done', 600, 2]);
  assert.deepEqual(w.calls.filter((c) => c.startsWith('push p1')), ['push p1>D0 3:8 [0,300) seq 4>9', 'push p1>D0 3:8 [300,600) seq 4>9'],
    'a chunk of at least 256 positions as soon as the stages hold it, then what is left once the first token is out');
  assert.ok(r.pauseMs < 1000);
});
