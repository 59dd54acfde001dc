// A migration through fake ports: no NATS, no Redis, no stage.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { createLogger } from '@strata/log';
import { StageInfoSchema } from '@strata/wire';
import type { PipelineView } from './cluster.ts';
import type { MigrationRecord, MigrationState } from './ledger.ts';
import { startMigration, type MigrationDeps, type MigrationSource, type MigrationTarget } from './migration.ts';
import { planMigration, planRound } from './migration-plan.ts';
import type { MovedSession } from './pipeline-core.ts';

const stage = (w: string, l0: number, l1: number) => create(StageInfoSchema, { workerId: w, modelFingerprint: 'fp', modelId: 'm', nLayer: 8, l0, l1 });
const A: PipelineView = { id: 'A', modelId: 'm', fingerprint: 'fp', role: 'both', stages: [stage('a0', 0, 4), stage('a1', 4, 8)] };
const B: PipelineView = { id: 'B', modelId: 'm', fingerprint: 'fp', role: 'both', stages: [stage('b0', 0, 3), stage('b1', 3, 8)] };
const MOVED: MovedSession = { job: null, request: null, tokens: [1, 2, 3] };

interface World {
  /** what the ports and deps were asked, in order */
  calls: string[];
  /** the ledger's states, in order */
  states: MigrationState[];
  deps: MigrationDeps;
  src: MigrationSource;
  dst: MigrationTarget;
}

/**
 * A session of 20 positions decoding on A, 6 more positions each time a round is pushed, until
 * it is held. `fail` names the step that throws.
 */
function world(fail: '' | 'reserve' | 'push' | 'hold' | 'claim' | 'draining' = ''): World {
  const calls: string[] = [];
  const states: MigrationState[] = [];
  let done = 20, decoding = true;
  const boom = (what: string) => {
    if (fail === what) throw new Error(`${what} failed`);
  };
  const deps: MigrationDeps = {
    ledger: {
      create: async (r: MigrationRecord) => void states.push(r.state),
      update: async (_id: string, _s: string, state: MigrationState) => void states.push(state),
    },
    push: async (p) => {
      calls.push(`push ${p.part.source.workerId}>${p.part.target.workerId} ${p.part.l0}:${p.part.l1} [${p.p0},${p.p1}) seq ${p.seq}>${p.targetSeq}`);
      boom('push');
      return 100;
    },
    claim: async (session, pipeline) => {
      calls.push(`claim ${session} for ${pipeline}`);
      boom('claim');
      return 7;
    },
    log: createLogger('test', { level: 'none' }), owner: 'c1', options: { maxRounds: 3, deltaPositions: 4, pushTimeoutMs: 1000 },
  };
  // Every round's pushes done, the session has decoded 6 more positions.
  const push = deps.push;
  deps.push = async (p) => {
    const bytes = await push(p);
    if (decoding && p.part.target.workerId === 'b1' && p.part.source.workerId === 'a1') done += 6;
    return bytes;
  };
  const src: MigrationSource = {
    view: A,
    place: () => ({ seq: 2, done, cells: 40, decoding }),
    begin: (s) => void calls.push(`begin ${s}`),
    hold: async (s) => {
      calls.push(`hold ${s}`);
      boom('hold');
      decoding = false;
      done += 1;
    },
    handOver: (s) => {
      calls.push(`hand over ${s}`);
      return MOVED;
    },
    stay: (s) => void calls.push(`stay ${s}`),
  };
  const dst: MigrationTarget = {
    view: B,
    draining: () => fail === 'draining',
    reserve: async (cells) => {
      calls.push(`reserve ${cells}`);
      boom('reserve');
      return 5;
    },
    adopt: (s, seq, moved, epoch) => void calls.push(`adopt ${s} seq ${seq} epoch ${epoch}${moved === MOVED ? '' : ' (not what was handed over)'}`),
    cancel: async (seq) => void calls.push(`cancel ${seq}`),
  };
  return { calls, states, deps, src, dst };
}

describe('migration', () => {
  it('goes planned → copying → switching → done: pre-copies in rounds, holds, copies the rest, claims, then adopts', async () => {
    const w = world();
    const m = await startMigration(w.deps, 't:s', w.src, w.dst, 'test');
    assert.equal(m.record.state, 'planned');
    const r = await m.finished;
    assert.equal(r.state, 'done', r.error);
    assert.deepEqual(w.states, ['planned', 'copying', 'switching', 'done']);
    const rounds = (p0: number, p1: number) => [
      `push a0>b0 0:3 [${p0},${p1}) seq 2>5`, `push a0>b1 3:4 [${p0},${p1}) seq 2>5`, `push a1>b1 4:8 [${p0},${p1}) seq 2>5`,
    ];
    assert.deepEqual(w.calls, [
      'begin t:s', 'reserve 40',
      ...rounds(0, 20), ...rounds(20, 26), ...rounds(26, 32), // three rounds while it decodes (6 new positions each)
      'hold t:s', ...rounds(32, 39), // what it wrote since, until its hold
      'claim t:s for B', 'hand over t:s', 'adopt t:s seq 5 epoch 7',
    ]);
    assert.deepEqual([r.rounds, r.bytes, r.positions, r.targetSeq], [3, 1200, 39, 5]);
  });

  for (const fail of ['reserve', 'push', 'hold', 'claim', 'draining'] as const) {
    it(`a failure before the switch (${fail}) never adopts: the session stays, the reservation is given up`, async () => {
      const w = world(fail);
      const r = await (await startMigration(w.deps, 't:s', w.src, w.dst, 'test')).finished;
      assert.equal(r.state, 'aborted');
      assert.equal(w.states.at(-1), 'aborted');
      assert.ok(!w.calls.some((c) => c.startsWith('adopt') || c.startsWith('hand over')), w.calls.join('\n'));
      assert.ok(w.calls.includes('stay t:s'));
      assert.equal(w.calls.includes('cancel 5'), fail !== 'reserve', 'a reservation that was made is given up');
      if (fail === 'draining') assert.match(r.error, /^pipeline_draining: pipeline B began draining/);
    });
  }

  it('refuses pipelines of different models before anything starts', async () => {
    const w = world();
    await assert.rejects(startMigration(w.deps, 't:s', w.src, { ...w.dst, view: { ...B, fingerprint: 'other' } }, 'test'), /model_mismatch|different models/);
    assert.deepEqual(w.states, []);
  });
});

describe('migration plan', () => {
  it('sends every target layer from the source stage that holds it', () => {
    assert.deepEqual(planMigration(A.stages, B.stages).map((p) => `${p.source.workerId}>${p.target.workerId} ${p.l0}:${p.l1}`), ['a0>b0 0:3', 'a0>b1 3:4', 'a1>b1 4:8']);
    assert.throws(() => planMigration([stage('x', 0, 4)], B.stages), /does not hold every layer/);
  });

  it('pre-copies while the session decodes and much is new; switches otherwise', () => {
    const o = { maxRounds: 3, deltaPositions: 8 };
    assert.deepEqual(planRound({ round: 1, sent: 0, end: 100, decoding: true }, o), { copy: { p0: 0, p1: 100 } });
    assert.deepEqual(planRound({ round: 1, sent: 0, end: 100, decoding: false }, o), { copy: { p0: 0, p1: 100 } }, 'an idle session is copied once');
    assert.deepEqual(planRound({ round: 2, sent: 100, end: 140, decoding: true }, o), { copy: { p0: 100, p1: 140 } });
    assert.deepEqual(planRound({ round: 2, sent: 100, end: 140, decoding: false }, o), { switch: true }, 'it stopped decoding: nothing more comes');
    assert.deepEqual(planRound({ round: 2, sent: 100, end: 108, decoding: true }, o), { switch: true }, 'little is new: copied during the hold');
    assert.deepEqual(planRound({ round: 4, sent: 100, end: 200, decoding: true }, o), { switch: true }, 'the rounds ran out');
  });
});
