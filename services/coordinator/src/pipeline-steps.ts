// Steps of a pipeline's core: micro-batches planned (batcher.ts) and sent while fewer than one
// per stage are in flight, results turned into job transitions (job.ts) and client events,
// finished jobs retired (their session's cells kept, or their sequence emptied), cancels, and the
// deadline of the oldest step. Pure.
import { FinishReason, type SampledToken, type StepEntry, type StepResult } from '@strata/wire';
import { applyPlan, chainable, decodeCap, planMicroBatch, type PlannedEntry } from './batcher.ts';
import { cachedTokens, fedSamples, jobTransition, type Job, type JobEffect } from './job.ts';
import { depth, dropSeq, failRequest, requestKey, type Admission, type InFlight, type PipelineCore, type PipelineEffect } from './pipeline-state.ts';
import { burstOf, burstsNow, samplesBySeq } from './decode-burst.ts';
import { checkpointDue, dropCheckpoint } from './prefix-checkpoint.ts';
import { dropFork, forkDue } from './choice-fork.ts';
import { stepDeadlineMs, tokensWithin, workOf, type StepWork } from './step-cost.ts';
import { eventsTo } from './replies.ts';

/**
 * Sends micro-batches while fewer than one per stage are in flight and some job is ready. With
 * overlap, it then sends one more behind each in-flight step that samples for jobs that go on
 * (the oldest first): the step that follows it, whose chained entries take those samples on the
 * stages, plus whatever else is ready. Each job runs at most one step ahead of its samples.
 */
export function pump(c: PipelineCore, fx: PipelineEffect[], now: number): void {
  const o = c.options;
  const predict = (w: Parameters<typeof c.costs.predict>[1]) => c.costs.predict(c.route, w);
  while (!c.down) {
    const active = c.jobs.filter((j) => j.finish === null).length;
    const limits = {
      maxBatch: c.maxBatch, prefillChunk: o.prefillChunk, decodeCap: decodeCap(active, depth(c)), bySeq: c.streams,
      // The step budget: prompt tokens that keep a micro-batch's predicted time within it.
      prefillWithin: o.stepBudgetMs > 0 ? (fixed: StepWork, pos0: number, cap: number) => tokensWithin(predict, o.stepBudgetMs, fixed, pos0, cap) : undefined,
    };
    let plan = c.inflight.size < depth(c) ? planMicroBatch(c.jobs, limits) : null;
    let lead: [bigint, InFlight] | null = null;
    if (!plan) {
      // At most one step queued behind each computing one: a group of jobs left without a
      // follower takes the next free place when its step is back, so groups merge.
      if (!o.overlap || c.inflight.size >= 2 * depth(c) || burstsNow(c)) return;
      lead = [...c.inflight].find(([, f]) => f.follower === null && f.burst === 1 && f.entries.some(chainable)) ?? null;
      if (!lead) return;
      // At most a fair share of the decoding jobs, so that the micro-batches in flight stay even
      // (one stage's step is not the whole pipeline's): the rest take the next free place.
      plan = planMicroBatch(c.jobs, limits, lead[1].entries.filter(chainable).map((e) => e.job).slice(0, limits.decodeCap));
      // A step that follows another exists to take some of its samples on the stages.
      if (!plan?.some((e) => e.chained)) return;
    }
    const burst = lead ? 1 : burstOf(c, plan);
    applyPlan(plan);
    // (a burst feeds each job its pending token, then burst - 1 of its own samples)
    if (burst > 1) for (const e of plan) e.job.pos += burst - 1;
    const stepId = send(c, fx, plan, now, lead?.[0] ?? null, burst);
    if (lead) lead[1].follower = stepId;
  }
}

/** Sends a planned micro-batch (following step `follows`, or none; `burst` evaluations); returns its step id. */
function send(c: PipelineCore, fx: PipelineEffect[], plan: PlannedEntry[], now: number, follows: bigint | null, burst: number): bigint {
  const stepId = c.nextStep++;
  const entries: StepEntry[] = [];
  const tokens: number[] = [];
  for (const e of plan) {
    const j = e.job;
    const sampling = e.output && !j.samplerSent ? j.sampling : undefined;
    if (sampling) j.samplerSent = true;
    const replay = sampling ? j.replay : [];
    entries.push({ $typeName: 'strata.v1.StepEntry', seq: j.seq, nTokens: e.tokens.length, pos0: e.pos0, output: e.output, sampling, replay, chained: e.chained === true, embed: j.sampling.embed });
    tokens.push(...e.tokens);
  }
  const trace = plan.map((e) => ({ req: c.requests.get(e.job.requestId)?.req, prefill: e.pos0 < e.job.pos0 + e.job.prompt.length, tokens: e.tokens.length }));
  c.inflight.set(stepId, { entries: plan, work: workOf(plan.map((e) => ({ tokens: e.tokens.length, pos0: e.pos0 }))), sentMs: now, follows, follower: null, burst });
  fx.push({ type: 'send_step', stepId, entries, tokens, trace, follows: follows ?? 0n, ring: c.options.overlap && plan.some((e) => e.output) && burst === 1, burst });
  return stepId;
}

/**
 * Takes the answer to one of this pipeline's steps (a late one, whose jobs already failed, is
 * dropped). A step that follows another is taken after it: one that came back first waits.
 */
export function stepResult(c: PipelineCore, fx: PipelineEffect[], r: StepResult, now: number): void {
  const f = c.inflight.get(r.stepId);
  if (!f) return;
  if (f.follows !== null && c.inflight.has(f.follows)) {
    c.early.set(f.follows, r);
    return;
  }
  c.inflight.delete(r.stepId);
  c.lastResultMs = now;
  if (f.burst > 1) return burstResult(c, fx, f, r);
  if (!r.error && r.stageMs.length === c.view.stages.length) c.costs.observe(c.route, f.work, r.stageMs);
  const bySeq = new Map(r.tokens.map((t) => [t.seq, t]));
  const follower = f.follower === null ? undefined : c.inflight.get(f.follower);
  for (const e of f.entries) {
    const j = e.job;
    j.inflight--;
    if (e.dropped) continue;
    if (!r.error) j.done = e.pos0 + e.tokens.length;
    let jfx: JobEffect[] = [];
    const t = e.output ? bySeq.get(j.seq) : undefined;
    // The step that follows took this sample on the stages, or dropped its entry where the sample
    // ended the job (as the first stage decides: an end of generation it does not ignore, a failure).
    let fedAhead = false;
    if (e.output && j.chained > 0) {
      j.chained--;
      fedAhead = !r.error && t !== undefined && !t.error && !(t.eog && !j.sampling.ignoreEos);
      if (!fedAhead) {
        j.pos--;
        const ahead = follower?.entries.find((x) => x.job === j && x.chained);
        if (ahead) ahead.dropped = true;
      }
    }
    if (r.error || e.output) jfx = take(j, r, t, fedAhead);
    emitted(c, fx, j, jfx);
    checkpointDue(c, fx, j);
    forkDue(c, fx, j);
    // Its first token is out: a job to be handed off stops here, for a decode pipeline to take.
    if (j.handOff && j.finish === null && j.generated.length > 0) {
      j.handOff = false;
      j.held = true;
      c.prefilled.add(j.sessionId || requestKey(j.requestId));
    }
  }
  const next = c.early.get(r.stepId);
  if (next) {
    c.early.delete(r.stepId);
    stepResult(c, fx, next, now);
  }
}

/**
 * The answer to a decode burst: each job takes its samples in the order drawn (all but the last
 * already fed on the stage), in one event and one history write; its positions are those the
 * stage evaluated (fewer than planned where a sample ended its choice).
 */
function burstResult(c: PipelineCore, fx: PipelineEffect[], f: InFlight, r: StepResult): void {
  const bySeq = samplesBySeq(r.tokens);
  // Every entry evaluated `burst` times: the stage's time per evaluation teaches the cost model.
  const whole = f.entries.every((e) => bySeq.get(e.job.seq)?.length === f.burst);
  if (!r.error && whole && r.stageMs.length === c.view.stages.length) c.costs.observe(c.route, f.work, r.stageMs.map((ms) => ms / f.burst));
  for (const e of f.entries) {
    const j = e.job;
    j.inflight--;
    const samples = bySeq.get(j.seq) ?? [];
    const emit: SampledToken[] = [];
    if (r.error || samples.length === 0) take(j, r, undefined, false);
    else {
      let taken = 0;
      for (const [i, t] of samples.entries()) {
        if (j.finish !== null) break;
        taken++;
        for (const x of take(j, r, t, i < samples.length - 1)) if (x.type === 'emit') emit.push(x.token);
      }
      // The stage fed it its pending token and every sample but the last. A job cancelled during
      // the burst (a stop string, a client gone) takes fewer: the positions past its last sample
      // taken are removed, and that sample counts as never fed, as a step's last always does.
      j.done = j.pos = e.pos0 + taken;
      j.awaitingToken = false;
      if (taken < samples.length) {
        j.pending = samples[taken - 1]!.token;
        fx.push({ type: 'trim_seq', seq: j.seq, keepTo: j.pos });
      }
    }
    const request = c.requests.get(j.requestId);
    if (request && emit.length > 0) {
      event(fx, request, j, emit, FinishReason.UNSPECIFIED);
      if (j.sessionId) fx.push({ type: 'write_history', session: j.sessionId, epoch: request.epoch, at: request.req.prompt.length + j.generated.length - emit.length, tokens: emit.map((t) => t.token) });
    }
  }
}

/**
 * Job `j` takes what step `r` says of it: the step's failure, a missing sample, the sample's own
 * failure, or sample `t` (`fedAhead`: the stages already fed it).
 */
function take(j: Job, r: StepResult, t: SampledToken | undefined, fedAhead: boolean): JobEffect[] {
  if (r.error) return jobTransition(j, { type: 'failed', code: r.error.code, message: r.error.message });
  if (!t) return jobTransition(j, { type: 'failed', code: 'stage_failed', message: `step ${r.stepId} returned no token for seq ${j.seq}` });
  if (t.error) return jobTransition(j, { type: 'failed', code: t.error.code, message: t.error.message });
  return jobTransition(j, { type: 'sampled', token: t, fedAhead });
}

/** A job's samples: an event each, and for a session its place in the history. */
function emitted(c: PipelineCore, fx: PipelineEffect[], j: Job, jfx: JobEffect[]): void {
  const request = c.requests.get(j.requestId);
  if (!request) return;
  for (const e of jfx) {
    if (e.type !== 'emit') continue;
    event(fx, request, j, [e.token], FinishReason.UNSPECIFIED);
    // Written at its position (the history is the prompt, then the samples): a write that
    // Redis ran but could not acknowledge, resent after a reconnect, lands in the same place.
    const at = request.req.prompt.length + j.generated.length - 1;
    if (j.sessionId) fx.push({ type: 'write_history', session: j.sessionId, epoch: request.epoch, at, tokens: [e.token.token] });
  }
}

/** An event of job `j` carrying `tokens` (its last samples), and its end when `finish` is set. */
export function event(fx: PipelineEffect[], request: Admission, j: Job, tokens: SampledToken[], finish: FinishReason): void {
  const last = finish !== FinishReason.UNSPECIFIED;
  fx.push({
    type: 'event', ...eventsTo(request.req), ...(request.promptCounted ? { counted: true } : {}), event: {
      requestId: request.req.requestId, index: j.index, tokens, finish, error: j.error ?? undefined,
      // The tokens already sent precede these: the job's samples minus the ones being sent now.
      offset: j.generated.length - tokens.length,
      promptTokens: last ? request.req.prompt.length : 0, cachedTokens: last ? request.cached : 0,
    },
  });
}

/** Retires jobs that are finished with nothing in flight: final event, then their cells. */
export function retireFinished(c: PipelineCore, fx: PipelineEffect[], now: number): void {
  for (let i = 0; i < c.jobs.length; i++) {
    const j = c.jobs[i]!;
    if (j.finish === null || j.inflight > 0) continue;
    c.jobs.splice(i--, 1);
    const request = c.requests.get(j.requestId)!;
    event(fx, request, j, [], j.finish);
    if (--request.live === 0) {
      c.requests.delete(j.requestId);
      const failed = request.jobs.find((x) => x.error)?.error;
      fx.push(failed ? { type: 'request_ended', req: request.req, error: failed } : { type: 'request_ended', req: request.req });
    }
    release(c, fx, j, request, now);
  }
}

/**
 * A session that ended well keeps its cells here for its next turn; a one-off request that
 * computed a prompt for the prefix cache leaves its sequence there; anything else empties its
 * sequence (positions it shared with the cache stay the cache's).
 */
function release(c: PipelineCore, fx: PipelineEffect[], j: Job, request: Admission, now: number): void {
  dropCheckpoint(c, fx, j);
  dropFork(c, j);
  const residents = c.room.residents;
  const tree = c.room.prefixes;
  if (j.sessionId && j.finish !== FinishReason.ERROR) {
    const prefix = residents.get(j.sessionId)?.tokens.slice(0, j.pos0) ?? [];
    residents.set(j.sessionId, { seq: j.seq, tokens: [...prefix, ...cachedTokens(j)], lastUsedMs: now, busy: c.moving.has(j.sessionId), epoch: request.epoch, ...(j.prefix ? { prefix: j.prefix } : {}) });
    return;
  }
  if (j.sessionId) residents.delete(j.sessionId);
  // What a failed step left in the sequence is not to be trusted: it is not cached.
  const kept = j.grown !== null && tree.ownerEnded(j.grown, j.finish !== FinishReason.ERROR, j.pos, now, fedSamples(j));
  if (j.prefix) tree.detach(j.prefix, j.seq);
  if (!kept) dropSeq(c, fx, j.seq, j.pos);
}

/** Cancels a request's jobs (those of `indices`, or all), wherever it is. */
export function cancel(c: PipelineCore, fx: PipelineEffect[], requestId: string, indices: readonly number[]): void {
  const queued = c.waiting.findIndex((r) => r.requestId === requestId);
  if (queued >= 0) {
    const [req] = c.waiting.splice(queued, 1);
    c.handOffs.delete(requestId);
    failRequest(fx, req!, 'cancelled', 'cancelled before it started');
    return;
  }
  const rebuilding = c.rebuilds.findIndex((r) => r.request.req.requestId === requestId);
  if (rebuilding >= 0 && indices.length === 0) {
    const [r] = c.rebuilds.splice(rebuilding, 1);
    for (const j of r!.jobs) {
      jobTransition(j, { type: 'cancel' });
      event(fx, r!.request, j, [], FinishReason.CANCELLED);
    }
    fx.push({ type: 'request_ended', req: r!.request.req });
    return;
  }
  const request = c.requests.get(requestId);
  if (!request) return;
  for (const j of request.jobs) if (indices.length === 0 || indices.includes(j.index)) jobTransition(j, { type: 'cancel' });
}

/**
 * Why the pipeline is stuck, or null: the oldest step in flight (nothing of this pipeline is
 * ahead of it on any stage) has been so for longer than its deadline, a margin over what its
 * work costs these stages (the floor while that is unknown). Its messages were lost (a NATS
 * restart) or a stage hangs; the coordinator then resets the pipeline. A stage that is only
 * slow keeps heartbeating and is shown, not reset, until its step is that far behind.
 */
export function stalled(c: PipelineCore, now: number): string | null {
  const head = c.inflight.values().next().value;
  if (!head) return null;
  const since = Math.max(head.sentMs, c.lastResultMs);
  const o = c.options;
  const one = c.costs.predict(c.route, head.work);
  const predicted = one === null ? null : one * head.burst;
  const deadline = stepDeadlineMs(predicted, { floorMs: o.stepDeadlineFloorMs, margin: o.stepDeadlineMargin });
  if (now - since <= deadline) return null;
  const expected = predicted === null ? 'its cost is not known yet' : `${Math.round(predicted)} ms predicted for ${head.work.tokens} tokens`;
  return `a step has been unanswered for ${now - since} ms (deadline ${Math.round(deadline)} ms: ${expected})`;
}
