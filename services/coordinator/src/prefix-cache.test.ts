// Automatic prefix caching in a pipeline's core: what requests share, what they compute, and a
// randomized run against llama.cpp's cell bookkeeping (the stages' own KvCells) that checks the
// core never lets a stage hold more cells than it has, nor sends a position a sequence lacks, and
// that every request it accepted ends, through pipeline resets too.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { KvCells } from '@strata/kv-cache';
import { GenerateRequestSchema, SampledTokenSchema, SamplingSchema, SeqOpKind, StageInfoSchema, StepResultSchema, subjects, type GenerateRequest } from '@strata/wire';
import type { PipelineView } from './cluster.ts';
import { openPipeline, transition, type PipelineCore, type PipelineEffect, type PipelineMsg, type PipelineOptions } from './pipeline-core.ts';
import { running, type Rebuild } from './pipeline-state.ts';
import { CostBook } from './step-cost.ts';

const OPTIONS: PipelineOptions = {
  prefillChunk: 64, stepDeadlineFloorMs: 30_000, stepDeadlineMargin: 4, stepBudgetMs: 0, defaultMaxTokens: 16, maxQueue: 64, queueFactor: 16, maxRequestFailures: 2, overlap: false, prefixCache: true, tiers: false,
};

function view(cells: number, seqs: number, kvSwaCells = 0): PipelineView {
  const stage = (w: string, l0: number, l1: number) => create(StageInfoSchema, {
    workerId: w, modelFingerprint: 'fp', modelId: 'm', nLayer: 8, l0, l1, kvCells: cells, nSeqMax: seqs, maxBatch: 512, nVocab: 1000, nCtxTrain: 4096, kvSwaCells: l0 === 0 ? kvSwaCells : 0,
  });
  return { id: 'p', modelId: 'm', fingerprint: 'fp', role: 'both', stages: [stage('a', 0, 4), stage('b', 4, 8)] };
}

function pipeline(cells = 512, seqs = 8, o: Partial<PipelineOptions> = {}, kvSwaCells = 0): { core: PipelineCore; send: (msg: PipelineMsg, now?: number) => PipelineEffect[] } {
  const { core } = openPipeline(view(cells, seqs, kvSwaCells), { ...OPTIONS, ...o }, new CostBook(), 100n);
  const send = (msg: PipelineMsg, now = 0) => transition(core, msg, now);
  send({ type: 'emptied' });
  return { core, send };
}

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);
const SYSTEM = range(1000, 100);
const req = (id: string, prompt: number[], o: Partial<Pick<GenerateRequest, 'sessionId' | 'maxTokens' | 'cacheScope' | 'n'>> = {}) => create(GenerateRequestSchema, {
  requestId: id, modelId: 'm', prompt, maxTokens: 2, n: 1, eventsSubject: subjects.gatewayEvents(id), sampling: create(SamplingSchema, { seed: 1 }), cacheScope: 'tenant:t', ...o,
});
const only = <T extends PipelineEffect['type']>(fx: PipelineEffect[], type: T) => fx.filter((e): e is Extract<PipelineEffect, { type: T }> => e.type === type);
const steps = (fx: PipelineEffect[]) => only(fx, 'send_step').map((s) => s.entries.map((e) => `${e.seq}:${e.pos0}+${e.nTokens}${e.output ? '!' : ''}`).join(' '));
const result = (stepId: bigint, tokens: [number, number][]) => create(StepResultSchema, {
  stepId, pipelineId: 'p', tokens: tokens.map(([seq, token]) => create(SampledTokenSchema, { seq, token })), stageMs: [5, 5],
});
const cached = (fx: PipelineEffect[]) => only(fx, 'event').filter((e) => e.event.finish).map((e) => e.event.cachedTokens);
/** Request a (the system prompt and one token, two samples: 50, then 51) runs to its end on sequence 0, in steps 100 to 102. */
const endA = (send: (msg: PipelineMsg) => PipelineEffect[]) => {
  send({ type: 'admit', req: req('a', [...SYSTEM, 1]) });
  send({ type: 'step_result', result: result(100n, []) });
  send({ type: 'step_result', result: result(101n, [[0, 50]]) });
  send({ type: 'step_result', result: result(102n, [[0, 51]]) });
};

describe('prefix cache in a pipeline core', () => {
  it('a second prompt with the same system prompt shares its cells with one seq_cp and prefills only its question', () => {
    const { send } = pipeline();
    assert.deepEqual(steps(send({ type: 'admit', req: req('a', [...SYSTEM, 1, 2, 3]) })), ['0:0+64', '0:64+39!']);
    // While the system prompt is being computed, a request that shares it waits for it.
    assert.deepEqual(send({ type: 'admit', req: req('b', [...SYSTEM, 7, 8]) }).map((e) => e.type).filter((t) => t !== 'log'), ['reply']);
    assert.deepEqual(only(send({ type: 'step_result', result: result(100n, []) }), 'prepare'), [], 'still waiting: 36 of its positions are being computed');
    const fx = send({ type: 'step_result', result: result(101n, [[0, 50]]) });
    const prep = only(fx, 'prepare').find((p) => p.requestId === 'b')!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.seq, o.dst, o.p0, o.p1]), [[SeqOpKind.COPY, 0, 1, 0, 100]], 'b shares a\'s first 100 positions');
    assert.deepEqual(steps(fx), ['0:103+1!']);
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'b', session: '', epoch: 0 })), ['1:100+2!'], 'and computes its own two');
    assert.deepEqual(cached(send({ type: 'step_result', result: result(102n, [[0, 51]]) })), [0], 'a computed everything');
    assert.deepEqual(steps(send({ type: 'step_result', result: result(103n, [[1, 60]]) })), ['1:102+1!']);
    assert.deepEqual(cached(send({ type: 'step_result', result: result(104n, [[1, 61]]) })), [100]);
  });

  it('the choices of a request compute its prompt once: the first one up to its last token, then a seq_cp to each other', () => {
    const { core, send } = pipeline();
    const prompt = [...SYSTEM, 1, 2, 3];
    assert.deepEqual(steps(send({ type: 'admit', req: req('a', prompt, { n: 3 }) })), ['0:0+64', '0:64+38'], 'the first choice stops before the last token');
    assert.deepEqual(steps(send({ type: 'step_result', result: result(100n, []) })), []);
    const fx = send({ type: 'step_result', result: result(101n, []) });
    assert.deepEqual(steps(fx), [], 'every choice waits for the copy');
    const fork = only(fx, 'fork')[0]!;
    assert.deepEqual(fork.ops.map((o) => [o.kind, o.seq, o.dst, o.p0, o.p1]), [[SeqOpKind.COPY, 0, 1, 0, 102], [SeqOpKind.COPY, 0, 2, 0, 102]]);
    const go = send({ type: 'forked', requestId: 'a', at: 102, ok: true });
    assert.deepEqual(steps(go), ['0:102+1! 1:102+1! 2:102+1!'], 'each computes the last token itself and samples its own');
    assert.deepEqual(steps(send({ type: 'step_result', result: result(102n, [[0, 50], [1, 60], [2, 70]]) })), ['0:103+1! 1:103+1!', '2:103+1!']);
    send({ type: 'step_result', result: result(103n, [[0, 51], [1, 61]]) });
    const end = send({ type: 'step_result', result: result(104n, [[2, 71]]) });
    assert.equal(only(end, 'request_ended').length, 1);
    assert.deepEqual(core.room.prefixes.problems(), []);

    // The copy failed (some stage may hold part of it): the other choices compute the whole
    // prompt, once what the copy left is removed.
    const b = pipeline();
    b.send({ type: 'admit', req: req('a', prompt, { n: 2 }) });
    b.send({ type: 'step_result', result: result(100n, []) });
    b.send({ type: 'step_result', result: result(101n, []) });
    const failed = b.send({ type: 'forked', requestId: 'a', at: 102, ok: false });
    assert.deepEqual(only(failed, 'prepare').map((p) => p.ops.map((o) => [o.kind, o.seq, o.p0, o.p1])), [[[SeqOpKind.REMOVE, 1, 0, -1]]]);
    assert.deepEqual(steps(failed), ['0:102+1!'], 'the first choice goes on');
    assert.deepEqual(steps(b.send({ type: 'prepared', requestId: 'a', session: '', epoch: 0 })), ['1:0+64'], 'the other computes its prompt');

    // A short prompt is computed by each choice: waiting for a copy would cost more.
    const c = pipeline();
    assert.deepEqual(steps(c.send({ type: 'admit', req: req('a', range(1, 10), { n: 2 }) })), ['0:0+10! 1:0+10!']);
  });

  it('a request that ended leaves its prompt cached; another scope never shares it; room evicts it when needed', () => {
    const { core, send } = pipeline(256, 4);
    send({ type: 'admit', req: req('a', [...SYSTEM, 1]) });
    send({ type: 'step_result', result: result(100n, []) });
    send({ type: 'step_result', result: result(101n, [[0, 50]]) });
    const fx = send({ type: 'step_result', result: result(102n, [[0, 51]]) });
    assert.deepEqual(only(fx, 'drop_seq'), [], 'its sequence stays as the cache\'s');
    assert.equal(core.room.prefixes.cells(), 102, 'its prompt and its first sample');
    assert.equal(core.room.prefixes.match('tenant:t', [...SYSTEM, 1, 50, 51], 102)?.depth, 102, 'a prompt that resends the sample shares it too');
    const other = send({ type: 'admit', req: req('x', [...SYSTEM, 2], { cacheScope: 'tenant:u' }) });
    assert.deepEqual(steps(other), ['1:0+64', '1:64+37!'], 'another tenant computes its own');
    send({ type: 'step_result', result: result(103n, []) });
    send({ type: 'step_result', result: result(104n, [[1, 9]]) });
    send({ type: 'step_result', result: result(105n, [[1, 9]]) });
    // 256 cells: the two cached prompts (204) leave too little for this one; the older one goes.
    const big = send({ type: 'admit', req: req('big', range(5000, 100), { maxTokens: 50 }) }, 10);
    assert.deepEqual(only(big, 'prepare')[0]?.ops.map((o) => [o.kind, o.seq]), [[SeqOpKind.REMOVE, 0]], 'the least recently used cache sequence is emptied and reused');
    assert.equal(core.room.prefixes.match('tenant:t', [...SYSTEM, 1], 101), null);
    assert.equal(core.room.prefixes.match('tenant:u', [...SYSTEM, 1], 100)?.depth, 100);
  });

  it('cached_tokens and the cells of a session whose first turn shares a cached prefix', () => {
    const { core, send } = pipeline();
    endA(send);
    const fx = send({ type: 'admit', req: req('s1', [...SYSTEM, 9, 9], { sessionId: 't:s' }) });
    const prep = only(fx, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.seq, o.dst, o.p1]), [[SeqOpKind.COPY, 0, 1, 100]]);
    assert.deepEqual(prep.history, { keep: 0, tokens: [...SYSTEM, 9, 9] }, 'a new session\'s history is its whole prompt');
    send({ type: 'prepared', requestId: 's1', session: 't:s', epoch: 1 });
    send({ type: 'step_result', result: result(103n, [[1, 5]]) });
    assert.deepEqual(cached(send({ type: 'step_result', result: result(104n, [[1, 6]]) })), [100]);
    const r = core.room.residents.get('t:s')!;
    assert.equal(r.tokens.length, 103);
    assert.equal(core.room.reserved(running(core)), core.room.prefixes.cells() + 3, 'the session holds three cells of its own');
  });

  it('with a stage\'s windowed layers in a small cache of their own: a prefix is shared only where a cache sequence ends, and a session goes on only from its end', () => {
    const { core, send } = pipeline(512, 8, {}, 256);
    assert.equal(core.exactResume, true);
    endA(send);
    assert.equal(core.room.prefixes.cells(), 102, 'a\'s prompt and the sample it fed stay cached');
    // Its windowed cells older than its window may be taken over: its system prompt alone is not shared ...
    assert.deepEqual(steps(send({ type: 'admit', req: req('b', [...SYSTEM, 2]) })), ['1:0+64', '1:64+36'], 'the same system prompt is computed again, up to where it leaves a\'s path (a checkpoint: below)');
    // ... but a prompt that goes on from all it holds is (a chat client's next turn resends the answer).
    const c = send({ type: 'admit', req: req('c', [...SYSTEM, 1, 50, 51, 9]) });
    assert.deepEqual(only(c, 'prepare')[0]!.ops.map((o) => [o.kind, o.seq, o.dst, o.p0, o.p1]), [[SeqOpKind.COPY, 0, 3, 0, 102]], '(seq 2 is b\'s checkpoint\'s)');
    send({ type: 'prepared', requestId: 'c', session: '', epoch: 0 });
    // a session: its next turn that extends its whole history goes on from its end ...
    send({ type: 'admit', req: req('s1', [1, 2, 3], { sessionId: 't:s', maxTokens: 1 }) });
    send({ type: 'prepared', requestId: 's1', session: 't:s', epoch: 1 });
    for (let id = 103n; core.room.residents.get('t:s')?.busy; id++) send({ type: 'step_result', result: result(id, [[1, 7], [3, 7], [4, 7]]) });
    const copies = (fx: PipelineEffect[]) => only(fx, 'prepare')[0]?.ops.filter((o) => o.kind === SeqOpKind.COPY).map((o) => [o.seq, o.p1]);
    assert.deepEqual(copies(send({ type: 'admit', req: req('d', [...SYSTEM, 1, 50, 51]) })), [[0, 102]], 'a\'s end, shared again');
    const e = send({ type: 'admit', req: req('e', [...SYSTEM, 1, 77, 78]) });
    assert.deepEqual(only(e, 'log').find((l) => l.message === 'start')?.fields?.cached, 0, 'inside a\'s cells: not shared, computed from 0');
    const held = core.room.residents.get('t:s')!.tokens;
    const next = only(send({ type: 'admit', req: req('s2', [...held, 8, 9], { sessionId: 't:s' }) }), 'prepare')[0]!;
    assert.deepEqual(next.ops, [], 'nothing removed');
    assert.deepEqual(next.history, { keep: held.length, tokens: [8, 9] });
  });

  it('with a stage\'s windowed layers in a small cache of their own: a prompt that leaves a cached path inside a sequence is checkpointed there, and later ones share the checkpoint', () => {
    const { core, send } = pipeline(512, 8, {}, 256);
    endA(send);
    // b computes the system prompt again (inside a's sequence: not shared), and stops at its end ...
    assert.deepEqual(steps(send({ type: 'admit', req: req('b', [...SYSTEM, 2, 3]) })), ['1:0+64', '1:64+36']);
    send({ type: 'step_result', result: result(103n, []) });
    const fx = send({ type: 'step_result', result: result(104n, []) });
    assert.deepEqual(steps(fx), [], 'b waits while its checkpoint is copied');
    const ckpt = only(fx, 'checkpoint')[0]!;
    assert.deepEqual(ckpt.ops.map((o) => [o.kind, o.seq, o.dst, o.p0, o.p1]), [[SeqOpKind.REMOVE, 2, 0, -1, -1], [SeqOpKind.COPY, 1, 2, 0, 100]], 'its 100 positions go to cache sequence 2');
    // ... then goes on; sequence 2 ends at the system prompt's end, a place every later prompt may share.
    assert.deepEqual(steps(send({ type: 'checkpointed', requestId: 'b', index: 0, seq: 2, ok: true })), ['1:100+2!']);
    assert.equal(core.room.prefixes.match('tenant:t', [...SYSTEM, 9, 9], 101)?.depth, 100);
    const c = send({ type: 'admit', req: req('c', [...SYSTEM, 7, 8]) });
    assert.deepEqual(only(c, 'prepare')[0]!.ops.map((o) => [o.kind, o.seq, o.dst, o.p0, o.p1]), [[SeqOpKind.COPY, 2, 3, 0, 100]], 'c copies the checkpoint');
    assert.equal(only(c, 'checkpoint').length + (core.jobs.find((j) => j.requestId === 'c')?.checkpoint ? 1 : 0), 0, 'and needs none of its own');
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'c', session: '', epoch: 0 })), ['3:100+2!']);
    assert.deepEqual(core.room.prefixes.problems(), []);
    // A request cancelled while its checkpoint is copied: the copy is emptied.
    const d = pipeline(512, 8, {}, 256);
    d.send({ type: 'admit', req: req('a', [...SYSTEM, 1], { maxTokens: 1 }) });
    d.send({ type: 'step_result', result: result(100n, []) });
    d.send({ type: 'step_result', result: result(101n, [[0, 50]]) });
    d.send({ type: 'admit', req: req('b', [...SYSTEM, 2, 3]) });
    d.send({ type: 'step_result', result: result(102n, []) });
    assert.equal(only(d.send({ type: 'step_result', result: result(103n, []) }), 'checkpoint').length, 1);
    d.send({ type: 'cancel', requestId: 'b', indices: [] });
    assert.deepEqual(only(d.send({ type: 'checkpointed', requestId: 'b', index: 0, seq: 2, ok: true }), 'drop_seq').map((e) => e.seq), [2]);
    assert.equal(d.core.room.prefixes.match('tenant:t', [...SYSTEM, 9], 100)?.node.seq, 1, 'what b computed stays cached in its own sequence, which ends there too');
    assert.deepEqual(d.core.room.prefixes.problems(), []);
  });

  it('with a stage\'s windowed layers in a small cache of their own: prompts that arrive together take one checkpoint of what they share', () => {
    const { core, send } = pipeline(512, 8, {}, 256);
    endA(send);
    send({ type: 'admit', req: req('b', [...SYSTEM, 2, 3]) });
    send({ type: 'admit', req: req('c', [...SYSTEM, 4, 5]) });
    assert.deepEqual(core.jobs.map((j) => [j.requestId, j.checkpoint?.at ?? null]), [['b', 100], ['c', null]], 'b checkpoints the system prompt; c computes it too, and shares the checkpoint next time');
  });

  it('with a stage\'s windowed layers in a small cache of their own, a turn that changes the history starts over', () => {
    const { core, send } = pipeline(512, 8, {}, 256);
    send({ type: 'admit', req: req('s1', [1, 2, 3, 4], { sessionId: 't:s', maxTokens: 1 }) });
    send({ type: 'prepared', requestId: 's1', session: 't:s', epoch: 1 });
    for (let id = 100n; core.room.residents.get('t:s')?.busy; id++) send({ type: 'step_result', result: result(id, [[0, 7]]) });
    // the same first three tokens, then another: elsewhere it would go on from 3
    const fx = send({ type: 'admit', req: req('s2', [1, 2, 3, 9], { sessionId: 't:s' }) });
    const prep = only(fx, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.seq, o.p0, o.p1]), [[SeqOpKind.REMOVE, 0, 0, -1]], 'the whole sequence goes');
    assert.deepEqual(prep.history, { keep: 0, tokens: [1, 2, 3, 9] });
  });

  it('randomized: the stages never hold more cells than they have, every step continues its sequences, every request ends (resets too)', () => {
    let checkpoints = 0, trims = 0, failedTrims = 0, forks = 0;
    for (let seed = Number(process.env.PREFIX_SIM_FROM ?? 1); seed <= Number(process.env.PREFIX_SIM_SEEDS ?? 12); seed++) {
      const r = simulate(seed);
      checkpoints += r.checkpoints;
      trims += r.trims;
      failedTrims += r.failedTrims;
      forks += r.forks;
    }
    assert.ok(forks > 0, 'the choices of some requests shared their prompt');
    assert.ok(checkpoints > 0, 'prompts were checkpointed (on the seeds whose tree shares only at ends)');
    // (A failed trim's cells are reclaimed by asking again: the count is exact when all is quiet.)
    assert.ok(failedTrims > 0 && trims > failedTrims, `cached prefixes were trimmed, some trims failing (${failedTrims} of ${trims})`);
  });
});

describe('sessions evicted to the tiers', () => {
  it('an idle session evicted for new work is saved before its sequence is emptied; its next turn comes back from the tiers', () => {
    const { core, send } = pipeline(256, 4, { tiers: true, prefixCache: false, defaultMaxTokens: 8 });
    const history = range(500, 100);
    send({ type: 'admit', req: req('s-1', history, { sessionId: 't:s', maxTokens: 1 }) }, 1);
    send({ type: 'prepared', requestId: 's-1', session: 't:s', epoch: 3 }, 1);
    send({ type: 'step_result', result: result(100n, []) }, 1);
    send({ type: 'step_result', result: result(101n, [[0, 42]]) }, 2);
    assert.equal(core.room.residents.get('t:s')?.tokens.length, 100, 'the last sample was never evaluated');
    // New work needs the session's cells: it is saved, then its sequence is emptied and handed over.
    const big = send({ type: 'admit', req: req('big', range(9000, 150), { maxTokens: 50 }) }, 3);
    const kinds = big.filter((e) => e.type === 'offload' || e.type === 'prepare').map((e) => e.type === 'prepare' ? `prepare ${e.ops.map((o) => `${SeqOpKind[o.kind]} ${o.seq}`)}` : `offload ${e.seq}`);
    assert.deepEqual(kinds, ['offload 0', 'prepare REMOVE 0'], 'the save goes out before the emptying');
    const key = only(big, 'offload')[0]!.key;
    // Its next turn waits while it is being saved, then for room.
    send({ type: 'admit', req: req('s-2', [...history, 42, 7], { sessionId: 't:s' }) }, 4);
    send({ type: 'offloaded', session: 't:s', key, ok: true }, 5);
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'big', session: '', epoch: 0 }, 6)), ['0:0+64', '0:64+64']);
    send({ type: 'step_result', result: result(102n, []) }, 7);
    send({ type: 'step_result', result: result(103n, []) }, 7);
    let fx: PipelineEffect[] = [];
    for (let i = 104n; i < 160n && !only(fx, 'prepare').some((p) => p.requestId === 's-2'); i++) {
      fx = send({ type: 'step_result', result: result(i, [[0, 1]]) }, 8);
      for (const d of only(fx, 'drop_seq')) fx = send({ type: 'dropped', seq: d.seq, ok: true }, 8);
    }
    const prep = only(fx, 'prepare').find((p) => p.requestId === 's-2')!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.key, o.p0]), [[SeqOpKind.LOAD, key, -1], [SeqOpKind.REMOVE, '', 100]],
      'its state comes back from the tiers, cut to what the core knows it holds');
    assert.deepEqual(prep.history, { keep: 100, tokens: [42, 7] }, 'its history keeps what the tiers held (the last sample was never evaluated)');
    const seq = prep.ops[0]!.seq;
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 's-2', session: 't:s', epoch: 4 }, 9)), [`${seq}:100+2!`], 'only its new tokens are computed');
  });

  it('a session the tiers lost is prefilled again from its history', () => {
    const { core, send } = pipeline(256, 4, { tiers: true, prefixCache: false });
    core.offloaded.set('t:s', { tokens: range(500, 40), key: 't:s/9', epoch: 2, lastUsedMs: 1 });
    const fx = send({ type: 'admit', req: req('s-2', [...range(500, 40), 7, 8], { sessionId: 't:s' }) }, 1);
    assert.deepEqual(only(fx, 'prepare')[0]!.ops.map((o) => [o.kind, o.key]), [[SeqOpKind.LOAD, 't:s/9'], [SeqOpKind.REMOVE, '']]);
    const again = send({ type: 'prepare_failed', requestId: 's-2', code: 'kv_tier_miss', message: 'no tier holds it' }, 2);
    const prep = only(again, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.p0]), [[SeqOpKind.REMOVE, -1]], 'whatever a stage loaded goes');
    assert.deepEqual(prep.history, { keep: 40, tokens: [7, 8] });
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 's-2', session: 't:s', epoch: 3 }, 3)), ['0:0+42!'], 'the whole conversation is prefilled');
    const end = send({ type: 'step_result', result: result(100n, [[0, 5]]) }, 4);
    assert.deepEqual(only(send({ type: 'step_result', result: result(101n, [[0, 6]]) }, 5), 'event').at(-1)?.event.cachedTokens ?? only(end, 'event').at(-1)?.event.cachedTokens, 0, 'nothing was cached');
  });
});

/** A small deterministic generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Drives a core with random requests (shared system prompts, two tenants, sessions, cancels)
 * against one stage's KvCells: sequence operations and steps reach it in the order the core
 * sends them (one NATS connection keeps its messages in order) and are answered later, the
 * operations' acknowledgements in any order. Now and then the pipeline resets (as when a NATS
 * node dies): what was on its way is lost, the stage is emptied, and a fresh core rebuilds the
 * old one's requests; every accepted request must still end. One trim in ten fails and is asked
 * again later, as the scheduler does, and one fork of a prompt to a request's other choices in
 * ten fails. Returns the checkpoints taken, the trims asked and the forks.
 */
function simulate(seed: number): { checkpoints: number; trims: number; failedTrims: number; forks: number } {
  const rand = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const CELLS = 384;
  const options = { prefillChunk: 48, overlap: seed % 2 === 0, tiers: seed % 3 === 0 };
  // (Every fourth seed: a stage keeps its windowed layers in a small cache, so the tree shares only
  // at ends and prompts are checkpointed.)
  const swaCells = seed % 4 === 1 ? 128 : 0;
  let { core, send } = pipeline(CELLS, 6, options, swaCells);
  /** what the tiers keep: key -> positions saved */
  const tiers = new Map<string, number>();
  let kv = new KvCells(CELLS);
  const replies: PipelineMsg[] = [];
  // The last shares its first 8 tokens with the first: too few to share, so a lineage of its own.
  const systems = [range(1000, 70), range(2000, 40), range(3000, 90), [...range(1000, 8), ...range(4000, 50)]];
  let now = 0, nextId = 0, ended = 0, admitted = 0, resets = 0, cachedEver = false, checkpoints = 0, trims = 0, failedTrims = 0, forks = 0;
  const apply = (ops: readonly { kind: SeqOpKind; seq: number; dst: number; p0: number; p1: number; key?: string }[], reply: PipelineMsg) => {
    for (const op of ops) {
      if (op.kind === SeqOpKind.REMOVE) kv.seqRemove(op.seq, op.p0, op.p1);
      else if (op.kind === SeqOpKind.COPY) kv.seqCopy(op.seq, op.dst, op.p0, op.p1);
      else if (op.kind === SeqOpKind.LOAD) {
        const n = tiers.get(op.key!)!;
        tiers.delete(op.key!);
        const plan = kv.findSlot(n);
        assert.ok(plan, `seed ${seed}: no room to load ${n} cells`);
        kv.apply(plan, range(0, n), Array(n).fill(op.seq));
      }
    }
    replies.push(reply);
  };
  const run = (fx: PipelineEffect[]) => {
    for (const e of fx) {
      if (e.type === 'checkpoint') checkpoints++;
      if (e.type === 'prepare') apply(e.ops, { type: 'prepared', requestId: e.requestId, session: e.claim, epoch: e.claim ? 1 : 0 });
      else if (e.type === 'checkpoint') apply(e.ops, { type: 'checkpointed', requestId: e.requestId, index: e.index, seq: e.seq, ok: rand() < 0.9 });
      else if (e.type === 'fork') {
        forks++;
        apply(e.ops, { type: 'forked', requestId: e.requestId, at: e.at, ok: rand() < 0.9 });
      }
      else if (e.type === 'drop_seq') apply([{ kind: SeqOpKind.REMOVE, seq: e.seq, dst: 0, p0: -1, p1: -1 }], { type: 'dropped', seq: e.seq, ok: true });
      else if (e.type === 'trim_seq') {
        // One trim in ten fails: its answer lost (the stage trimmed) or the stage's error (it did not).
        const ok = rand() < 0.9;
        const reply: PipelineMsg = { type: 'trimmed', seq: e.seq, ok };
        if (ok || rand() < 0.5) apply([{ kind: SeqOpKind.REMOVE, seq: e.seq, dst: 0, p0: e.keepTo, p1: -1 }], reply);
        else replies.push(reply);
        trims++;
        if (!ok) failedTrims++;
      }
      else if (e.type === 'offload') {
        // Saved before the emptying that follows it.
        tiers.set(e.key, kv.seqPosMax(e.seq) + 1);
        replies.push({ type: 'offloaded', session: e.session, key: e.key, ok: true });
      } else if (e.type === 'forget') tiers.delete(e.key);
      else if (e.type === 'request_ended') ended++;
      else if (e.type === 'send_step') {
        const tokens: [number, number][] = [];
        for (const entry of e.entries) {
          assert.equal(kv.seqPosMax(entry.seq), entry.pos0 - 1, `seed ${seed}: seq ${entry.seq} holds up to ${kv.seqPosMax(entry.seq)}, the step starts at ${entry.pos0}`);
          const plan = kv.findSlot(entry.nTokens);
          assert.ok(plan, `seed ${seed}: the stage has no room for ${entry.nTokens} cells (${kv.used} of ${CELLS} held)`);
          kv.apply(plan, range(entry.pos0, entry.nTokens), Array(entry.nTokens).fill(entry.seq));
          if (entry.output) tokens.push([entry.seq, 1 + Math.floor(rand() * 50)]);
        }
        replies.push({ type: 'step_result', result: result(e.stepId, tokens) });
      }
    }
    assert.deepEqual(core.room.prefixes.problems(), [], `seed ${seed}: after ${fx.filter((e) => e.type !== 'log').map((e) => e.type).join(', ')}`);
    const counted = core.room.reserved(running(core));
    assert.ok(kv.used <= counted, `seed ${seed}: the stage holds ${kv.used} cells, the room counts ${counted}`);
  };
  /** The pipeline resets: what was on its way is lost, the stage emptied, the requests rebuilt on a fresh core. */
  const reset = () => {
    cachedEver ||= core.room.prefixes.size > 0;
    // (What the old core still asks of its stage is moot: the fresh one empties it.)
    const orphans: Rebuild[] = [];
    for (const e of send({ type: 'down', reason: 'reset', blame: 'none' }, now)) {
      if (e.type === 'request_ended') ended++;
      else if (e.type === 'orphan') orphans.push(e.rebuild);
    }
    replies.length = 0;
    tiers.clear();
    kv = new KvCells(CELLS);
    ({ core, send } = pipeline(CELLS, 6, options, swaCells));
    resets++;
    for (const rebuild of orphans) run(send({ type: 'rebuild', rebuild }, now));
  };
  for (let i = 0; i < 400 || replies.length > 0; i++) {
    now += 1;
    const r = rand();
    if (i < 400 && r < 0.25) {
      const id = `r${nextId++}`;
      const session = rand() < 0.2 ? `t:s${Math.floor(rand() * 3)}` : '';
      const prompt = [...pick(systems), ...range(Math.floor(rand() * 1e6), 1 + Math.floor(rand() * 20))];
      const n = !session && rand() < 0.1 ? 2 : 1;
      const fx = send({ type: 'admit', req: req(id, prompt, { sessionId: session, n, maxTokens: 1 + Math.floor(rand() * 8), cacheScope: pick(['tenant:t', 'tenant:u']) }) }, now);
      if (only(fx, 'reply')[0]!.reply.accepted) admitted++;
      run(fx);
    } else if (i < 400 && r < 0.28 && nextId > 0) {
      // (mostly one of the last few: a request still running, its token perhaps in flight)
      const k = rand() < 0.7 ? Math.max(0, nextId - 1 - Math.floor(rand() * 4)) : Math.floor(rand() * nextId);
      run(send({ type: 'cancel', requestId: `r${k}`, indices: [] }, now));
      // A reset soon after a cancel: the cancelled token may still be in flight.
      if (rand() < 0.25) reset();
    } else if (i < 400 && r < 0.29) {
      reset();
    } else if (replies.length > 0) {
      // Step results come back in order (one pipeline); acknowledgements in any order.
      const k = replies.findIndex((m) => m.type === 'step_result');
      let idx = Math.floor(rand() * replies.length);
      if (k >= 0 && (rand() < 0.7 || replies[idx]!.type === 'step_result')) idx = k;
      const [m] = replies.splice(idx, 1);
      run(send(m!, now));
      // (The scheduler asks a failed trim again a while later.)
      if (m!.type === 'trimmed' && !m!.ok) replies.push({ type: 'retry_trim', seq: m!.seq });
    }
  }
  assert.equal(ended, admitted, `seed ${seed}: every accepted request ended (${resets} resets)`);
  assert.equal(kv.used, core.room.reserved(running(core)), `seed ${seed}: when all is quiet the room counts exactly what the stage holds`);
  assert.ok(cachedEver || core.room.prefixes.size > 0, `seed ${seed}: something was cached`);
  return { checkpoints, trims, failedTrims, forks };
}

describe('cached prefixes evicted to the tiers', () => {
  /** A pipeline of 256 cells whose cache holds one 150-token prompt; a request that needs every cell evicts it. */
  const evicted = () => {
    const p = pipeline(256, 4, { tiers: true, prefillChunk: 256 });
    const prompt = [...range(1000, 150), 1];
    p.send({ type: 'admit', req: req('a', prompt, { maxTokens: 1 }) }, 1);
    p.send({ type: 'step_result', result: result(100n, [[0, 42]]) }, 2);
    assert.equal(p.core.room.prefixes.cacheSeqs().length, 1);
    const big = p.send({ type: 'admit', req: req('big', range(5000, 200), { maxTokens: 50 }) }, 3);
    return { ...p, prompt, big };
  };

  it('a cached prompt evicted for new work is saved before its sequence is emptied', () => {
    const { core, send, big } = evicted();
    const order = big.filter((e) => e.type === 'offload' || e.type === 'prepare' || e.type === 'drop_seq').map((e) => e.type === 'offload' ? `offload ${e.seq} ${e.session || 'prefix'}` : e.type);
    assert.deepEqual(order, ['offload 0 prefix', 'prepare'], 'saved first; the new work empties the sequence it is handed');
    const key = only(big, 'offload')[0]!.key;
    assert.deepEqual([...core.savingPrefixes.values()].map((p) => [p.scope, p.tokens.length, p.cells]), [['tenant:t', 151, 151]]);
    send({ type: 'offloaded', session: '', key, ok: true }, 4);
    assert.deepEqual([...core.savedPrefixes.keys()], [key]);
  });

  it('a later prompt that shares it loads it and computes only the rest; the prompt is cached again', () => {
    const { core, send, big, prompt } = evicted();
    const key = only(big, 'offload')[0]!.key;
    send({ type: 'offloaded', session: '', key, ok: true }, 4);
    send({ type: 'prepared', requestId: 'big', session: '', epoch: 0 }, 4);
    send({ type: 'step_result', result: result(101n, [[0, 1]]) }, 5);
    for (let i = 102n; core.requests.has('big'); i++) send({ type: 'step_result', result: result(i, [[0, 1]]) }, 6);
    const again = send({ type: 'admit', req: req('c', [...prompt.slice(0, 150), 7, 8], { maxTokens: 2 }) }, 7);
    const prep = only(again, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [SeqOpKind[o.kind], o.seq, o.key, o.p0]), [['REMOVE', 0, '', -1], ['LOAD', 0, key, -1], ['REMOVE', 0, '', 150]],
      'its sequence takes the saved state and keeps the 150 positions the prompt shares');
    assert.equal(core.savedPrefixes.size, 0, 'taken out of the tiers');
    const match = core.room.prefixes.match('tenant:t', [...prompt.slice(0, 150), 9, 9], 151);
    assert.equal(match?.depth ?? 0, 0, 'no later prompt shares it before the state is loaded');
    const first = send({ type: 'prepared', requestId: 'c', session: '', epoch: 0 }, 8);
    assert.deepEqual(steps(first), ['0:150+2!']);
    assert.equal(core.room.prefixes.match('tenant:t', [...prompt.slice(0, 150), 9, 9], 151)?.depth, 150, 'loaded: shared again');
    const second = send({ type: 'step_result', result: result(only(first, 'send_step')[0]!.stepId, [[0, 3]]) }, 9);
    const done = send({ type: 'step_result', result: result(only(second, 'send_step')[0]!.stepId, [[0, 4]]) }, 9);
    assert.deepEqual(cached(done), [150], 'its usage counts what came back from the tiers');
  });

  it('a state the tiers no longer give back is prefilled again, whole', () => {
    const { core, send, big, prompt } = evicted();
    const key = only(big, 'offload')[0]!.key;
    send({ type: 'offloaded', session: '', key, ok: true }, 4);
    send({ type: 'prepared', requestId: 'big', session: '', epoch: 0 }, 4);
    for (let i = 101n; core.requests.has('big'); i++) send({ type: 'step_result', result: result(i, [[0, 1]]) }, 5);
    send({ type: 'admit', req: req('c', [...prompt.slice(0, 150), 7, 8], { maxTokens: 2 }) }, 7);
    const again = send({ type: 'prepare_failed', requestId: 'c', code: 'not_found', message: 'gone from the tiers' }, 8);
    assert.deepEqual(only(again, 'prepare')[0]!.ops.map((o) => [SeqOpKind[o.kind], o.p0]), [['REMOVE', -1]]);
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'c', session: '', epoch: 0 }, 9)), ['0:0+152!'], 'the whole prompt, computed');
  });
});
