// Sessions and requests leaving or entering a pipeline's core: a migration's source side (begin,
// hold, hand over, stay) and target side (reserve, adopt, unreserve), and the pipeline going down
// (its running requests handed back to be rebuilt elsewhere) or being abandoned (another
// coordinator leads). Pure.
import { cachedTokens, fedSamples, jobTransition, rebuildJob } from './job.ts';
import { takeRoom } from './pipeline-admission.ts';
import { dropSeq, failChoices, failRequest, isRequestKey, jobOf, type Blame, type MovedSession, type PipelineCore, type PipelineEffect } from './pipeline-state.ts';
import { dropCheckpoint } from './prefix-checkpoint.ts';
import { dropFork } from './choice-fork.ts';
import { retireFinished } from './pipeline-steps.ts';

/** A session starts moving off: no new request of it starts here until it stays or is handed over. */
export function beginMove(c: PipelineCore, session: string): void {
  c.moving.add(session);
  const r = c.room.residents.get(session);
  if (r && !jobOf(c, session)) r.busy = true;
}

/** Stops scheduling the session's job; 'held' once none of its steps is in flight (at once when none is). */
export function hold(c: PipelineCore, fx: PipelineEffect[], session: string): void {
  const job = jobOf(c, session);
  c.holding.add(session);
  if (job) job.held = true;
  if (!job || job.inflight === 0) fx.push({ type: 'held', session });
  else c.holdPending.add(session);
}

/**
 * The session stays here (its move failed): it takes requests and decodes again. A request whose
 * hand-off failed while it still prefills is no longer held after its first token.
 */
export function stay(c: PipelineCore, session: string): void {
  c.moving.delete(session);
  c.holding.delete(session);
  c.holdPending.delete(session);
  c.prefilled.delete(session);
  const job = jobOf(c, session);
  // (Still prefilling: it may be held for its sequence operations, which release it.)
  if (job?.handOff) job.handOff = false;
  else if (job) job.held = false;
  const r = c.room.residents.get(session);
  if (r && !job) r.busy = false;
}

/**
 * Takes a held session, or a one-off request's job (requestKey), off this pipeline: what it is,
 * for its target. Its sequence here is emptied and freed; but a one-off request's prompt that
 * the prefix cache was to keep stays here, cached, as if the request had ended (a prefill
 * pipeline keeps the prompts it computed for the next requests to share).
 */
export function handOver(c: PipelineCore, fx: PipelineEffect[], session: string, now: number): MovedSession {
  c.moving.delete(session);
  c.holding.delete(session);
  c.holdPending.delete(session);
  c.prefilled.delete(session);
  const job = jobOf(c, session) ?? null;
  const r = c.room.residents.get(session);
  c.room.residents.delete(session);
  // Its target holds every position itself: nothing is shared there.
  const shared = job?.prefix ?? r?.prefix;
  if (shared) c.room.prefixes.detach(shared, job?.seq ?? r!.seq);
  let cached = false;
  if (job) {
    dropCheckpoint(c, fx, job);
    dropFork(c, job);
    cached = job.grown !== null && c.room.prefixes.ownerEnded(job.grown, true, job.pos, now, fedSamples(job));
    job.grown = null;
    job.prefix = null;
    job.shared = 0;
  }
  let request = null;
  let seq = r?.seq ?? -1;
  if (job) {
    c.jobs.splice(c.jobs.indexOf(job), 1);
    request = c.requests.get(job.requestId) ?? null;
    c.requests.delete(job.requestId);
    seq = job.seq;
  }
  if (seq >= 0 && !cached) dropSeq(c, fx, seq, job ? job.pos : r?.tokens.length ?? 0);
  const prefix = job ? (r?.tokens ?? []).slice(0, job.pos0) : r?.tokens ?? [];
  return { job, request, tokens: job ? [...prefix, ...cachedTokens(job)] : prefix };
}

/**
 * Reserves a sequence and `cells` cells for a session moving here, evicting idle sessions least
 * recently used first; null when they cannot be had. (The migration empties the sequence on every
 * stage before the first piece arrives.)
 */
export function reserve(c: PipelineCore, fx: PipelineEffect[], cells: number): number | null {
  const grant = takeRoom(c, fx, { seqs: 1, cells, keep: '', extra: 0 });
  if (!grant) return null;
  const seq = grant.seqs[0]!;
  c.room.reserveIncoming(seq, cells);
  return seq;
}

/** Gives a reservation up: its sequence is emptied on every stage and freed. */
export function unreserve(c: PipelineCore, fx: PipelineEffect[], seq: number): void {
  dropSeq(c, fx, seq, c.room.endIncoming(seq));
}

/** Takes a session that moved here into the reserved sequence `seq`; its job goes on decoding. */
export function adopt(c: PipelineCore, session: string, seq: number, moved: MovedSession, epoch: number, now: number): void {
  c.room.endIncoming(seq);
  const { job, request } = moved;
  if (job && request) {
    // The prompt tokens it fed and the samples it evaluated are now the cached prefix.
    job.seq = seq;
    job.samplerSent = false;
    job.replay = job.generated.map((t) => t.token);
    job.held = false;
    job.inflight = 0;
    job.chained = 0;
    request.epoch = epoch;
    if (job.sessionId) c.room.residents.set(session, { seq, tokens: moved.tokens.slice(0, job.pos0), lastUsedMs: now, busy: true, epoch });
    c.requests.set(job.requestId, request);
    c.jobs.push(job);
  } else if (!isRequestKey(session)) {
    c.room.residents.set(session, { seq, tokens: moved.tokens, lastUsedMs: now, busy: false, epoch });
  }
}

/**
 * The pipeline went away. Requests still generating are handed back to be rebuilt elsewhere
 * ('orphan': their cells are lost, their tokens are not); queued requests fail with a retriable
 * error. The requests `blame` names count one more failure; one that reaches the limit is not
 * rebuilt again but fails with `repeated_failure` (a request that stalls every pipeline it is put
 * on, a grammar too costly for a step's deadline say, would otherwise take them down in turn).
 */
export function down(c: PipelineCore, fx: PipelineEffect[], reason: string, blame: Blame, now: number): void {
  c.down = true;
  const steps = [...c.inflight.values()];
  const blamed = new Set((blame === 'stuck' ? steps.slice(0, 1) : blame === 'inflight' ? steps : []).flatMap((f) => f.entries.map((e) => e.job.requestId)));
  c.inflight.clear();
  c.early.clear();
  releaseHolds(c, fx);
  const limit = c.options.maxRequestFailures;
  for (const request of c.requests.values()) {
    const unfinished = request.jobs.filter((j) => j.finish === null && c.jobs.includes(j));
    // A choice cancelled while its token was in flight ends here, as CANCELLED, with the jobs
    // retired below: rebuilt, it would wait for that token for ever, and its session stay busy.
    for (const j of unfinished.filter((x) => x.cancelled)) {
      j.inflight = 0;
      j.awaitingToken = false;
      jobTransition(j, { type: 'cancel' });
    }
    const live = unfinished.filter((j) => j.finish === null);
    if (live.length === 0) continue;
    const prefix = request.req.sessionId ? c.room.residents.get(request.req.sessionId)?.tokens ?? [] : [];
    for (const j of live) {
      c.jobs.splice(c.jobs.indexOf(j), 1);
      // A one-off job's first positions were its prompt's (the prefix cache's, or its first
      // choice's copy); a session's, its history's.
      rebuildJob(j, (request.req.sessionId ? prefix : request.req.prompt).slice(0, j.pos0));
    }
    if (blamed.has(request.req.requestId)) for (const j of live) j.alone = true;
    if (blamed.has(request.req.requestId) && ++request.failures >= limit) {
      fx.push({ type: 'log', level: 'warn', message: 'a request took its pipeline down too often: it is not rebuilt again', fields: { request: request.req.requestId, failures: request.failures, reason } });
      failChoices(fx, request.req, live.map((j) => ({ index: j.index, offset: j.generated.length })), 'repeated_failure',
        `the request was in the step that stalled or lost its pipeline ${request.failures} times (last: ${reason}); it is not run again: make it cheaper (a smaller grammar or prompt)`);
      continue;
    }
    fx.push({ type: 'orphan', rebuild: { request, jobs: live } });
  }
  for (const j of c.jobs) {
    j.inflight = 0;
    j.chained = 0;
    jobTransition(j, { type: 'failed', code: 'pipeline_down', message: reason });
  }
  retireFinished(c, fx, now);
  for (const req of c.waiting.splice(0)) failRequest(fx, req, 'pipeline_down', reason);
  for (const rebuild of c.rebuilds.splice(0)) fx.push({ type: 'orphan', rebuild });
  c.room.clear();
  c.requests.clear();
  forgetSaved(c);
}

/**
 * Drops everything without a word to the gateways: this coordinator is no longer the leader,
 * and its successor rebuilds what ran here.
 */
export function abandon(c: PipelineCore, fx: PipelineEffect[]): void {
  c.down = true;
  for (const r of c.requests.values()) fx.push({ type: 'request_ended', req: r.req, error: { code: 'abandoned', message: 'no longer the leader' } });
  c.inflight.clear();
  c.early.clear();
  releaseHolds(c, fx);
  c.jobs.length = 0;
  c.waiting.length = 0;
  c.rebuilds.length = 0;
  c.room.residents.clear();
  c.room.prefixes.clear();
  c.requests.clear();
  forgetSaved(c);
}

/** What the tiers keep for this pipeline's sessions and prefixes, and the hand-offs under way, are forgotten: its sequences are gone. */
function forgetSaved(c: PipelineCore): void {
  c.offloading.clear();
  c.offloaded.clear();
  c.savingPrefixes.clear();
  c.savedPrefixes.clear();
  c.handOffs.clear();
  c.prefilled.clear();
}

/** Every migration holding a session here learns that its hold ended (the session is gone with the pipeline). */
function releaseHolds(c: PipelineCore, fx: PipelineEffect[]): void {
  for (const session of c.holdPending) fx.push({ type: 'held', session });
  c.holdPending.clear();
}
