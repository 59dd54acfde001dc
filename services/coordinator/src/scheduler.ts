// The scheduler actor of one pipeline: it owns the pipeline's sequence ids and resident sessions,
// admits requests, plans micro-batches (batcher.ts) and keeps up to one per stage in flight,
// turns step results into job transitions (session.ts) and client events, and cleans up after
// each job.
import type { Logger } from '@strata/log';
import {
  FinishReason, GenerateEventSchema, SeqOpKind, SeqOpReplySchema, SeqOpRequestSchema, encode, encodeStageInput, request,
  subjects, type GenerateReply, type GenerateRequest, type SampledToken, type SeqOp, type StepEntry, type StepResult,
} from '@strata/wire';
import type { NatsConnection } from 'nats';
import { applyPlan, decodeCap, planMicroBatch, type PlannedEntry } from './batcher.ts';
import type { PipelineView } from './cluster.ts';
import type { Placeable } from './placement.ts';
import { CoordinatorError } from './errors.ts';
import { cachedTokens, cellsNeeded, jobTransition, newJob, rebuildJob, type Job, type JobEffect } from './session.ts';
import { publishFailure, refuse, seqOp } from './replies.ts';
import type { SessionStore } from './session-store.ts';
import { planRoom, type Resident } from './seq-room.ts';
import { countTokens, endRequest, endStep, observeQueue, startStep, type StepTrace } from './telemetry.ts';
import { stepDeadlineMs, tokensWithin, workOf, type CostBook, type StepWork } from './step-cost.ts';
import { headerBytes } from '@strata/telemetry';

/** Settings of a scheduler. */
export interface SchedulerOptions {
  /** prompt tokens per micro-batch at most */
  prefillChunk: number;
  /** a step is never stuck sooner than this, nor while its cost is unknown (milliseconds) */
  stepDeadlineFloorMs: number;
  /** a step is stuck past this many times its predicted cost */
  stepDeadlineMargin: number;
  /** prompt tokens per micro-batch are cut to keep its predicted time within this (ms; 0: off) */
  stepBudgetMs: number;
  /** a sequence-operation request unanswered for this long fails (milliseconds) */
  seqOpTimeoutMs: number;
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
}

/** What a scheduler needs from the coordinator around it. */
export interface SchedulerDeps {
  nc: NatsConnection;
  /** subject the last stage answers to */
  resultSubject: string;
  store: SessionStore;
  log: Logger;
  options: SchedulerOptions;
  /** the coordinator's leader term, on every step and sequence operation (stages fence by it) */
  term: number;
  /** the proof of fence (term, generation) that goes with it (empty when terms are not signed) */
  proof: (term: bigint, generation: bigint) => Uint8Array;
  /** what steps cost each stage, learned from results (kept across this pipeline's resets) */
  costs: CostBook;
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
}

/** A request on this pipeline and its jobs (one per choice). */
export interface Request {
  req: GenerateRequest;
  jobs: Job[];
  cached: number;
  epoch: number;
  /** jobs not yet retired */
  live: number;
  /** pipelines it took down: it was in the step that stalled, or in flight when a worker died */
  failures: number;
}

/** Which requests a pipeline going down is put on: those of the stuck oldest step, of every step in flight, or none. */
export type Blame = 'stuck' | 'inflight' | 'none';

/** A request whose pipeline went down, with the jobs to rebuild by re-prefill elsewhere. */
export interface Rebuild {
  request: Request;
  jobs: Job[];
}

interface InFlight {
  entries: PlannedEntry[];
  work: StepWork;
  sentMs: number;
  /** its span, ended when its result comes back or it is lost */
  trace: StepTrace;
}

let lastGeneration = 0n;

/**
 * A generation for a new scheduler: above every earlier one of this process (and, from the
 * clock, of most others). Stages drop steps and sequence operations of an older generation of
 * the same term, so a reset pipeline never runs what its previous scheduler had sent.
 */
function nextGeneration(): bigint {
  const g = BigInt(Date.now()) << 12n;
  lastGeneration = g > lastGeneration ? g : lastGeneration + 1n;
  return lastGeneration;
}

/** Shortest common prefix length of two token lists. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** The scheduler of one pipeline. */
export class PipelineScheduler implements Placeable {
  readonly view: PipelineView;
  /** this scheduler's generation, on each of its steps and sequence operations */
  readonly generation = nextGeneration();
  readonly #d: SchedulerDeps;
  readonly #log: Logger;
  readonly #free: number[];
  readonly #residents = new Map<string, Resident>();
  readonly #jobs: Job[] = [];
  readonly #requests = new Map<string, Request>();
  readonly #waiting: GenerateRequest[] = [];
  /** requests from a pipeline that went down, waiting to be rebuilt here */
  readonly #rebuilds: Rebuild[] = [];
  readonly #inflight = new Map<bigint, InFlight>();
  /** sessions moving off this pipeline: they take no new request */
  readonly #migrating = new Set<string>();
  /** jobs on hold, waiting for their last step to come back */
  readonly #holdWaiters = new Map<Job, () => void>();
  /** sequences reserved for sessions moving here, and their cells */
  readonly #incoming = new Map<number, number>();
  /** sequences being emptied on the stages, and the cells they still hold meanwhile */
  readonly #releasing = new Map<number, number>();
  /** sequences whose emptying failed: out of use, their cells counted as held until the pipeline resets */
  readonly #stranded = new Map<number, number>();
  readonly #maxBatch: number;
  readonly #nSeqMax: number;
  /** cells every stage can hold */
  readonly capacity: number;
  #nextStep = BigInt(Date.now()) << 16n;
  /** stops reporting this pipeline's queue depth */
  readonly #unobserve: () => void;
  #down = false;
  /** when the latest step result came back (the step after it has been the oldest since) */
  #lastResultMs = 0;
  /** every sequence of the stages has been emptied */
  #clean = false;

  constructor(view: PipelineView, deps: SchedulerDeps) {
    this.view = view;
    this.#d = deps;
    this.#log = deps.log.child({ pipeline: view.id });
    this.#maxBatch = Math.min(...view.stages.map((s) => s.maxBatch));
    this.#nSeqMax = Math.min(...view.stages.map((s) => s.nSeqMax));
    this.capacity = Math.min(...view.stages.map((s) => s.kvCells), view.stages[0]!.nCtxTrain);
    this.#free = Array.from({ length: this.#nSeqMax }, (_, i) => this.#nSeqMax - 1 - i);
    this.#unobserve = observeQueue(view.id, () => this.queued);
    void this.#empty();
  }

  /**
   * A new pipeline knows nothing of what its stages hold (a restarted coordinator, a stage that
   * served another pipeline): every sequence is emptied before the first request. A stage that
   * cannot answer yet (reconnecting to NATS, say) is asked again until it does or the pipeline
   * goes down; requests wait meanwhile.
   */
  async #empty(): Promise<void> {
    for (let attempt = 0; !this.#down; attempt++) {
      try {
        const posMax = await this.#seqOps(this.#free.map((seq) => seqOp(SeqOpKind.REMOVE, seq)));
        // Every stage and this scheduler agree before the first step: nothing held anywhere.
        const held = posMax.findIndex((stage) => stage.some((p) => p >= 0));
        if (held >= 0) throw new CoordinatorError('stage_failed', `worker ${this.view.stages[held]!.workerId} still holds positions after emptying every sequence`);
        this.#clean = true;
        this.#startWaiting();
        return;
      } catch (err) {
        if (attempt === 0) this.#log.warn('the stages of a new pipeline could not be emptied yet: retrying', { err });
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  }

  /** the pipeline's id */
  get id(): string {
    return this.view.id;
  }

  /** the model it serves */
  get modelId(): string {
    return this.view.modelId;
  }

  /** the model's fingerprint */
  get fingerprint(): string {
    return this.view.fingerprint;
  }

  /** micro-batches kept in flight: one per stage, so every stage has work */
  get depth(): number {
    return this.view.stages.length;
  }

  /** requests running or waiting */
  get load(): number {
    return this.#requests.size + this.#waiting.length + this.#rebuilds.length;
  }

  /** sequence ids in use */
  get seqsUsed(): number {
    return this.#nSeqMax - this.#free.length;
  }

  /** requests waiting for sequences or cells */
  get queued(): number {
    return this.#waiting.length + this.#rebuilds.length;
  }

  /** sessions resident here */
  get sessions(): number {
    return this.#residents.size;
  }

  /** takes no new request and no session (a drain mark holds one of its workers: drains.ts) */
  draining = false;

  /** Sessions that live here (resident or running). */
  sessionIds(): string[] {
    return [...new Set([...this.#residents.keys(), ...this.#jobs.filter((j) => j.sessionId).map((j) => j.sessionId)])];
  }

  /** Read-only snapshot of the sessions that live here, for operators (strata sessions, the dashboard). */
  sessionViews(): SessionView[] {
    return this.sessionIds().map((id) => {
      const job = this.#jobs.find((j) => j.sessionId === id);
      const r = this.#residents.get(id);
      return {
        id, seq: job?.seq ?? r?.seq ?? -1, positions: job ? job.done : r?.tokens.length ?? 0, busy: job !== undefined,
        moving: this.#migrating.has(id), lastUsedMs: r?.lastUsedMs ?? 0, epoch: job ? this.#requests.get(job.requestId)?.epoch ?? r?.epoch ?? 0 : r?.epoch ?? 0,
      };
    });
  }

  /** one-off requests running or waiting here */
  get oneOff(): number {
    return this.#jobs.filter((j) => !j.sessionId).length + this.#waiting.filter((r) => !r.sessionId).length;
  }

  /** Whether `session` holds cells here. */
  holds(session: string): boolean {
    return this.#residents.has(session);
  }

  /**
   * The refusal of a request this pipeline can never run (now or ever), or null. Each choice holds
   * its own copy of the prompt and its tokens, so all of them must fit the pipeline's cells at once.
   */
  #neverRuns(req: GenerateRequest): GenerateReply | null {
    const n = Math.max(1, req.n);
    if (n > this.#nSeqMax) return refuse('bad_request', `n=${n} choices exceed the ${this.#nSeqMax} sequences of a pipeline`);
    const perChoice = req.prompt.length + Math.max(1, this.#maxTokens(req));
    if (n * perChoice > this.capacity) {
      const what = `${req.prompt.length} prompt tokens + ${Math.max(1, this.#maxTokens(req))} to generate`;
      return refuse('context_length_exceeded', n === 1 ? `${what} exceed the context of ${this.capacity}` : `${n} choices of ${what} each exceed the ${this.capacity} cells of a pipeline`);
    }
    if (this.#down) return refuse('pipeline_down', `pipeline ${this.view.id} is down`);
    return null;
  }

  /** Tokens a request may generate: its max_tokens, else the default within its choices' share of the context. */
  #maxTokens(req: GenerateRequest): number {
    return req.maxTokens > 0 ? req.maxTokens : Math.min(this.#d.options.defaultMaxTokens, Math.floor(this.capacity / Math.max(1, req.n)) - req.prompt.length);
  }

  /**
   * Admits a request: refused at once (it can never run here, or its session is busy), started,
   * or queued until sequences and cells free up. Accepted requests report failures as events.
   */
  admit(req: GenerateRequest): GenerateReply {
    const never = this.#neverRuns(req);
    if (never) return never;
    // Backpressure: the queue holds at most maxQueue requests and queueFactor × the pipeline's
    // cells of reservations; beyond that a caller is told to come back (429) instead of waiting.
    const queuedCells = this.#waiting.reduce((c, r) => c + Math.max(1, r.n) * (r.prompt.length + (r.maxTokens || this.#d.options.defaultMaxTokens)), 0);
    if (this.#waiting.length >= this.#d.options.maxQueue || queuedCells > this.#d.options.queueFactor * this.capacity) {
      return refuse('overloaded', `pipeline ${this.view.id} has ${this.#waiting.length} requests waiting for ${queuedCells} cells`);
    }
    if (this.#waiting.length === 0 && this.#clean) {
      const r = this.#tryStart(req);
      if (r === 'wait') this.#waiting.push(req);
      else if (r !== 'started') return r;
    } else {
      this.#waiting.push(req);
    }
    return { $typeName: 'strata.v1.GenerateReply', accepted: true, cachedTokens: 0, pipelineId: this.view.id, coordinatorId: '', term: 0n };
  }

  /**
   * Takes over a request that a previous leader accepted and lost: each choice goes on from the
   * tokens its client has seen, rebuilt by re-prefill like the requests of a pipeline that went
   * down (so it queues as a rebuild, never refused for load); choices that ended stay ended.
   */
  resume(req: GenerateRequest): GenerateReply {
    const never = this.#neverRuns(req);
    if (never) return never;
    const n = Math.max(1, req.n);
    // The session's earlier attempt (cancelled by the gateway) may still have a step in flight.
    if (req.sessionId && (this.#residents.get(req.sessionId)?.busy || this.#migrating.has(req.sessionId))) return refuse('session_busy', `session ${req.sessionId} is still answering an earlier attempt`);
    // Its idle cells here (from that attempt) go: the rebuild prefills everything again.
    const idle = req.sessionId ? this.#residents.get(req.sessionId) : undefined;
    if (idle) {
      this.#residents.delete(req.sessionId);
      void this.#dropSeq(idle.seq, idle.tokens.length);
    }
    const maxTokens = this.#maxTokens(req);
    const progress = new Map(req.resume.map((p) => [p.index, p]));
    const jobs = Array.from({ length: n }, (_, index) => {
      const j = newJob({
        requestId: req.requestId, index, sessionId: req.sessionId, seq: -1, prompt: req.prompt, pos0: 0,
        sampling: { ...req.sampling!, seed: (req.sampling?.seed ?? 0) + index }, maxTokens,
      });
      const p = progress.get(index);
      j.generated = (p?.tokens ?? []).map((token) => ({ $typeName: 'strata.v1.SampledToken' as const, seq: 0, token, eog: false, logprob: 0, top: [] }));
      rebuildJob(j, []);
      if (p?.ended) j.finish = FinishReason.STOP;
      return j;
    });
    const live = jobs.filter((j) => j.finish === null);
    if (live.length === 0) return refuse('bad_request', 'every choice of the request has ended: nothing to resume');
    this.#rebuilds.push({ request: { req, jobs, cached: 0, epoch: 0, live: live.length, failures: 0 }, jobs: live });
    this.#startWaiting();
    return { $typeName: 'strata.v1.GenerateReply', accepted: true, cachedTokens: 0, pipelineId: this.view.id, coordinatorId: '', term: 0n };
  }

  /** Starts queued requests, in order, while they fit. */
  #startWaiting(): void {
    while (this.#rebuilds.length > 0 && !this.#down && this.#clean) {
      if (!this.#tryRebuild(this.#rebuilds[0]!)) return;
      this.#rebuilds.shift();
    }
    while (this.#waiting.length > 0 && !this.#down && this.#clean) {
      const req = this.#waiting[0]!;
      const r = this.#tryStart(req);
      if (r === 'wait') return;
      this.#waiting.shift();
      if (r !== 'started') this.#failRequest(req, r.error!.code, r.error!.message);
    }
  }

  /** Tells the gateway every choice of a request that never started failed. */
  #failRequest(req: GenerateRequest, code: string, message: string): void {
    publishFailure(this.#d.nc, req, Array.from({ length: Math.max(1, req.n) }, (_, index) => ({ index, offset: 0 })), code, message);
  }

  /**
   * Finds `seqs` sequence ids and room for `cells` more cells (plus `extra` cells about to be
   * freed), evicting idle sessions least recently used first (never `keep`); null, with nothing
   * evicted, when even evicting every idle session would not do. Evicted sequences handed out come
   * with the operations that empty them (to run before their first step); the others are emptied
   * and freed in the background.
   */
  #makeRoom(seqs: number, cells: number, keep = '', extra = 0): { seqs: number[]; ops: SeqOp[] } | null {
    const evict = planRoom({ free: this.#free.length, room: this.capacity - this.#reserved() + extra, residents: this.#residents, seqs, cells, keep });
    if (!evict) return null;
    for (const [id] of evict) this.#residents.delete(id);
    const out: number[] = [], ops: SeqOp[] = [];
    for (let i = 0; i < seqs; i++) {
      const e = evict.pop();
      if (e) ops.push(seqOp(SeqOpKind.REMOVE, e[1].seq));
      out.push(e ? e[1].seq : this.#free.pop()!);
    }
    // Their cells went to the new work: its first step reaches each stage after their removal.
    for (const [, r] of evict) void this.#dropSeq(r.seq, r.tokens.length, true);
    return { seqs: out, ops };
  }

  /**
   * Cells reserved: every running job's to its end, every session's without a running job (idle,
   * or held by a migration), sessions moving in, and sequences not yet emptied. A stage never
   * holds more, so no later admission, eviction or migration can starve a running job.
   */
  #reserved(): number {
    let n = 0;
    const running = new Set<string>();
    for (const j of this.#jobs) {
      n += cellsNeeded(j);
      if (j.sessionId) running.add(j.sessionId);
    }
    for (const [id, r] of this.#residents) if (!running.has(id)) n += r.tokens.length;
    for (const cells of [this.#incoming, this.#releasing, this.#stranded]) for (const c of cells.values()) n += c;
    return n;
  }

  /**
   * Starts `req` if sequences and cells allow, evicting idle sessions least recently used first;
   * 'wait' when they do not allow it yet, a refusal when they never will.
   */
  #tryStart(req: GenerateRequest): 'started' | 'wait' | GenerateReply {
    const n = Math.max(1, req.n);
    const resident = req.sessionId ? this.#residents.get(req.sessionId) : undefined;
    if (resident?.busy || this.#migrating.has(req.sessionId)) return refuse('session_busy', `session ${req.sessionId} is answering another request or moving`);
    const maxTokens = this.#maxTokens(req);
    let cached = 0;
    if (resident) {
      cached = commonPrefix(resident.tokens, req.prompt);
      // At least one prompt token must be evaluated to get the logits to sample from.
      if (cached === req.prompt.length) cached--;
    }
    const need = n * (maxTokens + req.prompt.length - cached);
    // The session's own cells past the common prefix are removed before it starts.
    const room = this.#makeRoom(resident ? 0 : n, need, req.sessionId, resident ? resident.tokens.length - cached : 0);
    if (!room) {
      // Cells come back when a job ends, a sequence is emptied or a migration settles; with none
      // of these under way (sequences whose emptying failed hold the rest) none will.
      const settling = this.#jobs.length + this.#releasing.size + this.#incoming.size + this.#migrating.size;
      if (settling === 0) return refuse('kv_full', `the pipeline cannot hold ${need} more cells now (${[...this.#stranded.values()].reduce((a, b) => a + b, 0)} are held by sequences that could not be emptied)`);
      return 'wait';
    }
    const { ops, seqs } = room;
    if (resident) {
      resident.busy = true;
      seqs.push(resident.seq);
      if (cached < resident.tokens.length) ops.push(seqOp(SeqOpKind.REMOVE, resident.seq, cached, -1));
    } else if (req.sessionId) {
      // The session is here from now on: a second request of it is busy, not a second copy.
      this.#residents.set(req.sessionId, { seq: seqs[0]!, tokens: [], lastUsedMs: Date.now(), busy: true, epoch: 0 });
    }
    const jobs = seqs.map((seq, index) => newJob({
      requestId: req.requestId, index, sessionId: req.sessionId, seq, prompt: req.prompt.slice(cached), pos0: cached,
      sampling: { ...req.sampling!, seed: (req.sampling?.seed ?? 0) + index }, maxTokens,
    }));
    this.#log.debug('start', { request: req.requestId, session: req.sessionId, seqs, cached, need, free: [...this.#free] });
    const request: Request = { req, jobs, cached, epoch: 0, live: jobs.length, failures: 0 };
    this.#requests.set(req.requestId, request);
    // The cells count as reserved now; tokens flow once the caches and Redis agree.
    for (const j of jobs) j.held = true;
    this.#jobs.push(...jobs);
    void this.#start(request, ops);
    return 'started';
  }

  async #start(request: Request, ops: SeqOp[]): Promise<void> {
    const { req, jobs, cached } = request;
    try {
      if (ops.length > 0) await this.#seqOps(ops);
      if (req.sessionId) {
        request.epoch = await this.#d.store.claim(req.sessionId, this.view.id);
        await this.#d.store.write(req.sessionId, request.epoch, cached, req.prompt.slice(cached));
        const r = this.#residents.get(req.sessionId);
        if (r) r.epoch = request.epoch;
      }
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'internal';
      for (const j of jobs) jobTransition(j, { type: 'failed', code, message: (err as Error).message });
    }
    for (const j of jobs) j.held = false;
    this.#retireFinished();
    this.#pump();
  }

  /**
   * Empties a sequence on every stage and frees its id. `cells` (what it may still hold) count as
   * reserved until then, unless `given` (the work that evicted it has them already; stages run its
   * steps after this removal, which was sent first). An id whose removal failed stays out of use,
   * its cells counted as held.
   */
  async #dropSeq(seq: number, cells: number, given = false): Promise<void> {
    if (this.#down) return;
    if (!given) this.#releasing.set(seq, cells);
    try {
      await this.#seqOps([seqOp(SeqOpKind.REMOVE, seq)]);
      this.#free.push(seq);
    } catch (err) {
      this.#log.error('a sequence could not be emptied; its id stays out of use', { seq, err });
      this.#stranded.set(seq, cells);
    }
    this.#releasing.delete(seq);
    this.#startWaiting();
  }

  /** Sends micro-batches while fewer than `depth` are in flight and some job is ready. */
  #pump(): void {
    while (!this.#down && this.#inflight.size < this.depth) {
      const active = this.#jobs.filter((j) => j.finish === null).length;
      const plan = planMicroBatch(this.#jobs, {
        maxBatch: this.#maxBatch, prefillChunk: this.#d.options.prefillChunk, decodeCap: decodeCap(active, this.depth),
        prefillWithin: this.#d.options.stepBudgetMs > 0 ? (f, p, c) => this.#prefillWithin(f, p, c) : undefined,
      });
      if (!plan) return;
      applyPlan(plan);
      this.#send(plan);
    }
  }

  /** The step budget: prompt tokens that keep a micro-batch's predicted time within it. */
  #prefillWithin(fixed: StepWork, pos0: number, cap: number): number {
    return tokensWithin((w) => this.#d.costs.predict(this.#route, w), this.#d.options.stepBudgetMs, fixed, pos0, cap);
  }

  /** worker ids of the stages, in order */
  get #route(): string[] {
    return this.view.stages.map((s) => s.workerId);
  }

  #send(plan: PlannedEntry[]): void {
    const stepId = this.#nextStep++;
    const entries: StepEntry[] = [];
    const tokens: number[] = [];
    for (const e of plan) {
      const j = e.job;
      const sampling = e.output && !j.samplerSent ? j.sampling : undefined;
      if (sampling) j.samplerSent = true;
      const replay = sampling ? j.replay : [];
      entries.push({ $typeName: 'strata.v1.StepEntry', seq: j.seq, nTokens: e.tokens.length, pos0: e.pos0, output: e.output, sampling, replay });
      tokens.push(...e.tokens);
    }
    const route = this.view.stages.map((s) => s.workerId);
    const trace = startStep(this.view.id, stepId, plan.map((e) => ({
      req: this.#requests.get(e.job.requestId)?.req, prefill: e.pos0 < e.job.pos0 + e.job.prompt.length, tokens: e.tokens.length,
    })));
    this.#inflight.set(stepId, { entries: plan, work: workOf(plan.map((e) => ({ tokens: e.tokens.length, pos0: e.pos0 }))), sentMs: Date.now(), trace });
    const header = {
      $typeName: 'strata.v1.StepHeader' as const, stepId, pipelineId: this.view.id, route, hop: 0,
      replySubject: this.#d.resultSubject, entries, tokens, traceparent: '', stageMs: [], term: BigInt(this.#d.term), generation: this.generation,
      fenceProof: this.#d.proof(BigInt(this.#d.term), this.generation),
    };
    // The trace-context headers count against NATS's max payload.
    for (const chunk of encodeStageInput(header, new Float32Array(0), (this.#d.nc.info?.max_payload ?? 1 << 20) - headerBytes(trace.headers))) {
      this.#d.nc.publish(subjects.workerStep(route[0]!), chunk, { headers: trace.headers });
    }
  }

  /** Takes the answer to one of this pipeline's steps. */
  onResult(r: StepResult): void {
    const f = this.#inflight.get(r.stepId);
    if (!f) return; // late: its jobs already failed on a timeout
    this.#inflight.delete(r.stepId);
    this.#lastResultMs = Date.now();
    if (!r.error && r.stageMs.length === this.view.stages.length) this.#d.costs.observe(this.#route, f.work, r.stageMs);
    endStep(f.trace, r.error);
    this.#log.debug('step', { step: r.stepId, rttMs: Date.now() - f.sentMs, stageMs: r.stageMs, entries: f.entries.length });
    const bySeq = new Map(r.tokens.map((t) => [t.seq, t]));
    for (const e of f.entries) {
      const j = e.job;
      j.inflight--;
      if (!r.error) j.done = e.pos0 + e.tokens.length;
      let fx: JobEffect[] = [];
      if (r.error) fx = jobTransition(j, { type: 'failed', code: r.error.code, message: r.error.message });
      else if (e.output) {
        const t = bySeq.get(j.seq);
        if (!t) fx = jobTransition(j, { type: 'failed', code: 'stage_failed', message: `step ${r.stepId} returned no token for seq ${j.seq}` });
        else if (t.error) fx = jobTransition(j, { type: 'failed', code: t.error.code, message: t.error.message });
        else fx = jobTransition(j, { type: 'sampled', token: t });
      }
      this.#effects(j, fx);
    }
    for (const [j, resolve] of this.#holdWaiters) {
      if (j.inflight === 0) {
        this.#holdWaiters.delete(j);
        resolve();
      }
    }
    this.#retireFinished();
    this.#pump();
  }

  #effects(j: Job, fx: JobEffect[]): void {
    const request = this.#requests.get(j.requestId);
    if (!request) return;
    for (const e of fx) {
      if (e.type !== 'emit') continue;
      this.#event(request, j, [e.token], FinishReason.UNSPECIFIED);
      countTokens(this.view.id, 1);
      // Written at its position (the history is the prompt, then the samples): a write that
      // Redis ran but could not acknowledge, resent after a reconnect, lands in the same place.
      const at = request.req.prompt.length + j.generated.length - 1;
      if (j.sessionId) void this.#d.store.write(j.sessionId, request.epoch, at, [e.token.token]).catch((err: unknown) => this.#log.warn('session history write failed', { session: j.sessionId, err }));
    }
  }

  #event(request: Request, j: Job, tokens: SampledToken[], finish: FinishReason): void {
    const error = j.error ? { $typeName: 'strata.v1.Error' as const, code: j.error.code, message: j.error.message, workerId: '' } : undefined;
    // The tokens already sent precede these: the job's samples minus the ones being sent now.
    const offset = j.generated.length - tokens.length;
    this.#d.nc.publish(request.req.eventsSubject, encode(GenerateEventSchema, {
      requestId: request.req.requestId, index: j.index, tokens, finish, error, offset,
      promptTokens: finish === FinishReason.UNSPECIFIED ? 0 : request.req.prompt.length,
      cachedTokens: finish === FinishReason.UNSPECIFIED ? 0 : request.cached,
    }));
  }

  /** Retires jobs that are finished with nothing in flight: final event, then their cells. */
  #retireFinished(): void {
    for (let i = 0; i < this.#jobs.length; i++) {
      const j = this.#jobs[i]!;
      if (j.finish === null || j.inflight > 0) continue;
      this.#jobs.splice(i--, 1);
      const request = this.#requests.get(j.requestId)!;
      this.#event(request, j, [], j.finish);
      if (--request.live === 0) {
        this.#requests.delete(j.requestId);
        endRequest(request.req, request.jobs.find((x) => x.error)?.error);
      }
      this.#release(j, request);
    }
  }

  #release(j: Job, request: Request): void {
    if (j.sessionId && j.finish !== FinishReason.ERROR) {
      const prefix = this.#residents.get(j.sessionId)?.tokens.slice(0, j.pos0) ?? [];
      this.#residents.set(j.sessionId, { seq: j.seq, tokens: [...prefix, ...cachedTokens(j)], lastUsedMs: Date.now(), busy: this.#migrating.has(j.sessionId), epoch: request.epoch });
      this.#startWaiting();
    } else {
      if (j.sessionId) this.#residents.delete(j.sessionId);
      void this.#dropSeq(j.seq, j.pos);
    }
  }

  /** Cancels a request's jobs (those of `indices`, or all). */
  cancel(requestId: string, indices: readonly number[] = []): boolean {
    const queued = this.#waiting.findIndex((r) => r.requestId === requestId);
    if (queued >= 0) {
      const [req] = this.#waiting.splice(queued, 1);
      this.#failRequest(req!, 'cancelled', 'cancelled before it started');
      return true;
    }
    const rebuilding = this.#rebuilds.findIndex((r) => r.request.req.requestId === requestId);
    if (rebuilding >= 0 && indices.length === 0) {
      const [r] = this.#rebuilds.splice(rebuilding, 1);
      for (const j of r!.jobs) {
        jobTransition(j, { type: 'cancel' });
        this.#event(r!.request, j, [], FinishReason.CANCELLED);
      }
      endRequest(r!.request.req);
      return true;
    }
    const request = this.#requests.get(requestId);
    if (!request) return false;
    for (const j of request.jobs) if (indices.length === 0 || indices.includes(j.index)) jobTransition(j, { type: 'cancel' });
    this.#retireFinished();
    return true;
  }

  /** Where a session stands here: its sequence, the positions every stage holds, its running job. */
  session(id: string): { seq: number; done: number; job: Job | null } | null {
    const job = this.#jobs.find((j) => j.sessionId === id) ?? null;
    if (job) return { seq: job.seq, done: job.done, job };
    const r = this.#residents.get(id);
    return r ? { seq: r.seq, done: r.tokens.length, job: null } : null;
  }

  /** Marks a session as moving: no new request of it starts here until {@link endMigration}. */
  beginMigration(id: string): void {
    this.#migrating.add(id);
    const r = this.#residents.get(id);
    if (r && !this.#jobs.some((j) => j.sessionId === id)) r.busy = true;
  }

  /** Stops scheduling the session's job and waits until none of its steps is in flight. */
  hold(id: string): Promise<void> {
    const job = this.#jobs.find((j) => j.sessionId === id);
    if (!job) return Promise.resolve();
    job.held = true;
    if (job.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#holdWaiters.set(job, resolve));
  }

  /** The session stays here (a migration aborted): it takes requests and decodes again. */
  endMigration(id: string): void {
    this.#migrating.delete(id);
    const job = this.#jobs.find((j) => j.sessionId === id);
    if (job) job.held = false;
    const r = this.#residents.get(id);
    if (r && !job) r.busy = false;
    this.#pump();
    this.#startWaiting();
  }

  /**
   * Reserves a sequence and `cells` cells for a session moving here, evicting idle sessions
   * least recently used first; null when they cannot be had.
   */
  reserveIncoming(cells: number): number | null {
    // The migration empties the sequence on every stage before the first piece arrives.
    const seq = this.#makeRoom(1, cells)?.seqs[0];
    if (seq === undefined) return null;
    this.#incoming.set(seq, cells);
    return seq;
  }

  /** Gives up a reservation: its sequence is emptied on every stage and freed. */
  cancelIncoming(seq: number): Promise<void> {
    const cells = this.#incoming.get(seq) ?? 0;
    this.#incoming.delete(seq);
    return this.#dropSeq(seq, cells);
  }

  /** Empties a sequence on every stage (before a session moves in). */
  async clearSeq(seq: number): Promise<void> {
    await this.#seqOps([seqOp(SeqOpKind.REMOVE, seq)]);
  }

  /** Takes a held session off this pipeline; its sequence is emptied and freed. */
  detach(id: string): { job: Job | null; request: Request | null; tokens: number[] } {
    this.#migrating.delete(id);
    const job = this.#jobs.find((j) => j.sessionId === id) ?? null;
    const r = this.#residents.get(id);
    this.#residents.delete(id);
    let request: Request | null = null;
    let seq = r?.seq ?? -1;
    if (job) {
      this.#jobs.splice(this.#jobs.indexOf(job), 1);
      request = this.#requests.get(job.requestId) ?? null;
      this.#requests.delete(job.requestId);
      seq = job.seq;
    }
    if (seq >= 0) void this.#dropSeq(seq, job ? job.pos : r?.tokens.length ?? 0);
    const prefix = job ? (r?.tokens ?? []).slice(0, job.pos0) : r?.tokens ?? [];
    return { job, request, tokens: job ? [...prefix, ...cachedTokens(job)] : prefix };
  }

  /** Takes a session that moved here into the reserved sequence `seq`; its job goes on decoding. */
  adopt(id: string, seq: number, moved: { job: Job | null; request: Request | null; tokens: number[] }, epoch: number): void {
    this.#incoming.delete(seq);
    const { job, request } = moved;
    if (job && request) {
      // The prompt tokens it fed and the samples it evaluated are now the cached prefix.
      const tokens = moved.tokens;
      job.seq = seq;
      job.samplerSent = false;
      job.replay = job.generated.map((t) => t.token);
      job.held = false;
      job.inflight = 0;
      request.epoch = epoch;
      this.#residents.set(id, { seq, tokens: tokens.slice(0, job.pos0), lastUsedMs: Date.now(), busy: true, epoch });
      this.#requests.set(job.requestId, request);
      this.#jobs.push(job);
      this.#pump();
    } else {
      this.#residents.set(id, { seq, tokens: moved.tokens, lastUsedMs: Date.now(), busy: false, epoch });
      this.#startWaiting();
    }
  }

  /**
   * Why the pipeline is stuck, or null: the oldest step in flight (nothing of this pipeline is
   * ahead of it on any stage) has been so for longer than its deadline, a margin over what its
   * work costs these stages (the floor while that is unknown). Its messages were lost (a NATS
   * restart) or a stage hangs; the coordinator then resets the pipeline. A stage that is only
   * slow keeps heartbeating and is shown, not reset, until its step is that far behind.
   */
  stalled(nowMs: number): string | null {
    const head = this.#inflight.values().next().value;
    if (!head) return null;
    const since = Math.max(head.sentMs, this.#lastResultMs);
    const o = this.#d.options;
    const predicted = this.#d.costs.predict(this.#route, head.work);
    const deadline = stepDeadlineMs(predicted, { floorMs: o.stepDeadlineFloorMs, margin: o.stepDeadlineMargin });
    if (nowMs - since <= deadline) return null;
    const expected = predicted === null ? 'its cost is not known yet' : `${Math.round(predicted)} ms predicted for ${head.work.tokens} tokens`;
    return `a step has been unanswered for ${nowMs - since} ms (deadline ${Math.round(deadline)} ms: ${expected})`;
  }

  /**
   * The pipeline went away. Requests still generating are handed back to be rebuilt elsewhere
   * (their cells are lost, their tokens are not); queued requests fail with a retriable error.
   * The requests `blame` names count one more failure; one that reaches the limit is not rebuilt
   * again but fails with `repeated_failure` (a request that stalls every pipeline it is put on,
   * a grammar too costly for a step's deadline say, would otherwise take them down in turn).
   */
  down(reason: string, blame: Blame = 'none'): Rebuild[] {
    this.#down = true;
    this.#unobserve();
    const steps = [...this.#inflight.values()];
    const blamed = new Set((blame === 'stuck' ? steps.slice(0, 1) : blame === 'inflight' ? steps : []).flatMap((f) => f.entries.map((e) => e.job.requestId)));
    for (const f of steps) endStep(f.trace, { code: 'pipeline_down', message: reason });
    this.#inflight.clear();
    // A migration holding a session here learns it is gone when its hold ends.
    for (const resolve of this.#holdWaiters.values()) resolve();
    this.#holdWaiters.clear();
    const orphans: Rebuild[] = [];
    const limit = this.#d.options.maxRequestFailures;
    for (const request of this.#requests.values()) {
      const live = request.jobs.filter((j) => j.finish === null && this.#jobs.includes(j));
      if (live.length === 0) continue;
      const prefix = request.req.sessionId ? this.#residents.get(request.req.sessionId)?.tokens ?? [] : [];
      for (const j of live) {
        this.#jobs.splice(this.#jobs.indexOf(j), 1);
        rebuildJob(j, prefix.slice(0, j.pos0));
      }
      if (blamed.has(request.req.requestId)) for (const j of live) j.alone = true;
      if (blamed.has(request.req.requestId) && ++request.failures >= limit) {
        this.#log.warn('a request took its pipeline down too often: it is not rebuilt again', { request: request.req.requestId, failures: request.failures, reason });
        publishFailure(this.#d.nc, request.req, live.map((j) => ({ index: j.index, offset: j.generated.length })), 'repeated_failure',
          `the request was in the step that stalled or lost its pipeline ${request.failures} times (last: ${reason}); it is not run again: make it cheaper (a smaller grammar or prompt)`);
        continue;
      }
      orphans.push({ request, jobs: live });
    }
    for (const j of this.#jobs) {
      j.inflight = 0;
      jobTransition(j, { type: 'failed', code: 'pipeline_down', message: reason });
    }
    this.#retireFinished();
    for (const req of this.#waiting.splice(0)) this.#failRequest(req, 'pipeline_down', reason);
    for (const r of this.#rebuilds.splice(0)) orphans.push(r);
    this.#residents.clear();
    this.#requests.clear();
    this.#releasing.clear();
    this.#stranded.clear();
    return orphans;
  }

  /**
   * Drops everything without a word to the gateways: this coordinator is no longer the leader,
   * and its successor rebuilds what ran here.
   */
  abandon(): void {
    this.#down = true;
    this.#unobserve();
    for (const f of this.#inflight.values()) endStep(f.trace, { code: 'abandoned', message: 'no longer the leader' });
    for (const r of this.#requests.values()) endRequest(r.req, { code: 'abandoned', message: 'no longer the leader' });
    this.#inflight.clear();
    for (const resolve of this.#holdWaiters.values()) resolve();
    this.#holdWaiters.clear();
    this.#jobs.length = 0;
    this.#waiting.length = 0;
    this.#rebuilds.length = 0;
    this.#residents.clear();
    this.#requests.clear();
  }

  /** micro-batches sent and not yet answered */
  get inFlight(): number {
    return this.#inflight.size;
  }

  /** Whether the request is here: running, queued or waiting to be rebuilt. */
  knows(requestId: string): boolean {
    return this.#requests.has(requestId) || this.#waiting.some((r) => r.requestId === requestId) || this.#rebuilds.some((r) => r.request.req.requestId === requestId);
  }

  /** Takes requests whose pipeline went down: they prefill what they held here and go on. */
  rebuild(r: Rebuild): void {
    this.#rebuilds.push(r);
    this.#startWaiting();
  }

  /** Starts a rebuild if sequences and cells allow; false: wait. */
  #tryRebuild(r: Rebuild): boolean {
    const need = r.jobs.reduce((n, j) => n + cellsNeeded(j), 0);
    const room = this.#makeRoom(r.jobs.length, need);
    if (!room) return false;
    const { ops } = room;
    const { request, jobs } = r;
    jobs.forEach((j, i) => {
      j.seq = room.seqs[i]!;
      j.held = true;
    });
    const session = request.req.sessionId;
    if (session) this.#residents.set(session, { seq: jobs[0]!.seq, tokens: [], lastUsedMs: Date.now(), busy: true, epoch: 0 });
    this.#requests.set(request.req.requestId, request);
    this.#jobs.push(...jobs);
    void (async () => {
      try {
        if (ops.length > 0) await this.#seqOps(ops);
        if (session) {
          request.epoch = await this.#d.store.claim(session, this.view.id);
          const res = this.#residents.get(session);
          if (res) res.epoch = request.epoch;
        }
      } catch (err) {
        for (const j of jobs) jobTransition(j, { type: 'failed', code: err instanceof CoordinatorError ? err.code : 'internal', message: (err as Error).message });
      }
      for (const j of jobs) j.held = false;
      this.#log.info('rebuilding a request by re-prefill', { request: request.req.requestId, session, tokens: jobs[0]!.prompt.length });
      this.#retireFinished();
      this.#pump();
    })();
    return true;
  }

  /**
   * Sends sequence operations to every stage; throws CoordinatorError if one refuses. Resolves
   * with each stage's answer: per op, the highest position its sequence holds after it.
   */
  async #seqOps(ops: SeqOp[]): Promise<number[][]> {
    return Promise.all(this.view.stages.map(async (s) => {
      let reply;
      try {
        reply = await request(this.#d.nc, subjects.workerSeq(s.workerId), SeqOpRequestSchema, { ops, term: BigInt(this.#d.term), generation: this.generation, fenceProof: this.#d.proof(BigInt(this.#d.term), this.generation) }, SeqOpReplySchema, this.#d.options.seqOpTimeoutMs);
      } catch (err) {
        throw new CoordinatorError('stage_failed', `worker ${s.workerId} did not apply sequence operations: ${(err as Error).message}`);
      }
      if (reply.error) throw new CoordinatorError(reply.error.code, `worker ${s.workerId}: ${reply.error.message}`);
      if (reply.stale) throw new CoordinatorError('stale_generation', `worker ${s.workerId} serves a newer scheduler of pipeline ${this.view.id}`);
      return reply.posMax;
    }));
  }
}
