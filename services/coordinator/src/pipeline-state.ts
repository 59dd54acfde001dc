// The state of one pipeline's core (pipeline-core.ts): its jobs and the requests they answer,
// the queue, the room (seq-room.ts), the micro-batches in flight and the sessions a migration
// moves; the effects the core asks of its runtime; and the read-only questions the coordinator
// asks of it. Pure: no clock (the time comes with each message), no I/O.
import type { GenerateReply, GenerateRequest, SeqOp, StepEntry, StepResult } from '@strata/wire';
import type { PlannedEntry } from './batcher.ts';
import type { PipelineView } from './cluster.ts';
import { ownCells, type Job } from './job.ts';
import { eventsTo, failureEvents, type ClientEvent } from './replies.ts';
import { SeqRoom, type Running } from './seq-room.ts';
import type { CostBook, StepWork } from './step-cost.ts';
import type { StepTraceEntry } from './telemetry.ts';

/** The policy of a pipeline's core: how it batches, admits and judges its steps. */
export interface PipelineOptions {
  /** prompt tokens per micro-batch at most */
  prefillChunk: number;
  /** a step is never stuck sooner than this, nor while its cost is unknown (milliseconds) */
  stepDeadlineFloorMs: number;
  /** a step is stuck past this many times its predicted cost */
  stepDeadlineMargin: number;
  /** prompt tokens per micro-batch are cut to keep its predicted time within this (ms; 0: off) */
  stepBudgetMs: number;
  /** tokens a request without max_tokens may generate (cells reserved for it) */
  defaultMaxTokens: number;
  /** requests queued at most */
  maxQueue: number;
  /** cells the queued requests may reserve at most, in multiples of the pipeline's cells */
  queueFactor: number;
  /**
   * a request in the step that took its pipeline down (stuck past its deadline, or in flight on
   * a worker that died) this many times is failed with `repeated_failure` instead of rebuilt again
   */
  maxRequestFailures: number;
  /** every request reuses the longest cached prefix of its prompt in its scope (prefix-tree.ts) */
  prefixCache: boolean;
  /**
   * an idle session evicted for new work is saved to its workers' tiers (host memory, disk) and
   * restored from there when it is used again, instead of re-prefilled
   */
  tiers: boolean;
  /**
   * overlap steps: while a decoding step computes, the next one is planned and sent; its entries
   * take the samples of the step they follow on the stages (the last stage hands them to the
   * first, a ring), not through this coordinator
   */
  overlap: boolean;
  /**
   * decode bursts on one-stage pipelines (decode-burst.ts): when every job decodes and nothing
   * waits, a step decodes several tokens each, lasting about this long (ms; 0 or absent: off)
   */
  decodeBurstMs?: number;
}

/** An accepted request on this pipeline and its jobs (one per choice). */
export interface Admission {
  req: GenerateRequest;
  jobs: Job[];
  /** prompt tokens its session's cells already held */
  cached: number;
  /** its session's cells come back from the tiers under this key (null: they do not) */
  restore?: Offloaded | null;
  /** its session's ownership epoch in Redis (0: not claimed yet, or no session) */
  epoch: number;
  /** jobs not yet retired */
  live: number;
  /** pipelines it took down: it was in the step that stalled, or in flight when a worker died */
  failures: number;
  /** its prompt was counted where it was prefilled (it was handed to this pipeline to decode) */
  promptCounted?: boolean;
}

/** Which requests a pipeline going down is put on: those of the stuck oldest step, of every step in flight, or none. */
export type Blame = 'stuck' | 'inflight' | 'none';

/** A request whose pipeline went down, with the jobs to rebuild by re-prefill elsewhere. */
export interface Rebuild {
  request: Admission;
  jobs: Job[];
}

/** A session handed over by a migration's source, for its target to adopt. */
export interface MovedSession {
  /** its running job, or null when it was idle */
  job: Job | null;
  request: Admission | null;
  /** what its sequence holds, positions 0.. */
  tokens: number[];
}

/** A session evicted to its workers' tiers: what its sequence held, and the key it is kept under. */
export interface Offloaded {
  tokens: number[];
  key: string;
  epoch: number;
  lastUsedMs: number;
}

/** A cached prefix evicted to its workers' tiers: its scope, its path's tokens, the cells its state holds. */
export interface SavedPrefix {
  scope: string;
  tokens: number[];
  /** positions the saved sequence holds (its path, and what its request generated after it) */
  cells: number;
  key: string;
}

/** A micro-batch sent and not yet answered. */
export interface InFlight {
  entries: PlannedEntry[];
  work: StepWork;
  sentMs: number;
  /** the step whose samples its chained entries take (null: none) */
  follows: bigint | null;
  /** the step in flight that follows this one (null: none) */
  follower: bigint | null;
  /** evaluations the stage runs for it (a decode burst; 1: a plain step) */
  burst: number;
}

/** What the core asks its runtime to do, in this order. */
export type PipelineEffect =
  /** the answer to an admit or resume message */
  | { type: 'reply'; reply: GenerateReply }
  /** empty these sequences on every stage, asking again until the stages answer; then send 'emptied' */
  | { type: 'empty'; seqs: number[] }
  /** send a micro-batch to the first stage */
  | { type: 'send_step'; stepId: bigint; entries: StepEntry[]; tokens: number[]; trace: StepTraceEntry[]; follows: bigint; ring: boolean; burst: number }
  /**
   * make a request's sequences ready: run `ops` on every stage, then claim `claim` (a session, '' for
   * none) in Redis and, with `history`, write its history there; then send 'prepared' (or 'prepare_failed')
   */
  | { type: 'prepare'; requestId: string; ops: SeqOp[]; claim: string; history: { keep: number; tokens: number[] } | null }
  /** empty a sequence on every stage; then send 'dropped' */
  | { type: 'drop_seq'; seq: number }
  /** copy a job's prompt so far into a cache sequence (`ops` on every stage: prefix-checkpoint.ts); then send 'checkpointed' */
  | { type: 'checkpoint'; requestId: string; index: number; seq: number; ops: SeqOp[] }
  /** copy a request's first choice's prompt into its other choices' sequences (`ops` on every stage: choice-fork.ts); then send 'forked' */
  | { type: 'fork'; requestId: string; at: number; ops: SeqOp[] }
  /**
   * save a session's sequence ('' for a cached prefix's) to every stage's tiers under `key` (sent
   * before any later operation on the sequence: its emptying follows); then send 'offloaded'
   * (whether every stage saved it)
   */
  | { type: 'offload'; seq: number; session: string; key: string }
  /** forget what every stage's tiers keep under `key` */
  | { type: 'forget'; key: string }
  /** drop a cache sequence's positions from `keepTo` on, on every stage; then send 'trimmed' */
  | { type: 'trim_seq'; seq: number; keepTo: number }
  /** write a session's sampled tokens at position `at` of its history in Redis, fenced by `epoch` */
  | { type: 'write_history'; session: string; epoch: number; at: number; tokens: number[] }
  /**
   * publish an event to a request's gateway (`counted`: its prompt was counted where it was
   * prefilled; `batched`: `subject` is the gateway's, where a step's events go together in one
   * GenerateEvents)
   */
  | { type: 'event'; subject: string; batched: boolean; event: ClientEvent; counted?: boolean }
  /** a request is over here (its span ends) */
  | { type: 'request_ended'; req: GenerateRequest; error?: { code: string; message: string } }
  /** a migration's hold of this session is complete: none of its steps is in flight */
  | { type: 'held'; session: string }
  /**
   * a request admitted to be handed off starts: its prompt's KV may be copied to a decode
   * pipeline as the stages compute it (`key`: its session, or requestKey of a one-off request)
   */
  | { type: 'prefilling'; key: string }
  /** that request has its first token, and is held with nothing in flight: it may move now */
  | { type: 'prefilled'; key: string }
  /** the answer to 'reserve': a sequence for a session moving in, or null */
  | { type: 'reserved'; seq: number | null }
  /** the answer to 'hand_over' */
  | { type: 'handed_over'; moved: MovedSession }
  /** a request of a pipeline that went down, to rebuild on another */
  | { type: 'orphan'; rebuild: Rebuild }
  /** the oldest step is past its deadline: the pipeline must reset */
  | { type: 'stalled'; why: string }
  | { type: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; message: string; fields: Record<string, unknown> };

/** The state of a pipeline's core. The core's functions change it in place. */
export interface PipelineCore {
  readonly view: PipelineView;
  readonly options: PipelineOptions;
  /** what steps cost each stage (shared with later cores of this pipeline) */
  readonly costs: CostBook;
  /** worker ids of the stages, in order */
  readonly route: readonly string[];
  /** tokens in a micro-batch at most */
  readonly maxBatch: number;
  /** positions one sequence may hold: the model's training context, within the stages' cells */
  readonly context: number;
  /**
   * a stage keeps windowed layers' K/V in a cache of their own (StageInfo.kvSwaCells: a small
   * one, or an all-windowed stage's only one), whose cells no window sees any batch may take
   * over: a cached sequence goes on only from its
   * end (a session's next turn that extends it), and the prefix cache shares only where a cache
   * sequence ends (PrefixTreeOptions.endsOnly)
   */
  readonly exactResume: boolean;
  /** the stages keep one KV stream per sequence (StageInfo.kv_streams): micro-batches take decoding jobs in sequence order */
  readonly streams: boolean;
  /** every sequence's cells together: capacity, the fewest cells of a stage */
  readonly room: SeqRoom;
  /** running jobs, in arrival order */
  readonly jobs: Job[];
  /** requests with running jobs, by request id */
  readonly requests: Map<string, Admission>;
  /** accepted requests waiting for sequences or cells, in arrival order */
  readonly waiting: GenerateRequest[];
  /** requests from a pipeline that went down, waiting to be rebuilt here */
  readonly rebuilds: Rebuild[];
  /** micro-batches in flight by step id, oldest first */
  readonly inflight: Map<bigint, InFlight>;
  /** results of steps that came back before the step they follow, by that step's id */
  readonly early: Map<bigint, StepResult>;
  /** sessions moving off this pipeline: they take no new request */
  readonly moving: Set<string>;
  /** sessions a migration holds: their jobs take no step */
  readonly holding: Set<string>;
  /** held sessions whose 'held' is not yet said (a step of theirs is in flight) */
  readonly holdPending: Set<string>;
  /** sessions being saved to the tiers (they take no request until saved) and saved there */
  readonly offloading: Map<string, Offloaded>;
  readonly offloaded: Map<string, Offloaded>;
  /** cached prefixes being saved to the tiers, and saved there (oldest first), by tier key */
  readonly savingPrefixes: Map<string, SavedPrefix>;
  readonly savedPrefixes: Map<string, SavedPrefix>;
  /** requests to hold after their first sample, for a decode pipeline to take (disaggregation) */
  readonly handOffs: Set<string>;
  /** keys of requests held for a hand-off whose 'prefilled' is not yet said */
  readonly prefilled: Set<string>;
  /** the next tier key's number */
  nextKey: number;
  /** the next step's id */
  nextStep: bigint;
  /** the pipeline went away: the core does nothing more */
  down: boolean;
  /** every sequence of the stages has been emptied: work may start */
  clean: boolean;
  /** when the latest step result came back (the step after it has been the oldest since) */
  lastResultMs: number;
}

/** A stage's KV cells, every stream together. */
export function stageCells(s: { kvCells: number; kvStreams: number }): number {
  return s.kvCells * Math.max(1, s.kvStreams);
}

/** micro-batches kept in flight: one per stage, so every stage has work */
export function depth(c: PipelineCore): number {
  return c.view.stages.length;
}

/** A new core for `view`, and what it asks first: empty every sequence of the stages. */
export function openPipeline(view: PipelineView, options: PipelineOptions, costs: CostBook, firstStepId: bigint): { core: PipelineCore; effects: PipelineEffect[] } {
  const nSeqMax = Math.min(...view.stages.map((s) => s.nSeqMax));
  // (StageInfo.kvCells is per stream: with one stream per sequence, the most one sequence holds)
  const capacity = Math.min(...view.stages.map(stageCells));
  const exactResume = view.stages.some((s) => s.kvSwaCells > 0);
  const core: PipelineCore = {
    view, options, costs, exactResume, streams: view.stages.some((s) => s.kvStreams > 1), route: view.stages.map((s) => s.workerId), maxBatch: Math.min(...view.stages.map((s) => s.maxBatch)),
    context: Math.min(...view.stages.map((s) => s.kvCells), view.stages[0]!.nCtxTrain), room: new SeqRoom(nSeqMax, capacity, { endsOnly: exactResume }), jobs: [], requests: new Map(), waiting: [], rebuilds: [], inflight: new Map(), early: new Map(),
    moving: new Set(), holding: new Set(), holdPending: new Set(), offloading: new Map(), offloaded: new Map(), savingPrefixes: new Map(), savedPrefixes: new Map(), handOffs: new Set(), prefilled: new Set(), nextKey: 1,
    nextStep: firstStepId, down: false, clean: false, lastResultMs: 0,
  };
  return { core, effects: [{ type: 'empty', seqs: core.room.allSeqs() }] };
}

/**
 * What a migration or a hand-off moves a one-off request (no session) by: its id behind a '#',
 * which no session key has.
 */
export function requestKey(requestId: string): string {
  return `#${requestId}`;
}

/** Whether `key` names a one-off request (requestKey), not a session. */
export function isRequestKey(key: string): boolean {
  return key.startsWith('#');
}

/** The running job of `key`: a session's, or a one-off request's (requestKey), if any. */
export function jobOf(c: PipelineCore, key: string): Job | undefined {
  if (isRequestKey(key)) return c.jobs.find((j) => !j.sessionId && j.requestId === key.slice(1));
  return c.jobs.find((j) => j.sessionId === key);
}

/** What running jobs reserve (seq-room.ts). */
export function running(c: PipelineCore): Running {
  let cells = 0;
  const sessions = new Set<string>();
  for (const j of c.jobs) {
    cells += ownCells(j);
    if (j.sessionId) sessions.add(j.sessionId);
  }
  return { cells, sessions };
}

/** Ends every choice of a request that never started with an error. */
export function failRequest(fx: PipelineEffect[], req: GenerateRequest, code: string, message: string): void {
  failChoices(fx, req, Array.from({ length: Math.max(1, req.n) }, (_, index) => ({ index, offset: 0 })), code, message);
}

/** Ends choices of a request with an error event each; `offset`: tokens the choice already sent. */
export function failChoices(fx: PipelineEffect[], req: GenerateRequest, choices: readonly { index: number; offset: number }[], code: string, message: string): void {
  for (const event of failureEvents(req, choices, code, message)) fx.push({ type: 'event', ...eventsTo(req), event });
  fx.push({ type: 'request_ended', req, error: { code, message } });
}

/** Empties `seq` on the stages and frees it; `cells` (what it may still hold) count as held until then. */
export function dropSeq(c: PipelineCore, fx: PipelineEffect[], seq: number, cells: number): void {
  if (c.down) return;
  c.room.release(seq, cells);
  fx.push({ type: 'drop_seq', seq });
}

/** requests running or waiting */
export function load(c: PipelineCore): number {
  return c.requests.size + c.waiting.length + c.rebuilds.length;
}

/** requests waiting for sequences or cells */
export function queued(c: PipelineCore): number {
  return c.waiting.length + c.rebuilds.length;
}

/** one-off requests (no session) running or waiting */
export function oneOff(c: PipelineCore): number {
  return c.jobs.filter((j) => !j.sessionId).length + c.waiting.filter((r) => !r.sessionId).length;
}

/** Sessions that live here (resident or running). */
export function sessionIds(c: PipelineCore): string[] {
  return [...new Set([...c.room.residents.keys(), ...c.jobs.filter((j) => j.sessionId).map((j) => j.sessionId)])];
}

/** Where a session stands here: its sequence, the positions every stage holds, its running job. */
export function sessionAt(c: PipelineCore, id: string): { seq: number; done: number; job: Job | null } | null {
  const job = jobOf(c, id);
  if (job) return { seq: job.seq, done: job.done, job };
  const r = c.room.residents.get(id);
  return r ? { seq: r.seq, done: r.tokens.length, job: null } : null;
}

/** Whether the request is here: running, queued or waiting to be rebuilt. */
export function knows(c: PipelineCore, requestId: string): boolean {
  return c.requests.has(requestId) || c.waiting.some((r) => r.requestId === requestId) || c.rebuilds.some((r) => r.request.req.requestId === requestId);
}

/** A session as operators see it: where it lives on this pipeline and what it holds. */
export interface SessionView {
  id: string;
  /** sequence id on every stage */
  seq: number;
  /** positions [0, positions) every stage holds */
  positions: number;
  /** answering a request now */
  busy: boolean;
  /** moving off this pipeline now */
  moving: boolean;
  /** milliseconds since the epoch */
  lastUsedMs: number;
  /** ownership epoch in Redis */
  epoch: number;
  /** saved to the workers' tiers: no cells on the stages until its next turn */
  saved: boolean;
}

/** Snapshot of the sessions that live here, for operators (strata sessions, the dashboard). */
export function sessionViews(c: PipelineCore): SessionView[] {
  const here = sessionIds(c);
  const live = new Set(here);
  const views = here.map((id): SessionView => {
    const job = jobOf(c, id);
    const r = c.room.residents.get(id);
    return {
      id, seq: job?.seq ?? r?.seq ?? -1, positions: job ? job.done : r?.tokens.length ?? 0, busy: job !== undefined,
      moving: c.moving.has(id), lastUsedMs: r?.lastUsedMs ?? 0, epoch: job ? c.requests.get(job.requestId)?.epoch ?? r?.epoch ?? 0 : r?.epoch ?? 0, saved: false,
    };
  });
  for (const saved of [c.offloading, c.offloaded]) {
    for (const [id, o] of saved) {
      if (!live.has(id)) views.push({ id, seq: -1, positions: o.tokens.length, busy: false, moving: false, lastUsedMs: o.lastUsedMs, epoch: o.epoch, saved: true });
    }
  }
  return views;
}

/** Whether the hold of `session` is complete: none of its steps is in flight. */
export function holdDone(c: PipelineCore, session: string): boolean {
  const job = jobOf(c, session);
  return !job || job.inflight === 0;
}

/** Says 'held' for every pending hold that is complete, and 'prefilled' for every hand-off ready to go. */
export function settleHolds(c: PipelineCore, fx: PipelineEffect[]): void {
  for (const s of c.holdPending) {
    if (!holdDone(c, s)) continue;
    c.holdPending.delete(s);
    fx.push({ type: 'held', session: s });
  }
  for (const key of c.prefilled) {
    if (!holdDone(c, key)) continue;
    c.prefilled.delete(key);
    // (A job that ended meanwhile, cancelled say, has nothing to hand off.)
    if (jobOf(c, key)?.finish === null) fx.push({ type: 'prefilled', key });
  }
}

