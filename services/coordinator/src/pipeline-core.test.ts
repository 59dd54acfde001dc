// The pipeline's core without NATS, Redis or a clock: messages in, effects out.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import {
  ChoiceProgressSchema, FinishReason, GenerateRequestSchema, SampledTokenSchema, SamplingSchema, SeqOpKind, StageInfoSchema, StepResultSchema, subjects,
  type GenerateRequest,
} from '@strata/wire';
import type { PipelineView } from './cluster.ts';
import { load, openPipeline, queued, sessionAt, transition, type PipelineCore, type PipelineEffect, type PipelineMsg, type PipelineOptions } from './pipeline-core.ts';
import { CostBook, workOf } from './step-cost.ts';

const OPTIONS: PipelineOptions = {
  prefillChunk: 256, stepDeadlineFloorMs: 30_000, stepDeadlineMargin: 4, stepBudgetMs: 0, defaultMaxTokens: 16, maxQueue: 4, queueFactor: 4, maxRequestFailures: 2, overlap: false, prefixCache: false, tiers: false,
};

/** Two stages of 8 layers, `cells` cells and `seqs` sequences each. */
function view(id = 'p', cells = 256, seqs = 4): PipelineView {
  const stage = (w: string, l0: number, l1: number) => create(StageInfoSchema, {
    workerId: w, modelFingerprint: 'fp', modelId: 'm', nLayer: 8, l0, l1, kvCells: cells, nSeqMax: seqs, maxBatch: 512, nVocab: 1000, nCtxTrain: 4096,
  });
  return { id, modelId: 'm', fingerprint: 'fp', role: 'both', stages: [stage(`${id}a`, 0, 4), stage(`${id}b`, 4, 8)] };
}

/** A core that has emptied its stages, and a way to send it messages. */
function pipeline(o: Partial<PipelineOptions> = {}, v = view()): { core: PipelineCore; send: (msg: PipelineMsg, now?: number) => PipelineEffect[] } {
  const { core, effects } = openPipeline(v, { ...OPTIONS, ...o }, new CostBook(), 100n);
  assert.deepEqual(effects, [{ type: 'empty', seqs: core.room.allSeqs() }], 'a new pipeline first empties every sequence of its stages');
  const send = (msg: PipelineMsg, now = 0) => transition(core, msg, now);
  assert.deepEqual(send({ type: 'emptied' }), []);
  return { core, send };
}

const req = (id: string, prompt: number, o: Partial<Pick<GenerateRequest, 'n' | 'maxTokens' | 'sessionId' | 'sampling'>> = {}) => create(GenerateRequestSchema, {
  requestId: id, modelId: 'm', prompt: Array.from({ length: prompt }, (_, i) => 10 + i), maxTokens: 2, n: 1, eventsSubject: subjects.gatewayEvents(id),
  sampling: create(SamplingSchema, { seed: 7 }), ...o,
});
const result = (stepId: bigint, tokens: [seq: number, token: number, eog?: boolean][], error?: string) => create(StepResultSchema, {
  stepId, pipelineId: 'p', tokens: tokens.map(([seq, token, eog]) => create(SampledTokenSchema, { seq, token, eog: eog ?? false })), stageMs: [5, 5],
  error: error ? { code: error, message: `${error} happened` } : undefined,
});

const kinds = (fx: PipelineEffect[]) => fx.filter((e) => e.type !== 'log').map((e) => e.type);
const only = <T extends PipelineEffect['type']>(fx: PipelineEffect[], type: T) => fx.filter((e): e is Extract<PipelineEffect, { type: T }> => e.type === type);
const reply = (fx: PipelineEffect[]) => only(fx, 'reply')[0]!.reply;
const steps = (fx: PipelineEffect[]) => only(fx, 'send_step').map((s) => s.entries.map((e) => `${e.seq}:${e.pos0}+${e.nTokens}${e.output ? '!' : ''}`).join(' '));
const events = (fx: PipelineEffect[]) => only(fx, 'event').map(({ event: e }) => `${e.requestId}/${e.index} ${e.tokens.map((t) => t.token).join(',')}${e.finish ? ` ${FinishReason[e.finish]}` : ''}${e.error ? ` ${e.error.code}` : ''}`);

describe('pipeline core: admission', () => {
  it('a request waits until the stages are empty, then starts at once', () => {
    const { core, effects } = openPipeline(view(), OPTIONS, new CostBook(), 100n);
    const fx = transition(core, { type: 'admit', req: req('a', 3) }, 0);
    assert.equal(reply(fx).accepted, true);
    assert.deepEqual(kinds(fx), ['reply'], 'queued: nothing is sent before the stages are empty');
    assert.equal(effects.length, 1);
    const started = transition(core, { type: 'emptied' }, 1);
    assert.deepEqual(steps(started), ['0:0+3!'], 'a one-off request on free sequences needs no preparation: its prompt goes at once');
    assert.equal(only(started, 'send_step')[0]!.stepId, 100n);
  });

  it('refuses what can never run here, and what would overfill the queue', () => {
    const { send } = pipeline({ maxQueue: 1 });
    const code = (fx: PipelineEffect[]) => reply(fx).error?.code ?? 'accepted';
    assert.equal(code(send({ type: 'admit', req: req('big', 250, { maxTokens: 10 }) })), 'context_length_exceeded');
    assert.equal(code(send({ type: 'admit', req: req('many', 3, { n: 5 }) })), 'bad_request', 'more choices than sequences');
    assert.equal(code(send({ type: 'admit', req: req('n2', 100, { n: 2, maxTokens: 40 }) })), 'context_length_exceeded', 'each choice holds its own copy');
    for (const id of ['a', 'b', 'c', 'd']) assert.equal(code(send({ type: 'admit', req: req(id, 10, { maxTokens: 50 }) })), 'accepted', id);
    assert.equal(code(send({ type: 'admit', req: req('e', 10, { maxTokens: 50 }) })), 'accepted', 'the room is full: it queues');
    assert.equal(code(send({ type: 'admit', req: req('f', 10) })), 'overloaded', 'the queue holds one');
  });

  it('a sequence is held to the model\'s training context; the cells beyond it serve other sequences', () => {
    const v = view('p', 1024);
    v.stages.forEach((s) => (s.nCtxTrain = 300));
    const { core, send } = pipeline({}, v);
    assert.deepEqual([core.context, core.room.capacity], [300, 1024]);
    const fx = send({ type: 'admit', req: req('long', 290, { maxTokens: 20 }) });
    assert.equal(reply(fx).error?.code, 'context_length_exceeded');
    assert.match(reply(fx).error!.message, /exceed the context of 300/);
    // three sequences of 280 cells each: more than the training context together, all at once
    for (const id of ['a', 'b', 'c']) assert.equal(reply(send({ type: 'admit', req: req(id, 270, { maxTokens: 10 }) })).accepted, true, id);
    assert.deepEqual([load(core), queued(core)], [3, 0], 'all three run, none waits for cells');
  });

  it('a session is claimed and its history written before its first step', () => {
    const { core, send } = pipeline();
    const fx = send({ type: 'admit', req: req('a', 3, { sessionId: 't:s' }) });
    assert.deepEqual(kinds(fx), ['prepare', 'reply']);
    assert.deepEqual(only(fx, 'prepare')[0], { type: 'prepare', requestId: 'a', ops: [], claim: 't:s', history: { keep: 0, tokens: [10, 11, 12] } });
    assert.deepEqual(send({ type: 'admit', req: req('a2', 3, { sessionId: 't:s' }) }).map((e) => e.type === 'reply' && e.reply.error?.code), ['session_busy']);
    const ready = send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 9 });
    assert.deepEqual(steps(ready), ['0:0+3!']);
    const first = send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(events(first), ['a/0 50']);
    assert.deepEqual(only(first, 'write_history'), [{ type: 'write_history', session: 't:s', epoch: 9, at: 3, tokens: [50] }], 'the sample goes after the prompt, fenced by the claim');
    assert.deepEqual(steps(first), ['0:3+1!']);
    const last = send({ type: 'step_result', result: result(101n, [[0, 51]]) }, 5);
    assert.deepEqual(events(last), ['a/0 51', 'a/0  LENGTH']);
    assert.deepEqual(kinds(last), ['event', 'write_history', 'event', 'request_ended'], 'its cells stay for its next turn: no sequence is emptied');
    assert.deepEqual(sessionAt(core, 't:s'), { seq: 0, done: 4, job: null });
    assert.deepEqual(core.room.residents.get('t:s'), { seq: 0, tokens: [10, 11, 12, 50], lastUsedMs: 5, busy: false, epoch: 9 }, 'the last sample was never evaluated');
  });

  it("a session's next turn reuses the common prefix and removes the rest", () => {
    const { send } = pipeline();
    send({ type: 'admit', req: req('a', 3, { sessionId: 't:s' }) });
    send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 1 });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    send({ type: 'step_result', result: result(101n, [[0, 51]]) });
    const next = req('b', 5, { sessionId: 't:s' });
    next.prompt = [10, 11, 12, 77, 98];
    const fx = send({ type: 'admit', req: next });
    const prep = only(fx, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.seq, o.p0, o.p1]), [[SeqOpKind.REMOVE, 0, 3, -1]], 'positions past the 3 in common go');
    assert.deepEqual(prep.history, { keep: 3, tokens: [77, 98] });
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'b', session: 't:s', epoch: 2 })), ['0:3+2!'], 'only the new tokens are prefilled');
    const done = send({ type: 'step_result', result: result(102n, [[0, 60]]) });
    assert.equal(only(done, 'event').at(-1)?.event.cachedTokens, 0, 'only the last event tells the cache');
    const last = send({ type: 'step_result', result: result(103n, [[0, 61, true]]) });
    assert.deepEqual(events(last), ['b/0 61', 'b/0  STOP']);
    assert.equal(only(last, 'event').at(-1)!.event.cachedTokens, 3);
  });
});

describe('pipeline core: room', () => {
  it('evicts idle sessions least recently used first, and empties an evicted sequence before reusing it', () => {
    const { core, send } = pipeline({}, view('p', 100, 2));
    for (const [i, s] of ['t:x', 't:y'].entries()) {
      send({ type: 'admit', req: req(`r${i}`, 10, { sessionId: s, maxTokens: 1 }) }, i);
      send({ type: 'prepared', requestId: `r${i}`, session: s, epoch: 1 }, i);
      send({ type: 'step_result', result: result(100n + BigInt(i), [[i, 1]]) }, 10 + i);
    }
    assert.deepEqual([...core.room.residents.keys()], ['t:x', 't:y']);
    const fx = send({ type: 'admit', req: req('new', 30, { maxTokens: 50 }) }, 20);
    assert.deepEqual([...core.room.residents.keys()], ['t:y'], 't:x was used least recently');
    const prep = only(fx, 'prepare')[0]!;
    assert.deepEqual(prep.ops.map((o) => [o.kind, o.seq]), [[SeqOpKind.REMOVE, 0]]);
    assert.equal(prep.claim, '');
    assert.deepEqual(steps(send({ type: 'prepared', requestId: 'new', session: '', epoch: 0 })), ['0:0+30!']);
  });

  it('queues a request until a running one ends, refuses one that nothing under way could make room for, and takes a stranded sequence back once emptied', () => {
    const { core, send } = pipeline({}, view('p', 100, 1));
    send({ type: 'admit', req: req('a', 10, { maxTokens: 70 }) });
    assert.equal(reply(send({ type: 'admit', req: req('b', 10, { maxTokens: 30 }) })).accepted, true);
    assert.equal(queued(core), 1);
    assert.equal(load(core), 2);
    send({ type: 'cancel', requestId: 'a', indices: [] });
    const fx = send({ type: 'step_result', result: result(100n, [[0, 5]]) });
    assert.deepEqual(events(fx), ['a/0 5', 'a/0  CANCELLED']);
    assert.deepEqual(kinds(fx).slice(2), ['request_ended', 'drop_seq'], "a's sequence is emptied");
    assert.equal(queued(core), 1, "b waits for a's sequence to be emptied");
    assert.deepEqual(steps(send({ type: 'dropped', seq: 0, ok: true })), ['0:0+10!'], 'then starts on it');
    const { send: send2 } = pipeline({}, view('q', 100));
    send2({ type: 'admit', req: req('c', 10, { maxTokens: 70 }) });
    send2({ type: 'step_result', result: result(100n, [[0, 5]], 'stage_failed') });
    send2({ type: 'dropped', seq: 0, ok: false });
    assert.equal(reply(send2({ type: 'admit', req: req('d', 10, { maxTokens: 85 }) })).error?.code, 'kv_full', 'a sequence that could not be emptied holds its cells, and nothing else will free any');
    // (the scheduler asks again: emptied after all, its id and cells come back)
    send2({ type: 'dropped', seq: 0, ok: true });
    assert.deepEqual(steps(send2({ type: 'admit', req: req('d', 10, { maxTokens: 85 }) })), ['0:0+10!'], 'a stranded sequence emptied later is used again');
  });
});

describe('pipeline core: steps', () => {
  it('batches decodes first, then prompt chunks, one micro-batch per stage in flight', () => {
    const { core, send } = pipeline({ prefillChunk: 8 });
    assert.deepEqual(steps(send({ type: 'admit', req: req('a', 3) })), ['0:0+3!']);
    assert.deepEqual(steps(send({ type: 'admit', req: req('b', 20) })), ['1:0+8'], 'a prompt chunk follows at once: stages run steps in order');
    assert.deepEqual(steps(send({ type: 'admit', req: req('c', 2) })), [], 'two stages: two micro-batches in flight at most');
    assert.equal(core.inflight.size, 2);
    assert.deepEqual(steps(send({ type: 'step_result', result: result(100n, [[0, 40]]) })), ['0:3+1! 1:8+8'], 'the decode first, then a whole prompt chunk');
  });

  it('a failed step fails its jobs; a missing token fails the job that asked for it', () => {
    const { send } = pipeline();
    send({ type: 'admit', req: req('a', 3) });
    const fx = send({ type: 'step_result', result: result(100n, [], 'kv_full') });
    assert.deepEqual(events(fx), ['a/0  ERROR kv_full']);
    assert.deepEqual(only(fx, 'request_ended')[0]!.error, { code: 'kv_full', message: 'kv_full happened' });
    assert.deepEqual(only(fx, 'drop_seq'), [{ type: 'drop_seq', seq: 0 }]);
    send({ type: 'admit', req: req('b', 3) });
    assert.deepEqual(events(send({ type: 'step_result', result: result(101n, [[3, 9]]) })), ['b/0  ERROR stage_failed']);
    assert.deepEqual(send({ type: 'step_result', result: result(100n, [[0, 1]]) }), [], 'a late result is dropped');
  });

  it('n choices sample with seeds seed + i on sequences of their own', () => {
    const { send } = pipeline();
    const fx = send({ type: 'admit', req: req('a', 3, { n: 2 }) });
    const step = only(fx, 'send_step')[0]!;
    assert.deepEqual(step.entries.map((e) => [e.seq, e.sampling?.seed]), [[0, 7], [1, 8]]);
    assert.deepEqual(step.tokens, [10, 11, 12, 10, 11, 12]);
    const next = send({ type: 'step_result', result: result(100n, [[0, 1], [1, 2, true]]) });
    assert.deepEqual(events(next), ['a/0 1', 'a/1 2', 'a/1  STOP']);
    assert.deepEqual(steps(next), ['0:3+1!'], 'the sampler settings travel once');
    assert.equal(only(next, 'send_step')[0]!.entries[0]!.sampling, undefined);
  });

  it('a stuck oldest step is reported past its deadline', () => {
    const { send } = pipeline({ stepDeadlineFloorMs: 1000 });
    send({ type: 'admit', req: req('a', 3) }, 0);
    assert.deepEqual(send({ type: 'tick' }, 1000), []);
    assert.match(only(send({ type: 'tick' }, 1001), 'stalled')[0]!.why, /unanswered for 1001 ms \(deadline 1000 ms: its cost is not known yet\)/);
  });
});

describe('pipeline core: cancel', () => {
  it('a queued request fails at once; a running one ends once its token in flight lands; some choices only', () => {
    const { send } = pipeline({}, view('p', 100));
    send({ type: 'admit', req: req('a', 10, { maxTokens: 70, n: 1 }) });
    send({ type: 'admit', req: req('q', 10, { maxTokens: 50 }) });
    assert.deepEqual(events(send({ type: 'cancel', requestId: 'q', indices: [] })), ['q/0  ERROR cancelled']);
    assert.deepEqual(send({ type: 'cancel', requestId: 'a', indices: [] }).filter((e) => e.type === 'event'), [], 'its step is in flight');
    assert.deepEqual(events(send({ type: 'step_result', result: result(100n, [[0, 3]]) })), ['a/0 3', 'a/0  CANCELLED']);
    const { send: s2 } = pipeline();
    s2({ type: 'admit', req: req('m', 3, { n: 2, maxTokens: 4 }) });
    s2({ type: 'step_result', result: result(100n, [[0, 1], [1, 2]]) });
    assert.deepEqual(events(s2({ type: 'cancel', requestId: 'm', indices: [1] })), [], "choice 1's next token is in flight");
    // Two stages: each of the two micro-batches in flight carries one decode.
    const fx = s2({ type: 'step_result', result: result(101n, [[0, 3]]) });
    assert.deepEqual(events(fx), ['m/0 3']);
    assert.deepEqual(steps(fx), ['0:4+1!'], 'choice 0 goes on');
    assert.deepEqual(events(s2({ type: 'step_result', result: result(102n, [[1, 4]]) })), ['m/1 4', 'm/1  CANCELLED']);
  });
});

describe('pipeline core: resume and rebuild', () => {
  it('a resumed request prefills its prompt and what its client saw, replays those samples, and leaves ended choices ended', () => {
    const { send } = pipeline();
    const r = req('a', 3, { n: 2, maxTokens: 4 });
    r.resume = [create(ChoiceProgressSchema, { index: 0, tokens: [50, 51] }), create(ChoiceProgressSchema, { index: 1, tokens: [60], ended: true })];
    const fx = send({ type: 'resume', req: r });
    assert.equal(reply(fx).accepted, true);
    const step = only(fx, 'send_step')[0]!;
    assert.deepEqual(step.entries.map((e) => [e.seq, e.pos0, e.nTokens, e.replay]), [[0, 0, 5, [50, 51]]]);
    assert.deepEqual(step.tokens, [10, 11, 12, 50, 51]);
    const next = send({ type: 'step_result', result: result(100n, [[0, 52]]) });
    assert.equal(only(next, 'event')[0]!.event.offset, 2, 'the stream goes on after what its client has');
    const none = req('b', 3);
    none.resume = [create(ChoiceProgressSchema, { index: 0, tokens: [1], ended: true })];
    assert.equal(reply(send({ type: 'resume', req: none })).error?.code, 'bad_request');
  });

  it('a pipeline going down hands running requests back, fails queued ones, and stops a request that took pipelines down too often', () => {
    const a = pipeline({}, view('p', 100));
    a.send({ type: 'admit', req: req('run', 10, { maxTokens: 70 }) });
    a.send({ type: 'step_result', result: result(100n, [[0, 42]]) });
    a.send({ type: 'admit', req: req('wait', 10, { maxTokens: 50 }) });
    const fx = a.send({ type: 'down', reason: 'worker died', blame: 'inflight' });
    assert.deepEqual(events(fx), ['wait/0  ERROR pipeline_down']);
    const [orphan] = only(fx, 'orphan');
    assert.deepEqual(orphan!.rebuild.jobs.map((j) => [j.prompt.length, j.replay, j.alone]), [[11, [42], true]], 'it prefills its prompt and sample again, alone');
    assert.equal(reply(a.send({ type: 'admit', req: req('late', 3) })).error?.code, 'pipeline_down');

    const b = pipeline({}, view('q', 100));
    assert.deepEqual(steps(b.send({ type: 'rebuild', rebuild: orphan!.rebuild })), ['0:0+11!']);
    assert.deepEqual(events(b.send({ type: 'step_result', result: result(100n, [[0, 43]]) })), ['run/0 43']);
    const again = b.send({ type: 'down', reason: 'stuck again', blame: 'stuck' });
    assert.deepEqual(events(again), ['run/0  ERROR repeated_failure'], 'the second pipeline it took down is the last');
    assert.deepEqual(only(again, 'orphan'), []);
  });

  it('a choice cancelled while its token was in flight ends with its pipeline, not rebuilt: its session is free for the retry', () => {
    const a = pipeline({}, view('p', 100));
    a.send({ type: 'admit', req: req('s', 4, { maxTokens: 40, sessionId: 'chat' }) });
    a.send({ type: 'prepared', requestId: 's', session: 'chat', epoch: 1 });
    a.send({ type: 'step_result', result: result(100n, [[0, 42]]) });
    a.send({ type: 'admit', req: req('m', 3, { n: 2, maxTokens: 8 }) });
    assert.deepEqual(events(a.send({ type: 'cancel', requestId: 's', indices: [] })), [], 'its token is in flight');
    a.send({ type: 'cancel', requestId: 'm', indices: [1] });
    // The step in flight is lost (a NATS node died): the pipeline resets.
    const fx = a.send({ type: 'down', reason: 'stuck', blame: 'none' });
    assert.deepEqual(events(fx).sort(), ['m/1  CANCELLED', 's/0  CANCELLED']);
    assert.ok(only(fx, 'request_ended').some((e) => e.req.requestId === 's'));
    const orphans = only(fx, 'orphan');
    assert.deepEqual(orphans.map((o) => [o.rebuild.request.req.requestId, o.rebuild.jobs.map((j) => j.index)]), [['m', [0]]], 'only the choice still wanted is rebuilt');

    const b = pipeline({}, view('q', 100));
    b.send({ type: 'rebuild', rebuild: orphans[0]!.rebuild });
    let ended = false;
    for (let step = 100n; step < 120n && !ended; step++) ended = only(b.send({ type: 'step_result', result: result(step, [[0, 5]]) }), 'request_ended').length > 0;
    assert.ok(ended, 'the rebuilt request ends once its one live choice does');
  });
});

describe('pipeline core: a migration', () => {
  it('the source holds a decoding session until its step lands, then hands it over; the target adopts it and it decodes on', () => {
    const src = pipeline();
    src.send({ type: 'admit', req: req('a', 3, { sessionId: 't:s', maxTokens: 5 }) });
    src.send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 1 });
    src.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    src.send({ type: 'begin_move', session: 't:s' });
    assert.equal(reply(src.send({ type: 'admit', req: req('b', 3, { sessionId: 't:s' }) })).error?.code, 'session_busy', 'a moving session takes no request');
    assert.deepEqual(src.send({ type: 'hold', session: 't:s' }), [], 'its step is in flight');
    const landed = src.send({ type: 'step_result', result: result(101n, [[0, 51]]) });
    assert.deepEqual(kinds(landed), ['event', 'write_history', 'held'], 'the token still comes; then nothing more is sent');
    const dst = pipeline({}, view('q'));
    const [reserved] = only(dst.send({ type: 'reserve', cells: 8 }), 'reserved');
    assert.equal(reserved!.seq, 0);
    const out = src.send({ type: 'hand_over', session: 't:s' });
    const moved = only(out, 'handed_over')[0]!.moved;
    assert.deepEqual(moved.tokens, [10, 11, 12, 50]);
    assert.deepEqual(only(out, 'drop_seq'), [{ type: 'drop_seq', seq: 0 }], 'the source empties its sequence');
    const on = dst.send({ type: 'adopt', session: 't:s', seq: 0, moved, epoch: 2 });
    const step = only(on, 'send_step')[0]!;
    assert.deepEqual(step.entries.map((e) => [e.seq, e.pos0, e.nTokens, e.replay]), [[0, 4, 1, [50, 51]]], 'it decodes on from the target, its sampler replaying its samples');
    assert.deepEqual(only(dst.send({ type: 'step_result', result: result(100n, [[0, 52]]) }), 'write_history')[0]!.epoch, 2);
  });

  it('a session that stays decodes again; a reservation given up empties its sequence', () => {
    const src = pipeline();
    src.send({ type: 'admit', req: req('a', 3, { sessionId: 't:s', maxTokens: 5 }) });
    src.send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 1 });
    src.send({ type: 'begin_move', session: 't:s' });
    src.send({ type: 'hold', session: 't:s' });
    assert.deepEqual(steps(src.send({ type: 'step_result', result: result(100n, [[0, 50]]) })), [], 'held: no step');
    assert.deepEqual(steps(src.send({ type: 'stay', session: 't:s' })), ['0:3+1!']);
    const dst = pipeline({}, view('q'));
    dst.send({ type: 'reserve', cells: 8 });
    assert.deepEqual(kinds(dst.send({ type: 'unreserve', seq: 0 })), ['drop_seq']);
  });
});

describe('pipeline core: a hand-off from prefill to decode (disaggregation)', () => {
  it('a request admitted to be handed off is held after its first token, with nothing chained behind it', () => {
    const src = pipeline({ overlap: true, prefixCache: true });
    const fx = src.send({ type: 'admit', req: req('a', 40, { maxTokens: 5 }), handOff: true });
    assert.deepEqual(only(fx, 'prefilling'), [{ type: 'prefilling', key: '#a' }], 'the coordinator is told when it starts: its KV may be copied as it is computed');
    assert.deepEqual(steps(fx), ['0:0+40!'], 'its prompt, and no decoding step chained behind it');
    const first = src.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(events(first), ['a/0 50'], 'its first token goes to its client from here');
    assert.deepEqual(only(first, 'prefilled'), [{ type: 'prefilled', key: '#a' }], 'then the coordinator is told');
    assert.deepEqual(steps(first), [], 'and it takes no step here');
    assert.deepEqual(src.core.jobs.map((j) => [j.held, j.done]), [[true, 40]]);
  });

  it('the hand-over leaves the prompt in the prefill pipeline\'s cache; the decode pipeline goes on with the first token', () => {
    const src = pipeline({ prefixCache: true });
    src.send({ type: 'admit', req: req('a', 40, { maxTokens: 5 }), handOff: true });
    src.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const dst = pipeline({}, view('q'));
    const [reserved] = only(dst.send({ type: 'reserve', cells: 45 }), 'reserved');
    src.send({ type: 'begin_move', session: '#a' });
    const out = src.send({ type: 'hand_over', session: '#a' });
    const moved = only(out, 'handed_over')[0]!.moved;
    assert.equal(moved.job?.requestId, 'a');
    assert.deepEqual(only(out, 'drop_seq'), [], 'its sequence stays, as the cached prompt');
    assert.equal(src.core.jobs.length, 0);
    assert.equal(src.core.requests.size, 0);
    assert.deepEqual([src.core.room.prefixes.cacheSeqs().length, src.core.room.prefixes.cells()], [1, 40]);
    // The next request of that prompt shares it there.
    const next = src.send({ type: 'admit', req: req('b', 41, { maxTokens: 5 }) });
    assert.equal(only(next, 'prepare')[0]!.ops.some((o) => o.kind === SeqOpKind.COPY), true, 'a later prompt copies the cached one');
    const on = dst.send({ type: 'adopt', session: '#a', seq: reserved!.seq!, moved, epoch: 0 });
    assert.deepEqual(dst.core.room.residents.size, 0, 'a one-off request is no session there');
    const step = only(on, 'send_step')[0]!;
    assert.deepEqual(step.entries.map((e) => [e.seq, e.pos0, e.nTokens, e.replay]), [[0, 40, 1, [50]]], 'it decodes on from position 40 with its first token');
    const more = dst.send({ type: 'step_result', result: result(100n, [[0, 51]]) });
    assert.deepEqual(events(more), ['a/0 51'], 'one stream: the second token comes from the decode pipeline');
    assert.equal(only(more, 'event')[0]!.event.offset, 1);
  });

  it('a hand-off that fails leaves the request decoding where it was prefilled; a first token that ends it ends it there', () => {
    const src = pipeline();
    src.send({ type: 'admit', req: req('a', 20, { maxTokens: 5 }), handOff: true });
    src.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    src.send({ type: 'begin_move', session: '#a' });
    assert.deepEqual(steps(src.send({ type: 'stay', session: '#a' })), ['0:20+1!'], 'it decodes on here');
    const early = pipeline();
    early.send({ type: 'admit', req: req('c', 20, { maxTokens: 5 }), handOff: true });
    early.send({ type: 'begin_move', session: '#c' });
    early.send({ type: 'stay', session: '#c' });
    const on = early.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual([only(on, 'prefilled'), steps(on)], [[], ['0:20+1!']], 'a hand-off that failed while it prefilled: it decodes here after its first token');
    const short = pipeline();
    short.send({ type: 'admit', req: req('b', 20, { maxTokens: 1 }), handOff: true });
    const fx = short.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(only(fx, 'prefilled'), [], 'nothing to hand off');
    assert.deepEqual(events(fx), ['b/0 50', 'b/0  LENGTH']);
  });

  it('a request cancelled while it waits for its hand-off ends on the prefill pipeline', () => {
    const src = pipeline();
    src.send({ type: 'admit', req: req('a', 20, { maxTokens: 5 }), handOff: true });
    src.send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const fx = src.send({ type: 'cancel', requestId: 'a', indices: [] });
    assert.deepEqual(events(fx), ['a/0  CANCELLED']);
    assert.equal(src.core.jobs.length, 0);
    assert.equal(only(src.send({ type: 'hand_over', session: '#a' }), 'handed_over')[0]!.moved.job, null, 'nothing left to move');
  });
});

describe('pipeline core: overlapping steps (a ring)', () => {
  /** One stage of 8 layers. */
  const oneStage = (): PipelineView => {
    const v = view();
    return { ...v, stages: [create(StageInfoSchema, { ...v.stages[0]!, l1: 8 })] };
  };
  const chained = (fx: PipelineEffect[]) => only(fx, 'send_step').map((s) => `${s.follows}:${s.entries.filter((e) => e.chained).map((e) => e.seq).join(',')}`);

  it('sends the next decoding step while the one before computes, and goes on one step ahead', () => {
    const { core, send } = pipeline({ overlap: true }, oneStage());
    const fx = send({ type: 'admit', req: req('a', 3, { maxTokens: 4 }) });
    assert.deepEqual(steps(fx), ['0:0+3!', '0:3+1!'], "the prompt, and behind it a step that takes its sample on the stage");
    assert.deepEqual(chained(fx), ['0:', '100:0']);
    assert.equal(only(fx, 'send_step')[0]!.ring, true, 'the stages keep its samples for a step that follows');
    assert.equal(core.inflight.size, 2, 'two steps in flight on one stage');
    const r1 = send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(events(r1), ['a/0 50']);
    assert.deepEqual(steps(r1), ['0:4+1!'], 'one more behind the step that took the first sample');
    assert.deepEqual(chained(r1), ['101:0']);
    const r2 = send({ type: 'step_result', result: result(101n, [[0, 51]]) });
    assert.deepEqual(events(r2), ['a/0 51']);
    assert.deepEqual(steps(r2), ['0:5+1!'], 'the fourth sample is the last by length');
    const r3 = send({ type: 'step_result', result: result(102n, [[0, 52]]) });
    assert.deepEqual(steps(r3), [], 'so nothing follows the step that draws it');
    const r4 = send({ type: 'step_result', result: result(103n, [[0, 53]]) });
    assert.deepEqual(events(r4), ['a/0 53', 'a/0  LENGTH']);
    assert.deepEqual(kinds(r4).slice(2), ['request_ended', 'drop_seq']);
    assert.equal(core.jobs.length, 0);
  });

  it("drops the chained entry of a sample that ends its choice, and the sequence's positions stay right", () => {
    const { core, send } = pipeline({ overlap: true }, oneStage());
    send({ type: 'admit', req: req('a', 3, { maxTokens: 10, sessionId: 't:s' }) });
    send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 1 });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const eog = send({ type: 'step_result', result: result(101n, [[0, 51, true]]) });
    assert.deepEqual(events(eog), ['a/0 51'], 'the end is said once the step that follows is back');
    assert.deepEqual(steps(eog), []);
    // The stage dropped the only entry of step 102: it answers with no tokens.
    const end = send({ type: 'step_result', result: create(StepResultSchema, { stepId: 102n, pipelineId: 'p' }) });
    assert.deepEqual(events(end), ['a/0  STOP']);
    assert.deepEqual(core.room.residents.get('t:s')?.tokens, [10, 11, 12, 50], 'the end-of-generation token was never evaluated');
  });

  it('with ignore_eos an end-of-generation token is fed on like any other', () => {
    const { send } = pipeline({ overlap: true }, oneStage());
    const r = req('a', 3, { maxTokens: 5 });
    r.sampling!.ignoreEos = true;
    send({ type: 'admit', req: r });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const fx = send({ type: 'step_result', result: result(101n, [[0, 2, true]]) });
    assert.deepEqual(events(fx), ['a/0 2'], 'not the end');
    assert.deepEqual(steps(fx), ['0:5+1!'], 'step 102 took it; the next one follows 102');
    assert.deepEqual(chained(fx), ['102:0']);
  });

  it('a cancel lets the chained step run and keeps what it evaluated', () => {
    const { core, send } = pipeline({ overlap: true }, oneStage());
    send({ type: 'admit', req: req('a', 3, { maxTokens: 10, sessionId: 't:s' }) });
    send({ type: 'prepared', requestId: 'a', session: 't:s', epoch: 1 });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(send({ type: 'cancel', requestId: 'a', indices: [] }), []);
    const r = send({ type: 'step_result', result: result(101n, [[0, 51]]) });
    assert.deepEqual(events(r), ['a/0 51'], 'its sample still streams; the step that follows already took it');
    const end = send({ type: 'step_result', result: result(102n, [[0, 52]]) });
    assert.deepEqual(events(end), ['a/0  CANCELLED'], "the chained step's own sample is dropped");
    assert.deepEqual(core.room.residents.get('t:s')?.tokens, [10, 11, 12, 50, 51], 'both fed samples are in the cache');
  });

  it("two stages: a step per stage in flight, each followed by one that takes its samples; a follower's early answer waits", () => {
    const { core, send } = pipeline({ overlap: true });
    assert.deepEqual(chained(send({ type: 'admit', req: req('a', 3, { maxTokens: 10 }) })), ['0:', '100:0'], "nothing else is ready: a's prompt is followed");
    assert.deepEqual(steps(send({ type: 'admit', req: req('b', 3, { maxTokens: 10 }) })), [], 'two steps are in flight and nothing can follow them yet');
    const r1 = send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual(steps(r1), ['1:0+3!', '0:4+1!', '1:3+1!'], "b's prompt in the free slot, then a step behind each that samples");
    assert.deepEqual(chained(r1), ['0:', '101:0', '102:1']);
    assert.equal(core.inflight.size, 4);
    // The follower of 101 answers before 101 (another publisher): it is taken after 101.
    assert.deepEqual(send({ type: 'step_result', result: result(103n, [[0, 52]]) }), []);
    const both = send({ type: 'step_result', result: result(101n, [[0, 51]]) });
    assert.deepEqual(events(both), ['a/0 51', 'a/0 52']);
  });

  it('two stages keep at most two steps per stage in flight, each follower a fair share, so groups of jobs merge', () => {
    const { core, send } = pipeline({ overlap: true }, view('p', 256, 8));
    // Jobs arrive one by one: each first step holds one prompt, and followers would keep them in
    // groups of one (six steps in flight for six jobs) if nothing bounded them.
    for (let i = 0; i < 6; i++) send({ type: 'admit', req: req(`r${i}`, 3, { maxTokens: 30 }) });
    const samples = new Map<number, number>();
    for (let round = 0; round < 30; round++) {
      assert.ok(core.inflight.size <= 4, `round ${round}: ${core.inflight.size} steps in flight for two stages`);
      const [stepId, f] = core.inflight.entries().next().value!;
      const active = core.jobs.filter((j) => j.finish === null).length;
      assert.ok(f.entries.filter((e) => e.chained).length <= Math.ceil(active / 2), 'a follower takes at most a fair share');
      send({ type: 'step_result', result: result(stepId, f.entries.filter((e) => e.output && !e.dropped).map((e) => [e.job.seq, 100 + (samples.set(e.job.seq, (samples.get(e.job.seq) ?? 0) + 1).get(e.job.seq)!)])) });
    }
    const sizes = [...core.inflight.values()].map((f) => f.entries.length);
    assert.deepEqual(sizes.sort(), [3, 3, 3, 3], 'in the end, two groups of three, each with a step computing and one behind it');
    assert.equal(samples.size, 6);
    assert.ok(Math.min(...samples.values()) >= 10, `every job moves on: ${[...samples.values()]}`);
  });

  it('a failed step drops the entries that follow it, and fails only its jobs', () => {
    const { core, send } = pipeline({ overlap: true }, oneStage());
    send({ type: 'admit', req: req('a', 3, { maxTokens: 10 }) });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const failed = send({ type: 'step_result', result: result(101n, [], 'stage_failed') });
    assert.deepEqual(events(failed), [], 'its job ends once the step that follows is back');
    const end = send({ type: 'step_result', result: create(StepResultSchema, { stepId: 102n, pipelineId: 'p' }) });
    assert.deepEqual(events(end), ['a/0  ERROR stage_failed']);
    assert.equal(core.jobs.length, 0);
  });
});

describe('pipeline core: decode bursts', () => {
  /** One stage; its step costs known (about 5 ms a decode step), so a 22 ms budget fits 4 tokens. */
  const oneStage = (o: Partial<PipelineOptions> = {}) => {
    const v = view();
    const p = pipeline({ decodeBurstMs: 22, overlap: true, ...o }, { ...v, stages: [{ ...v.stages[0]!, l1: 8 }] });
    for (let n = 1; n <= 64; n *= 2) p.core.costs.observe(p.core.route, workOf([{ tokens: n, pos0: 0 }]), [2 + 3 * n]);
    return p;
  };
  const burstOf = (fx: PipelineEffect[]) => only(fx, 'send_step').map((s) => s.burst);

  it('a decoding job alone takes several tokens a step, in one event, and its positions follow what the stage evaluated', () => {
    const { core, send } = oneStage();
    const fx = send({ type: 'admit', req: req('a', 3, { maxTokens: 10, sampling: create(SamplingSchema, { seed: 7, ignoreEos: true }) }) });
    assert.deepEqual(burstOf(fx), [1], 'its prompt is a plain step');
    const b = send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    assert.deepEqual([steps(b), burstOf(b)], [['0:3+1!'], [4]], 'then a burst of 4 (22 ms over about 5 ms a step), not a chained step');
    const e = send({ type: 'step_result', result: result(101n, [[0, 51], [0, 52], [0, 53], [0, 54]]) });
    assert.deepEqual(events(e), ['a/0 51,52,53,54'], 'one event carries the four samples');
    assert.deepEqual([steps(e), burstOf(e)], [['0:7+1!'], [4]], 'the last sample is fed next, at position 7');
    // 5 of 10 sampled: the next burst stops at the request's end (5 more)
    const f = send({ type: 'step_result', result: result(102n, [[0, 55], [0, 56, true], [0, 57], [0, 58]]) });
    assert.deepEqual(events(f), ['a/0 55,56,57,58'], 'an end of generation the request ignores is a token like any');
    assert.deepEqual(burstOf(f), [1], 'one token left: a plain step');
    assert.deepEqual(events(send({ type: 'step_result', result: result(103n, [[0, 59]]) })), ['a/0 59', 'a/0  LENGTH']);
    assert.equal(core.jobs.length, 0);
  });

  it("a whole burst teaches the cost model the stage's time per evaluation", () => {
    const { core, send } = oneStage();
    send({ type: 'admit', req: req('a', 3, { maxTokens: 10 }) });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    const decode = workOf([{ tokens: 1, pos0: 3 }]);
    const before = core.costs.predict(core.route, decode)!;
    const slow = create(StepResultSchema, { stepId: 101n, pipelineId: 'p', tokens: [51, 52, 53, 54].map((token) => create(SampledTokenSchema, { seq: 0, token })), stageMs: [4 * 60] });
    send({ type: 'step_result', result: slow });
    const after = core.costs.predict(core.route, decode)!;
    // (one observation among seven: 60 ms an evaluation moves the prediction to about 19 ms; 240 would move it to about 57)
    assert.ok(after > before && after < 30, `60 ms an evaluation, not 240 ms a step: ${before.toFixed(1)} -> ${after.toFixed(1)} ms`);
  });

  it('a request cancelled during a burst takes one sample more, and its sequence loses the positions past it', () => {
    const { core, send } = oneStage({ prefixCache: true });
    send({ type: 'admit', req: req('a', 20, { maxTokens: 10 }) });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    send({ type: 'cancel', requestId: 'a', indices: [] });
    const fx = send({ type: 'step_result', result: result(101n, [[0, 51], [0, 52], [0, 53], [0, 54]]) });
    assert.deepEqual(events(fx), ['a/0 51', 'a/0  CANCELLED']);
    assert.deepEqual(only(fx, 'trim_seq').map((e) => [e.seq, e.keepTo]), [[0, 21]], 'the stage fed it 51, 52 and 53 at 21 to 23: they go');
    assert.equal(core.room.prefixes.match('', [...Array.from({ length: 20 }, (_, i) => 10 + i), 50, 9], 21)?.depth, 21, 'its prompt and the sample it fed stay cached');
  });

  it('a sample that ends its choice ends the burst; work that arrives meanwhile ends bursting', () => {
    const { send } = oneStage();
    send({ type: 'admit', req: req('a', 3, { maxTokens: 10 }) });
    send({ type: 'step_result', result: result(100n, [[0, 50]]) });
    // b arrives during the burst: it waits for it (one stage, one step in flight), then plain steps
    assert.deepEqual(steps(send({ type: 'admit', req: req('b', 5) })), []);
    const fx = send({ type: 'step_result', result: result(101n, [[0, 51], [0, 52, true]]) });
    assert.deepEqual(events(fx), ['a/0 51,52', 'a/0  STOP'], 'the stage stopped at the end of generation');
    assert.deepEqual([steps(fx), burstOf(fx)], [['1:0+5!'], [1]]);
  });
});
