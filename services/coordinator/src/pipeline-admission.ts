// Admission into a pipeline's core: a request is refused at once (it can never run here, the
// queue is full, its session is busy), started (a sequence and cells granted by the room,
// evicting idle sessions least recently used first) or queued until the room allows it. A request
// taken over from a pipeline that went down, or from a previous leader, is rebuilt by re-prefill
// and queues ahead of new ones. A started request's sequences are made ready by one 'prepare'
// effect (sequence operations, then its session's claim and history in Redis) before its first
// step. Pure.
import { FinishReason, SeqOpKind, type GenerateReply, type GenerateRequest, type SeqOp } from '@strata/wire';
import { checkpointAt, checkpointSeq } from './prefix-checkpoint.ts';
import { cellsNeeded, jobTransition, newJob, rebuildJob, type Job } from './job.ts';
import { forkAt } from './choice-fork.ts';
import { accept, refuse, seqOp } from './replies.ts';
import { dropSeq, failRequest, requestKey, running, type Admission, type Offloaded, type PipelineCore, type PipelineEffect, type Rebuild, type SavedPrefix } from './pipeline-state.ts';
import { PrefixTree, type PrefixMatch, type PrefixNode } from './prefix-tree.ts';
import { sharedBy, type RoomAsk, type RoomGrant } from './seq-room.ts';

/**
 * Prompt tokens a cached prefix must cover to be shared: shorter ones (a chat template's first
 * tokens) cost a sequence operation and a node for next to nothing.
 */
export const MIN_SHARED_PREFIX = 16;
/**
 * A request whose prompt matches at least this many more tokens that a running job is computing
 * now waits for them instead of computing its own copy (requests queued behind it start
 * meanwhile): many clients with one system prompt prefill it once.
 */
export const WAIT_FOR_PREFIX = MIN_SHARED_PREFIX;

/** Sessions a pipeline remembers in its workers' tiers at most (the oldest is forgotten). */
export const MAX_OFFLOADED = 4096;

/** cached prefixes a pipeline remembers in its workers' tiers at most (the oldest is forgotten) */
export const MAX_SAVED_PREFIXES = 1024;

/** Shortest common prefix length of two token lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** Tokens a request may generate: its max_tokens, else the default within the context and its choices' share of the cells. */
function maxTokensOf(c: PipelineCore, req: GenerateRequest): number {
  return req.maxTokens > 0 ? req.maxTokens : Math.min(c.options.defaultMaxTokens, Math.min(c.context, Math.floor(c.room.capacity / Math.max(1, req.n))) - req.prompt.length);
}

/**
 * The refusal of a request this pipeline can never run (now or ever), or null. A choice's prompt
 * and tokens must fit the model's context; each choice holds its own copy of them, so all of them
 * must fit the pipeline's cells at once.
 */
function neverRuns(c: PipelineCore, req: GenerateRequest): GenerateReply | null {
  const n = Math.max(1, req.n);
  const { capacity, nSeqMax } = c.room;
  if (n > nSeqMax) return refuse('bad_request', `n=${n} choices exceed the ${nSeqMax} sequences of a pipeline`);
  const gen = Math.max(1, maxTokensOf(c, req));
  const perChoice = req.prompt.length + gen;
  const what = () => `${req.prompt.length} prompt tokens + ${gen} to generate`;
  if (perChoice > c.context) return refuse('context_length_exceeded', `${what()} exceed the context of ${c.context}`);
  if (n * perChoice > capacity) return refuse('context_length_exceeded', `${n} choices of ${what()} each exceed the ${capacity} cells of a pipeline`);
  if (c.down) return refuse('pipeline_down', `pipeline ${c.view.id} is down`);
  return null;
}

/**
 * Admits a request: refused at once (it can never run here, or its session is busy), started,
 * or queued until sequences and cells free up. Accepted requests report failures as events.
 */
export function admit(c: PipelineCore, fx: PipelineEffect[], req: GenerateRequest, now: number, handOff = false): GenerateReply {
  const never = neverRuns(c, req);
  if (never) return never;
  // Backpressure: the queue holds at most maxQueue requests and queueFactor × the pipeline's
  // cells of reservations; beyond that a caller is told to come back (429) instead of waiting.
  const o = c.options;
  const queuedCells = c.waiting.reduce((n, r) => n + Math.max(1, r.n) * (r.prompt.length + (r.maxTokens || o.defaultMaxTokens)), 0);
  if (c.waiting.length >= o.maxQueue || queuedCells > o.queueFactor * c.room.capacity) {
    return refuse('overloaded', `pipeline ${c.view.id} has ${c.waiting.length} requests waiting for ${queuedCells} cells`);
  }
  // One choice only: its KV moves whole to a decode pipeline after its first token.
  if (handOff && Math.max(1, req.n) === 1 && !req.sampling?.embed) c.handOffs.add(req.requestId);
  if (c.waiting.length === 0 && c.clean) {
    const r = tryStart(c, fx, req, now);
    if (r === 'wait' || r === 'prefix') c.waiting.push(req);
    else if (r !== 'started') {
      c.handOffs.delete(req.requestId);
      return r;
    }
  } else {
    c.waiting.push(req);
  }
  return accept(c.view.id);
}

/**
 * Takes over a request that a previous leader accepted and lost: each choice goes on from the
 * tokens its client has seen, rebuilt by re-prefill like the requests of a pipeline that went
 * down (so it queues as a rebuild, never refused for load); choices that ended stay ended.
 */
export function resume(c: PipelineCore, fx: PipelineEffect[], req: GenerateRequest): GenerateReply {
  const never = neverRuns(c, req);
  if (never) return never;
  const n = Math.max(1, req.n);
  const session = req.sessionId;
  // The session's earlier attempt (cancelled by the gateway) may still have a step in flight.
  const idle = session ? c.room.residents.get(session) : undefined;
  if (session && (idle?.busy || c.moving.has(session))) return refuse('session_busy', `session ${session} is still answering an earlier attempt`);
  // Its idle cells here (from that attempt), or in the tiers, go: the rebuild prefills everything again.
  const saved = c.offloaded.get(session);
  if (saved) {
    c.offloaded.delete(session);
    fx.push({ type: 'forget', key: saved.key });
  }
  if (idle) {
    c.room.residents.delete(session);
    if (idle.prefix) c.room.prefixes.detach(idle.prefix, idle.seq);
    dropSeq(c, fx, idle.seq, idle.tokens.length);
  }
  const maxTokens = maxTokensOf(c, req);
  const progress = new Map(req.resume.map((p) => [p.index, p]));
  const jobs = Array.from({ length: n }, (_, index) => {
    const j = newJob({
      requestId: req.requestId, index, sessionId: session, seq: -1, prompt: req.prompt, pos0: 0,
      sampling: { ...req.sampling!, seed: (req.sampling?.seed ?? 0) + index }, maxTokens,
    });
    const p = progress.get(index);
    j.generated = (p?.tokens ?? []).map((token) => ({ $typeName: 'strata.v1.SampledToken' as const, seq: 0, token, eog: false, logprob: 0, top: [], embedding: [] }));
    rebuildJob(j, []);
    if (p?.ended) j.finish = FinishReason.STOP;
    return j;
  });
  const live = jobs.filter((j) => j.finish === null);
  if (live.length === 0) return refuse('bad_request', 'every choice of the request has ended: nothing to resume');
  c.rebuilds.push({ request: { req, jobs, cached: 0, epoch: 0, live: live.length, failures: 0 }, jobs: live });
  return accept(c.view.id);
}

/** Starts queued requests, rebuilds first, in order, while they fit. */
export function startWaiting(c: PipelineCore, fx: PipelineEffect[], now: number): void {
  while (c.rebuilds.length > 0 && !c.down && c.clean) {
    if (!tryRebuild(c, fx, c.rebuilds[0]!, now)) return;
    c.rebuilds.shift();
  }
  for (let i = 0; i < c.waiting.length && !c.down && c.clean;) {
    const req = c.waiting[i]!;
    const r = tryStart(c, fx, req, now);
    if (r === 'wait') return;
    // Waiting for a prefix being computed is not waiting for room: the next request may start.
    if (r === 'prefix') {
      i++;
      continue;
    }
    c.waiting.splice(i, 1);
    if (r !== 'started') failRequest(fx, req, r.error!.code, r.error!.message);
  }
}

/**
 * Plans room for `ask` and, when there is, applies it: its evicted sequences not handed out are
 * emptied, its evicted cache sequences that keep a shorter path trimmed. With `offload` (and
 * tiers on), each idle session it evicts is saved to the tiers first: the save reaches every
 * stage before the emptying of its sequence (sequence operations keep their order), so the
 * evicted cells go to the new work at once, as without tiers.
 */
export function takeRoom(c: PipelineCore, fx: PipelineEffect[], ask: RoomAsk, offload = false): RoomGrant | null {
  const grant = c.room.plan(ask, running(c));
  if (!grant) return null;
  if (offload && c.options.tiers) {
    for (const id of grant.evicted) offloadSession(c, fx, id);
    // A leaf's cells leave the device with it (an inner node's stay: its children hold them).
    for (const p of grant.prefixes) if (p.node.children.size === 0 && sharedBy(p.node) > MIN_SHARED_PREFIX) offloadPrefix(c, fx, p.node);
  }
  const trims = c.room.apply(grant);
  // Sent before the new work's first step: its cells are those of these sequences.
  for (const d of grant.drops) if (!c.down) fx.push({ type: 'drop_seq', seq: d.seq });
  for (const t of trims) if (!c.down) fx.push({ type: 'trim_seq', seq: t.seq, keepTo: t.keepTo });
  return grant;
}

/** Saves an idle session about to be evicted to the tiers (its sequence is emptied after). */
function offloadSession(c: PipelineCore, fx: PipelineEffect[], id: string): void {
  const r = c.room.residents.get(id)!;
  const key = `${id}/${c.nextKey++}`;
  c.offloading.set(id, { tokens: r.tokens, key, epoch: r.epoch, lastUsedMs: r.lastUsedMs });
  fx.push({ type: 'offload', seq: r.seq, session: id, key });
}

/** Saves a cached prefix about to be evicted to the tiers (its sequence is emptied or trimmed after). */
function offloadPrefix(c: PipelineCore, fx: PipelineEffect[], node: PrefixNode): void {
  const key = `prefix/${c.nextKey++}`;
  const tokens = PrefixTree.path(node);
  c.savingPrefixes.set(key, { scope: c.room.prefixes.scopeOf(node), tokens, cells: tokens.length + node.extra, key });
  fx.push({ type: 'offload', seq: node.seq, session: '', key });
}

/**
 * No room for `cells` now: wait, unless nothing under way frees cells. They come back when a job
 * ends, a sequence is emptied or a migration settles; with none of these under way (sequences
 * whose emptying failed hold the rest) none will.
 */
function noRoom(c: PipelineCore, cells: number): 'wait' | GenerateReply {
  if (c.jobs.length + c.room.settling + c.moving.size === 0) return refuse('kv_full', `the pipeline cannot hold ${cells} more cells now (${c.room.strandedCells} are held by sequences that could not be emptied)`);
  return 'wait';
}

/** A session's (or, without one, a cached prefix's) save to the tiers ended: it is restorable from there (`ok`), or forgotten. */
export function offloaded(c: PipelineCore, fx: PipelineEffect[], session: string, key: string, ok: boolean): void {
  if (!session) {
    const p = c.savingPrefixes.get(key);
    if (!p) return;
    c.savingPrefixes.delete(key);
    if (!ok) {
      fx.push({ type: 'forget', key });
      return;
    }
    remember(fx, c.savedPrefixes, key, p, MAX_SAVED_PREFIXES);
    return;
  }
  const o = c.offloading.get(session);
  if (!o) return;
  c.offloading.delete(session);
  if (!ok) {
    // Some stages may have kept their part.
    fx.push({ type: 'forget', key: o.key });
    return;
  }
  remember(fx, c.offloaded, session, o, MAX_OFFLOADED);
}

/** Keeps `value` in `saved` under `id`; past `max` entries the oldest is forgotten, in the tiers too. */
function remember<T extends { key: string }>(fx: PipelineEffect[], saved: Map<string, T>, id: string, value: T, max: number): void {
  saved.set(id, value);
  if (saved.size <= max) return;
  const [oldest, entry] = saved.entries().next().value as [string, T];
  saved.delete(oldest);
  fx.push({ type: 'forget', key: entry.key });
}

/**
 * A granted sequence's operations when it starts from a state in the tiers: the evicted sequences
 * it was handed emptied, the state under `key` loaded into `seq`, then cut to its first `keep`
 * positions. Cut even when it should hold no more: a cached prefix saved while a trim of its
 * sequence had failed holds the positions that trim was to drop (a stage saves all it has).
 */
function loadOps(grant: RoomGrant, seq: number, key: string, keep: number): SeqOp[] {
  const ops = grant.emptyFirst.map((s) => seqOp(SeqOpKind.REMOVE, s));
  ops.push({ ...seqOp(SeqOpKind.LOAD, seq), key }, seqOp(SeqOpKind.REMOVE, seq, keep, -1));
  return ops;
}

/**
 * A session saved to the tiers gets a sequence and its cells back from there ('fresh' when the
 * prompt keeps too little of it, or more than the request's own cells cover: it is forgotten).
 */
function restore(c: PipelineCore, fx: PipelineEffect[], req: GenerateRequest, saved: Offloaded, now: number): 'started' | 'wait' | 'fresh' | GenerateReply {
  const session = req.sessionId;
  const maxTokens = maxTokensOf(c, req);
  const cached = resumeAt(c, saved.tokens, req.prompt);
  // Restored whole, then cut to what the prompt keeps: the job's own cells must hold it all meanwhile.
  if (cached < MIN_SHARED_PREFIX || saved.tokens.length > req.prompt.length + maxTokens) {
    c.offloaded.delete(session);
    fx.push({ type: 'forget', key: saved.key });
    return 'fresh';
  }
  const grant = takeRoom(c, fx, { seqs: 1, cells: maxTokens + req.prompt.length, keep: session, extra: 0 }, true);
  if (!grant) return noRoom(c, maxTokens + req.prompt.length);
  c.offloaded.delete(session);
  const seq = grant.seqs[0]!;
  const ops = loadOps(grant, seq, saved.key, cached);
  c.room.residents.set(session, { seq, tokens: saved.tokens.slice(0, cached), lastUsedMs: now, busy: true, epoch: saved.epoch });
  const job = newJob({
    requestId: req.requestId, index: 0, sessionId: session, seq, prompt: req.prompt.slice(cached), pos0: cached,
    sampling: { ...req.sampling!, seed: req.sampling?.seed ?? 0 }, maxTokens,
  });
  fx.push({ type: 'log', level: 'debug', message: 'restoring a session from the tiers', fields: { request: req.requestId, session, seq, cached, key: saved.key } });
  const request: Admission = { req, jobs: [job], cached, epoch: 0, live: 1, failures: 0, restore: saved };
  begin(c, fx, request, [job], ops, { keep: cached, tokens: req.prompt.slice(cached) });
  return 'started';
}

/**
 * The cached prefix in the tiers that holds the most of a one-off request's prompt in its scope,
 * if it holds at least 16 more tokens than the device's cache (`cached`) and fits the request's
 * own cells (it is loaded whole, then cut).
 */
function savedPrefix(c: PipelineCore, req: GenerateRequest, cached: number): { prefix: SavedPrefix; depth: number } | null {
  if (!c.options.tiers || !c.options.prefixCache || req.sampling?.embed) return null;
  const own = req.prompt.length + maxTokensOf(c, req);
  let best: { prefix: SavedPrefix; depth: number } | null = null;
  for (const p of c.savedPrefixes.values()) {
    if (p.scope !== req.cacheScope || p.cells > own) continue;
    const depth = Math.min(commonPrefix(p.tokens, req.prompt), req.prompt.length - 1);
    // Saved from a small windowed cache, a state holds its window before its end only.
    if (c.exactResume && (depth !== p.cells || p.tokens.length !== p.cells)) continue;
    if (depth >= Math.max(MIN_SHARED_PREFIX, cached + MIN_SHARED_PREFIX) && depth > (best?.depth ?? 0)) best = { prefix: p, depth };
  }
  return best;
}

/**
 * A one-off request starts from a cached prefix in the tiers: its sequence loads the saved state
 * and cuts it to the `depth` tokens its prompt shares, and it computes the rest. Its prompt is
 * cached again as it goes (a lineage from position 0, ready once the state is loaded).
 */
function restorePrefix(c: PipelineCore, fx: PipelineEffect[], req: GenerateRequest, saved: SavedPrefix, depth: number, now: number): 'started' | 'wait' | GenerateReply {
  const maxTokens = maxTokensOf(c, req);
  const need = req.prompt.length + maxTokens;
  const grant = takeRoom(c, fx, { seqs: 1, cells: need, keep: '', extra: 0 }, true);
  if (!grant) return noRoom(c, need);
  c.savedPrefixes.delete(saved.key);
  const seq = grant.seqs[0]!;
  const ops = loadOps(grant, seq, saved.key, depth);
  const job = newJob({
    requestId: req.requestId, index: 0, sessionId: '', seq, prompt: req.prompt.slice(depth), pos0: depth,
    sampling: { ...req.sampling!, seed: req.sampling?.seed ?? 0 }, maxTokens,
  });
  // The stages hold none of it until the state is loaded ('prepared'): no later prompt shares it before.
  job.done = 0;
  if (req.prompt.length > MIN_SHARED_PREFIX) job.grown = c.room.prefixes.grow(req.cacheScope, null, [...req.prompt], job, now);
  fx.push({ type: 'log', level: 'debug', message: 'restoring a cached prefix from the tiers', fields: { request: req.requestId, seq, depth, key: saved.key } });
  const request: Admission = { req, jobs: [job], cached: depth, epoch: 0, live: 1, failures: 0, restore: { tokens: saved.tokens, key: saved.key, epoch: 0, lastUsedMs: now } };
  begin(c, fx, request, [job], ops, null);
  return 'started';
}

/**
 * Where a request goes on from a sequence holding `held`: after the prompt's common prefix with
 * it, less one (at least one prompt token is evaluated, to get the logits to sample from); on a
 * pipeline that resumes only exactly (PipelineCore.exactResume), from 0 unless the prompt extends
 * all of `held`.
 */
function resumeAt(c: PipelineCore, held: readonly number[], prompt: readonly number[]): number {
  const common = commonPrefix(held, prompt);
  if (c.exactResume && (common < held.length || common === prompt.length)) return 0;
  return common === prompt.length ? common - 1 : common;
}

/**
 * The cached prefix a request without cells of its own here shares: the longest one in its scope
 * that every stage holds (leaving one prompt token to evaluate), if long enough; 'wait' when a
 * running job is computing much more of it right now.
 */
function cachedPrefix(c: PipelineCore, req: GenerateRequest): PrefixMatch | null | 'wait' {
  // An embedding pools the states of every prompt token: it computes them all.
  if (!c.options.prefixCache || req.sampling?.embed) return null;
  const m = c.room.prefixes.match(req.cacheScope, req.prompt, req.prompt.length - 1);
  if (!m) return null;
  if (m.pending >= WAIT_FOR_PREFIX) return 'wait';
  return m.depth >= MIN_SHARED_PREFIX ? m : null;
}

/**
 * Starts `req` if sequences and cells allow, evicting idle sessions and cached prefixes least
 * recently used first; 'wait' when they do not allow it yet, 'prefix' while a running job computes
 * much of its prompt, a refusal when it can never run.
 */
function tryStart(c: PipelineCore, fx: PipelineEffect[], req: GenerateRequest, now: number): 'started' | 'wait' | 'prefix' | GenerateReply {
  const n = Math.max(1, req.n);
  const session = req.sessionId;
  const resident = session ? c.room.residents.get(session) : undefined;
  if (resident?.busy || c.moving.has(session)) return refuse('session_busy', `session ${session} is answering another request or moving`);
  if (session && !resident) {
    // Being saved to the tiers: it comes back from there once it is.
    if (c.offloading.has(session)) return 'prefix';
    const saved = c.offloaded.get(session);
    const r = saved ? restore(c, fx, req, saved, now) : 'fresh';
    if (r !== 'fresh') return r;
  }
  const maxTokens = maxTokensOf(c, req);
  let cached = 0;
  let match: PrefixMatch | null = null;
  if (resident) {
    cached = resumeAt(c, resident.tokens, req.prompt);
  } else {
    const m = cachedPrefix(c, req);
    if (m === 'wait') return 'prefix';
    match = m;
    cached = m?.depth ?? 0;
    // Much more of the prompt in the tiers than on the device: it comes back from there.
    const saved = session || n > 1 ? null : savedPrefix(c, req, cached);
    if (saved) return restorePrefix(c, fx, req, saved.prefix, saved.depth, now);
  }
  const need = n * (maxTokens + req.prompt.length - cached);
  // The session's own cells past the common prefix are removed before it starts (less what it
  // shares with the prefix cache, which the cache counts).
  const extra = resident ? Math.max(0, resident.tokens.length - Math.max(cached, sharedBy(resident.prefix))) : 0;
  const grant = takeRoom(c, fx, { seqs: resident ? 0 : n, cells: need, keep: session, extra, protect: match?.node ?? resident?.prefix }, true);
  if (!grant) return noRoom(c, need);
  const ops = grant.emptyFirst.map((seq) => seqOp(SeqOpKind.REMOVE, seq));
  const seqs = grant.seqs;
  const tree = c.room.prefixes;
  let prefix = null;
  if (resident) {
    resident.busy = true;
    seqs.push(resident.seq);
    if (cached < resident.tokens.length) ops.push(seqOp(SeqOpKind.REMOVE, resident.seq, cached, -1));
    // It shares no more of the cache than it keeps.
    if (resident.prefix && cached < sharedBy(resident.prefix)) resident.prefix = tree.reattach(resident.prefix, resident.seq, cached, now);
    prefix = resident.prefix ?? null;
  } else if (match) {
    // Each choice's sequence shares the cached positions: one seq_cp, no compute.
    const at = tree.attach(match, seqs, now);
    prefix = at.node;
    for (const seq of seqs) ops.push(seqOp(SeqOpKind.COPY, at.from, 0, cached, seq));
  }
  if (session && !resident) {
    // The session is here from now on: a second request of it is busy, not a second copy.
    c.room.residents.set(session, { seq: seqs[0]!, tokens: prefix ? PrefixTree.path(prefix) : [], lastUsedMs: now, busy: true, epoch: 0, prefix });
  }
  const jobs = seqs.map((seq, index) => {
    const j = newJob({
      requestId: req.requestId, index, sessionId: session, seq, prompt: req.prompt.slice(cached), pos0: cached,
      sampling: { ...req.sampling!, seed: (req.sampling?.seed ?? 0) + index }, maxTokens,
    });
    j.prefix = prefix;
    j.shared = sharedBy(prefix);
    return j;
  });
  // Several choices compute the prompt once: the first one, and the others get a copy.
  const fork = forkAt(req, cached);
  if (fork !== null) {
    jobs[0]!.fork = { at: fork, copying: false };
    for (const j of jobs.slice(1)) j.forkWait = true;
  }
  // A one-off request's prompt is cached for later ones as it is computed (a session's cells are
  // its own); one too short for any later prompt to share is not, nor an embedding's. Where the
  // tree shares only at ends, it may be checkpointed where it leaves the paths there.
  const at = checkpointAt(c, req, cached);
  if (c.options.prefixCache && !session && !req.sampling?.embed && req.prompt.length > MIN_SHARED_PREFIX) jobs[0]!.grown = tree.grow(req.cacheScope, prefix, jobs[0]!.prompt, jobs[0]!, now);
  fx.push({ type: 'log', level: 'debug', message: 'start', fields: { request: req.requestId, session, seqs, cached, need } });
  const request: Admission = { req, jobs, cached, epoch: 0, live: jobs.length, failures: 0 };
  // A new session's history in Redis is its whole prompt.
  const keep = resident ? cached : 0;
  begin(c, fx, request, jobs, ops, session ? { keep, tokens: req.prompt.slice(keep) } : null);
  const seq = at !== null && jobs[0]!.grown ? checkpointSeq(c) : null;
  if (seq !== null) jobs[0]!.checkpoint = { at: at!, seq, copying: false };
  return 'started';
}

/** Starts a rebuild if sequences and cells allow; false: wait. */
function tryRebuild(c: PipelineCore, fx: PipelineEffect[], r: Rebuild, now: number): boolean {
  const need = r.jobs.reduce((n, j) => n + cellsNeeded(j), 0);
  const grant = takeRoom(c, fx, { seqs: r.jobs.length, cells: need, keep: '', extra: 0 });
  if (!grant) return false;
  const { request, jobs } = r;
  jobs.forEach((j, i) => (j.seq = grant.seqs[i]!));
  const session = request.req.sessionId;
  if (session) c.room.residents.set(session, { seq: jobs[0]!.seq, tokens: [], lastUsedMs: now, busy: true, epoch: 0 });
  fx.push({ type: 'log', level: 'info', message: 'rebuilding a request by re-prefill', fields: { request: request.req.requestId, session, tokens: jobs[0]!.prompt.length } });
  begin(c, fx, request, jobs, grant.emptyFirst.map((seq) => seqOp(SeqOpKind.REMOVE, seq)), null);
  return true;
}

/**
 * Takes a request's `jobs` in. Their cells count as reserved from now on; they take steps once
 * their sequences are ready: at once when nothing is to be done, else after the 'prepare' effect
 * (sequence operations, then the session's claim and, for a new request, its history).
 */
function begin(c: PipelineCore, fx: PipelineEffect[], request: Admission, jobs: Job[], ops: SeqOp[], history: { keep: number; tokens: number[] } | null): void {
  const session = request.req.sessionId;
  c.requests.set(request.req.requestId, request);
  c.jobs.push(...jobs);
  const prepare = ops.length > 0 || session !== '';
  for (const j of jobs) j.held = prepare;
  // Admitted to be handed off: held after its first sample (disaggregation, pipeline-steps.ts).
  // Its positions are copied as the stages hold them: a shared prefix only once its copy is made.
  if (c.handOffs.delete(request.req.requestId)) {
    for (const j of jobs) {
      j.handOff = true;
      if (prepare) j.done = 0;
    }
    fx.push({ type: 'prefilling', key: session || requestKey(request.req.requestId) });
  }
  if (prepare) fx.push({ type: 'prepare', requestId: request.req.requestId, ops, claim: session, history });
}

/** A request's sequences are ready (`session` claimed at `epoch`; '' and 0 without one): its jobs take steps. */
export function prepared(c: PipelineCore, requestId: string, session: string, epoch: number): void {
  const r = session ? c.room.residents.get(session) : undefined;
  if (r) r.epoch = epoch;
  const request = c.requests.get(requestId);
  if (!request) return;
  request.restore = null;
  if (session) request.epoch = epoch;
  // (A migration that holds the session meanwhile keeps it held.) What was loaded is held now.
  for (const j of request.jobs) {
    j.held = c.holding.has(j.sessionId);
    j.done = Math.max(j.done, j.pos0);
  }
}

/**
 * A request's sequences could not be made ready: its jobs fail; but a session the tiers did not
 * give back (a state forgotten or damaged there) is prefilled again from its history instead.
 */
export function prepareFailed(c: PipelineCore, fx: PipelineEffect[], requestId: string, code: string, message: string): void {
  const request = c.requests.get(requestId);
  if (!request) return;
  const saved = request.restore;
  if (saved) {
    request.restore = null;
    const j = request.jobs[0]!;
    const kept = request.cached;
    fx.push({ type: 'log', level: 'info', message: 'a session or prefix could not be restored from the tiers: prefilling it again', fields: { request: requestId, session: j.sessionId, code, message } });
    // A prefix's lineage covers the whole prompt from position 0: the job now computes it all
    // (and is still handed off after its first token, if it was to be).
    const { grown, handOff } = j;
    rebuildJob(j, saved.tokens.slice(0, j.pos0));
    j.grown = grown;
    j.handOff = handOff;
    j.held = true;
    request.cached = 0;
    const r = j.sessionId ? c.room.residents.get(j.sessionId) : undefined;
    if (r) r.tokens = [];
    fx.push({ type: 'prepare', requestId, ops: [seqOp(SeqOpKind.REMOVE, j.seq)], claim: j.sessionId, history: j.sessionId ? { keep: kept, tokens: request.req.prompt.slice(kept) } : null });
    return;
  }
  for (const j of request.jobs) {
    if (!c.jobs.includes(j)) continue;
    jobTransition(j, { type: 'failed', code, message });
    j.held = false;
  }
}
