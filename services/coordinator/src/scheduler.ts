// The scheduler of one pipeline: the runtime around its core (pipeline-core.ts). The core decides
// everything; this shell carries out its effects — steps over NATS, sequence operations on every
// stage, claims and history in Redis (session-store.ts), events to gateways, spans and metrics —
// and feeds what comes back to the core as messages. It serves a migration as its source or its
// target (the ports of migration.ts) and answers the coordinator's questions.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '@strata/log';
import { headerBytes } from '@strata/telemetry';
import {
  SeqOpKind, SeqOpReplySchema, SeqOpRequestSchema, encodeStageInput, request, subjects,
  type GenerateReply, type GenerateRequest, type SeqOp, type StepResult,
} from '@strata/wire';
import type { NatsConnection } from 'nats';
import type { PipelineView, Role } from './cluster.ts';
import { CoordinatorError } from './errors.ts';
import { cellsNeeded } from './job.ts';
import type { MigrationSource, MigrationTarget, SessionPlace } from './migration.ts';
import {
  knows, load, oneOff, openPipeline, queued, sessionAt, sessionIds, sessionViews, transition,
  type Blame, type MovedSession, type PipelineCore, type PipelineEffect, type PipelineMsg, type PipelineOptions, type Rebuild, type SessionView,
} from './pipeline-core.ts';
import type { Placeable } from './placement.ts';
import { encodeEvent, encodeEvents, seqOp, type ClientEvent } from './replies.ts';
import type { SessionStore } from './session-store.ts';
import type { CostBook } from './step-cost.ts';
import { countPrompt, countTokens, endRequest, endStep, observeQueue, startStep, type StepTrace } from './telemetry.ts';

/** ms between tries of a request's sequence operations while a stage does not answer */
const SEQ_OP_RETRY_MS = 250;
/** a sequence whose emptying (or a cache sequence whose trim) failed is asked again after this long, then twice as long each time, up to the most */
const RECLAIM_FIRST_MS = 1000;
const RECLAIM_MAX_MS = 30_000;

/** What a scheduler needs from the coordinator around it. */
export interface SchedulerDeps {
  nc: NatsConnection;
  /** subject the last stage answers to */
  resultSubject: string;
  store: SessionStore;
  log: Logger;
  /** the core's policy */
  options: PipelineOptions;
  /** a sequence-operation request unanswered for this long fails (milliseconds) */
  seqOpTimeoutMs: number;
  /** the coordinator's leader term, on every step and sequence operation (stages fence by it) */
  term: number;
  /** the proof of fence (term, generation) that goes with it (empty when terms are not signed) */
  proof: (term: bigint, generation: bigint) => Uint8Array;
  /** what steps cost each stage, learned from results (kept across this pipeline's resets) */
  costs: CostBook;
  /**
   * a request admitted to be handed off starts here: move it to a decode pipeline, copying its
   * KV as it is computed; `prefilled` resolves once it has its first token and is held
   */
  handOff?: (from: PipelineScheduler, key: string, prefilled: Promise<void>) => Promise<unknown>;
  /** a request is over on this pipeline */
  ended?: (requestId: string) => void;
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

/** The scheduler of one pipeline. */
export class PipelineScheduler implements Placeable {
  readonly view: PipelineView;
  /** this scheduler's generation, on each of its steps and sequence operations */
  readonly generation = nextGeneration();
  /** takes no new request and no session (a drain mark holds one of its workers: drains.ts) */
  draining = false;
  /** prompt tokens of requests that ended here, and those a session or the prefix cache held */
  promptTokens = 0;
  cachedPromptTokens = 0;
  /** requests handed to a decode pipeline after their prefill here, taken from a prefill pipeline, and hand-offs that failed (decoded here) */
  handOffsOut = 0;
  handOffsIn = 0;
  handOffsFailed = 0;
  /** this pipeline as a migration's source */
  readonly source: MigrationSource;
  /** this pipeline as a migration's target */
  readonly target: MigrationTarget;
  readonly #core: PipelineCore;
  readonly #d: SchedulerDeps;
  readonly #log: Logger;
  /** worker ids of the stages, in order (every step's route) */
  readonly #route: string[];
  /** the span of every step in flight (the core's in-flight steps, by the same ids) */
  readonly #traces = new Map<bigint, StepTrace>();
  /** migrations waiting for their hold of a session to complete */
  readonly #holds = new Map<string, (() => void)[]>();
  /** hand-offs waiting for their request's first token, by key */
  readonly #prefills = new Map<string, () => void>();
  /** sequences being emptied, until they are */
  readonly #drops = new Map<number, Promise<void>>();
  /** cache sequences whose trim failed -> the last wait before asking again */
  readonly #trimRetries = new Map<number, number>();
  /** stops reporting this pipeline's queue depth */
  readonly #unobserve: () => void;

  constructor(view: PipelineView, deps: SchedulerDeps) {
    this.view = view;
    this.#d = deps;
    this.#log = deps.log.child({ pipeline: view.id });
    this.#route = view.stages.map((s) => s.workerId);
    const { core, effects } = openPipeline(view, deps.options, deps.costs, BigInt(Date.now()) << 16n);
    this.#core = core;
    this.#unobserve = observeQueue(view.id, this);
    this.source = {
      view, place: (s) => this.#place(s), begin: (s) => void this.#deliver({ type: 'begin_move', session: s }),
      hold: (s) => this.#hold(s), stay: (s) => void this.#deliver({ type: 'stay', session: s }),
      handOver: (s) => this.#handOver(s),
    };
    this.target = {
      view, draining: () => this.draining, reserve: (cells) => this.#reserve(cells), cancel: (seq) => this.#unreserve(seq),
      adopt: (session, seq, moved, epoch) => void this.#deliver({ type: 'adopt', session, seq, moved, epoch }),
    };
    this.#run(effects);
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

  /** what it does: prefill, decode or both */
  get role(): Role {
    return this.view.role;
  }

  /** positions one sequence may hold (one KV stream's cells, with a stream per sequence) */
  get context(): number {
    return this.#core.context;
  }

  /** requests running or waiting */
  get load(): number {
    return load(this.#core);
  }

  /** sequence ids in use */
  get seqsUsed(): number {
    return this.#core.room.seqsUsed;
  }

  /** sequences out of use since their emptying failed (asked again until it succeeds) */
  get strandedSeqs(): number {
    return this.#core.room.strandedSeqs;
  }

  /** requests waiting for sequences or cells */
  get queued(): number {
    return queued(this.#core);
  }

  /** sessions resident here */
  get sessions(): number {
    return this.#core.room.residents.size;
  }

  /** The prefix cache: cache sequences and the cells it holds, and the prompts saved to the tiers. */
  get prefixCache(): { prefixes: number; cells: number; saved: number } {
    const tree = this.#core.room.prefixes;
    return { prefixes: tree.cacheSeqs().length, cells: tree.cells(), saved: this.#core.savedPrefixes.size };
  }

  /** one-off requests running or waiting here */
  get oneOff(): number {
    return oneOff(this.#core);
  }

  /** micro-batches sent and not yet answered */
  get inFlight(): number {
    return this.#core.inflight.size;
  }

  /** Sessions that live here (resident or running). */
  sessionIds(): string[] {
    return sessionIds(this.#core);
  }

  /** Read-only snapshot of the sessions that live here, for operators (strata sessions, the dashboard). */
  sessionViews(): SessionView[] {
    return sessionViews(this.#core);
  }

  /**
   * Whether `session` holds cells here, or in this pipeline's workers' tiers (not while it drains:
   * a session there is not migrated, and its next request goes elsewhere and prefills).
   */
  holds(session: string): boolean {
    const c = this.#core;
    return c.room.residents.has(session) || (!this.draining && (c.offloaded.has(session) || c.offloading.has(session)));
  }

  /**
   * Prompt tokens of `prompt` this pipeline's prefix cache holds for `scope`, or is computing now
   * (a request placed here would wait for them: many clients arriving at once with one prompt
   * go where its first one went).
   */
  cachedPrefix(scope: string, prompt: readonly number[]): number {
    if (!this.#core.options.prefixCache || this.#core.down) return 0;
    const m = this.#core.room.prefixes.match(scope, prompt, prompt.length - 1);
    return m ? m.depth + m.pending : 0;
  }

  /** Whether the request is here: running, queued or waiting to be rebuilt. */
  knows(requestId: string): boolean {
    return knows(this.#core, requestId);
  }

  /** Where a session stands here: its sequence and the positions every stage holds, or null. */
  session(id: string): { seq: number; done: number } | null {
    return sessionAt(this.#core, id);
  }

  /**
   * Admits a request: refused at once, started, or queued (accepted requests report failures as
   * events). `handOff`: it is held after its first token, for a decode pipeline to take (the
   * coordinator is told through SchedulerDeps.prefilled).
   */
  admit(req: GenerateRequest, handOff = false): GenerateReply {
    return answer(this.#deliver({ type: 'admit', req, handOff }), 'reply').reply;
  }

  /** Takes over a request a previous leader accepted and lost: it is rebuilt by re-prefill. */
  resume(req: GenerateRequest): GenerateReply {
    return answer(this.#deliver({ type: 'resume', req }), 'reply').reply;
  }

  /** Takes a request whose pipeline went down: it prefills what it held there and goes on. */
  rebuild(r: Rebuild): void {
    this.#deliver({ type: 'rebuild', rebuild: r });
  }

  /** Cancels a request's jobs (those of `indices`, or all); false when the request is not here. */
  cancel(requestId: string, indices: readonly number[] = []): boolean {
    if (!knows(this.#core, requestId)) return false;
    this.#deliver({ type: 'cancel', requestId, indices });
    return true;
  }

  /** Takes the answer to one of this pipeline's steps. */
  onResult(r: StepResult): void {
    const trace = this.#traces.get(r.stepId);
    if (!trace) return; // late: its jobs already failed on a timeout
    this.#traces.delete(r.stepId);
    endStep(trace, r.error);
    this.#log.debug('step', { step: r.stepId, rttMs: Math.round(performance.now() - trace.t0), stageMs: r.stageMs });
    this.#deliver({ type: 'step_result', result: r });
  }

  /** Why the pipeline is stuck (its oldest step is past its deadline), or null. */
  stalled(nowMs: number): string | null {
    const fx = transition(this.#core, { type: 'tick' }, nowMs);
    return fx.find((e) => e.type === 'stalled')?.why ?? null;
  }

  /**
   * The pipeline went away: queued requests fail with a retriable error; those still generating
   * are returned, to be rebuilt elsewhere (`blame`: the requests that count a failure for it).
   */
  down(reason: string, blame: Blame = 'none'): Rebuild[] {
    this.#stop({ code: 'pipeline_down', message: reason });
    return this.#deliver({ type: 'down', reason, blame }).flatMap((e) => (e.type === 'orphan' ? [e.rebuild] : []));
  }

  /** Drops everything without a word to the gateways: another coordinator leads and rebuilds what ran here. */
  abandon(): void {
    this.#stop({ code: 'abandoned', message: 'no longer the leader' });
    this.#deliver({ type: 'abandon' });
  }

  /** Stops reporting, and ends the span of every step in flight. */
  #stop(error: { code: string; message: string }): void {
    this.#unobserve();
    for (const t of this.#traces.values()) endStep(t, error);
    this.#traces.clear();
  }

  /** Runs a message through the core and carries out its effects; returns them (for the answers). */
  #deliver(msg: PipelineMsg): PipelineEffect[] {
    const fx = transition(this.#core, msg, Date.now());
    this.#run(fx);
    return fx;
  }

  #run(fx: readonly PipelineEffect[]): void {
    // Events for gateways that take them batched: one message per gateway once every effect ran.
    const batches = new Map<string, ClientEvent[]>();
    for (const e of fx) {
      switch (e.type) {
        case 'send_step':
          this.#send(e);
          break;
        case 'event':
          if (e.batched) {
            const b = batches.get(e.subject);
            if (b) b.push(e.event);
            else batches.set(e.subject, [e.event]);
          } else {
            this.#d.nc.publish(e.subject, encodeEvent(e.event));
          }
          if (e.event.tokens.length > 0) countTokens(this.view.id, e.event.tokens.length);
          // The last event of a request's first choice tells its prompt and what was cached
          // (a request handed over was counted where it was prefilled).
          if (e.event.finish && e.event.index === 0 && !e.counted) this.#countPrompt(e.event.promptTokens, e.event.cachedTokens);
          break;
        case 'write_history':
          void this.#d.store.write(e.session, e.epoch, e.at, e.tokens).catch((err: unknown) => this.#log.warn('session history write failed', { session: e.session, err }));
          break;
        case 'request_ended':
          endRequest(e.req, e.error);
          this.#d.ended?.(e.req.requestId);
          break;
        case 'prepare':
          void this.#prepare(e);
          break;
        case 'drop_seq': {
          const done: Promise<void> = this.#drop(e.seq).finally(() => {
            if (this.#drops.get(e.seq) === done) this.#drops.delete(e.seq);
          });
          this.#drops.set(e.seq, done);
          break;
        }
        case 'checkpoint':
          void this.#checkpoint(e.requestId, e.index, e.seq, e.ops);
          break;
        case 'fork':
          void this.#fork(e.requestId, e.at, e.ops);
          break;
        case 'trim_seq':
          void this.#trim(e.seq, e.keepTo);
          break;
        case 'offload':
          // Its request is published now, ahead of the sequence's emptying (a later effect).
          void this.#offload(e.seq, e.session, e.key);
          break;
        case 'forget':
          void this.#seqOps([{ ...seqOp(SeqOpKind.FORGET, 0), key: e.key }]).catch((err: unknown) => this.#log.warn('a tier could not forget a session\'s state', { key: e.key, err }));
          break;
        case 'empty':
          void this.#empty(e.seqs);
          break;
        case 'held':
          for (const resolve of this.#holds.get(e.session) ?? []) resolve();
          this.#holds.delete(e.session);
          break;
        case 'prefilling': {
          let done = () => {};
          const prefilled = new Promise<void>((resolve) => (done = resolve));
          this.#prefills.set(e.key, done);
          // (A request that ends before its first token never resolves it: forgotten with its
          // hand-off.) Started once these effects are carried out: its first moves reach this
          // pipeline's core, which must not be re-entered meanwhile.
          queueMicrotask(() => void this.#d.handOff?.(this, e.key, prefilled).finally(() => {
            if (this.#prefills.get(e.key) === done) this.#prefills.delete(e.key);
          }));
          break;
        }
        case 'prefilled':
          this.#prefills.get(e.key)?.();
          this.#prefills.delete(e.key);
          break;
        case 'log':
          this.#log[e.level](e.message, e.fields);
          break;
        // Answers (reply, reserved, handed_over, orphan, stalled): read by whoever sent the message.
      }
    }
    for (const [subject, events] of batches) this.#d.nc.publish(subject, encodeEvents(events));
  }

  #send(e: Extract<PipelineEffect, { type: 'send_step' }>): void {
    const trace = startStep(this.view.id, e.stepId, e.trace);
    this.#traces.set(e.stepId, trace);
    const term = BigInt(this.#d.term);
    const header = {
      $typeName: 'strata.v1.StepHeader' as const, stepId: e.stepId, pipelineId: this.view.id, route: this.#route, hop: 0,
      replySubject: this.#d.resultSubject, entries: e.entries, tokens: e.tokens, traceparent: '', stageMs: [], term, generation: this.generation,
      fenceProof: this.#d.proof(term, this.generation), follows: e.follows, ring: e.ring, burst: e.burst,
    };
    // The trace-context headers count against NATS's max payload.
    for (const chunk of encodeStageInput(header, new Float32Array(0), (this.#d.nc.info?.max_payload ?? 1 << 20) - headerBytes(trace.headers))) {
      this.#d.nc.publish(subjects.workerStep(this.#route[0]!), chunk, { headers: trace.headers });
    }
  }

  /** Makes a request's sequences ready: sequence operations, then the session's claim and history. */
  async #prepare(e: Extract<PipelineEffect, { type: 'prepare' }>): Promise<void> {
    let msg: PipelineMsg;
    try {
      if (e.ops.length > 0) await this.#seqOpsWhileUp(e.ops);
      let epoch = 0;
      if (e.claim) {
        epoch = await this.#d.store.claim(e.claim, this.view.id);
        if (e.history) await this.#d.store.write(e.claim, epoch, e.history.keep, e.history.tokens);
      }
      msg = { type: 'prepared', requestId: e.requestId, session: e.claim, epoch };
    } catch (err) {
      msg = { type: 'prepare_failed', requestId: e.requestId, code: err instanceof CoordinatorError ? err.code : 'internal', message: (err as Error).message };
    }
    this.#deliver(msg);
  }

  /**
   * Empties a sequence on every stage. An id whose emptying failed stays out of use, its cells
   * counted as held, until it is emptied after all: asked again, less and less often.
   */
  async #drop(seq: number): Promise<void> {
    const ok = await this.#tryOps([seqOp(SeqOpKind.REMOVE, seq)], 'error', 'a sequence could not be emptied: its id stays out of use until it is', { seq });
    this.#deliver({ type: 'dropped', seq, ok });
    if (!ok) void this.#reclaim(seq);
  }

  /**
   * Empties a sequence whose emptying failed (its answer lost with a NATS connection, a stage
   * that hung for a while) until every stage answers or the pipeline goes down. Safe to repeat:
   * nothing else uses the id meanwhile.
   */
  async #reclaim(seq: number): Promise<void> {
    for (let waitMs = RECLAIM_FIRST_MS; ; waitMs = Math.min(RECLAIM_MAX_MS, 2 * waitMs)) {
      await sleep(waitMs, undefined, { ref: false });
      if (this.#core.down) return;
      try {
        await this.#seqOps([seqOp(SeqOpKind.REMOVE, seq)]);
      } catch {
        continue;
      }
      if (this.#core.down) return;
      this.#log.info('a sequence that could not be emptied is empty now: its id is in use again', { seq });
      this.#deliver({ type: 'dropped', seq, ok: true });
      return;
    }
  }

  /** Saves a session's sequence to every stage's tiers ('offloaded'); its emptying follows as another effect. */
  async #offload(seq: number, session: string, key: string): Promise<void> {
    let ok = true;
    try {
      const saved = await this.#seqOps([{ ...seqOp(SeqOpKind.SAVE, seq), key }]);
      ok = saved.every((stage) => (stage[0] ?? -1) >= 0);
      if (!ok) this.#log.warn('a stage\'s tiers did not take an evicted session or prefix: it will be prefilled again', { session, key, seq });
    } catch (err) {
      ok = false;
      this.#log.warn('an evicted session or prefix could not be saved to the tiers: it will be prefilled again', { session, key, seq, err });
    }
    this.#deliver({ type: 'offloaded', session, key, ok });
  }

  /** Copies a job's prompt so far into the cache sequence of its checkpoint, on every stage. */
  async #checkpoint(requestId: string, index: number, seq: number, ops: SeqOp[]): Promise<void> {
    const ok = await this.#tryOps(ops, 'warn', 'a prompt could not be checkpointed for the prefix cache', { request: requestId });
    this.#deliver({ type: 'checkpointed', requestId, index, seq, ok });
  }

  /** Copies a request's prompt into its other choices' sequences, on every stage. */
  async #fork(requestId: string, at: number, ops: SeqOp[]): Promise<void> {
    const ok = await this.#tryOps(ops, 'warn', 'a prompt could not be shared with the other choices of its request: they compute it', { request: requestId });
    this.#deliver({ type: 'forked', requestId, at, ok });
  }

  /**
   * Drops a cache sequence's positions from `keepTo` on, on every stage. A failed trim's cells
   * stay counted as held, and the core is asked to trim again a while later (after 1 s, doubling
   * up to 30 s), while the sequence still waits for it.
   */
  async #trim(seq: number, keepTo: number): Promise<void> {
    const ok = await this.#tryOps([seqOp(SeqOpKind.REMOVE, seq, keepTo, -1)], 'error', 'a cached prefix could not be trimmed; its cells stay counted as held until a later trim', { seq });
    this.#deliver({ type: 'trimmed', seq, ok });
    const waitMs = this.#trimRetries.get(seq);
    if (ok) {
      this.#trimRetries.delete(seq);
      return;
    }
    const next = waitMs === undefined ? RECLAIM_FIRST_MS : Math.min(RECLAIM_MAX_MS, 2 * waitMs);
    this.#trimRetries.set(seq, next);
    await sleep(next, undefined, { ref: false });
    if (!this.#core.down) this.#deliver({ type: 'retry_trim', seq });
  }

  /**
   * A new pipeline knows nothing of what its stages hold (a restarted coordinator, a stage that
   * served another pipeline): every sequence is emptied before the first request. A stage that
   * cannot answer yet (reconnecting to NATS, say) is asked again until it does or the pipeline
   * goes down; requests wait meanwhile.
   */
  async #empty(seqs: number[]): Promise<void> {
    for (let attempt = 0; !this.#core.down; attempt++) {
      try {
        const posMax = await this.#seqOps(seqs.map((seq) => seqOp(SeqOpKind.REMOVE, seq)));
        // What the stages' tiers keep belongs to sequences no one knows of any more.
        await this.#seqOps([{ ...seqOp(SeqOpKind.FORGET, 0), key: '*' }]);
        // Every stage and this scheduler agree before the first step: nothing held anywhere.
        const held = posMax.findIndex((stage) => stage.some((p) => p >= 0));
        if (held >= 0) throw new CoordinatorError('stage_failed', `worker ${this.view.stages[held]!.workerId} still holds positions after emptying every sequence`);
        this.#deliver({ type: 'emptied' });
        return;
      } catch (err) {
        if (attempt === 0) this.#log.warn('the stages of a new pipeline could not be emptied yet: retrying', { err });
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  }

  #countPrompt(tokens: number, cached: number): void {
    countPrompt(this.view.id, tokens, cached);
    this.promptTokens += tokens;
    this.cachedPromptTokens += cached;
  }

  /** Gives a held session or request up to a migration's target; a request's prompt counts here, where it was computed. */
  #handOver(key: string): MovedSession {
    const moved = answer(this.#deliver({ type: 'hand_over', session: key }), 'handed_over').moved;
    if (moved.request && !moved.request.promptCounted) {
      moved.request.promptCounted = true;
      this.#countPrompt(moved.request.req.prompt.length, moved.request.cached);
    }
    return moved;
  }

  #place(session: string): SessionPlace | null {
    const at = sessionAt(this.#core, session);
    if (!at) return null;
    return { seq: at.seq, done: at.done, cells: at.job ? cellsNeeded(at.job) : at.done, decoding: at.job !== null };
  }

  #hold(session: string): Promise<void> {
    return new Promise((resolve) => {
      this.#holds.set(session, [...(this.#holds.get(session) ?? []), resolve]);
      this.#deliver({ type: 'hold', session });
    });
  }

  async #reserve(cells: number): Promise<number> {
    const ask = () => answer(this.#deliver({ type: 'reserve', cells }), 'reserved').seq;
    let seq = ask();
    // A sequence being emptied (a session that just moved away) holds its cells until every stage
    // has answered: a migration arriving meanwhile waits for those drops (within the seq-op
    // timeout) instead of being refused for cells that are about to be free.
    for (const until = Date.now() + this.#d.seqOpTimeoutMs; seq === null && this.#drops.size > 0 && Date.now() < until;) {
      await Promise.allSettled([...this.#drops.values()]);
      seq = ask();
    }
    if (seq === null) throw new CoordinatorError('no_room', `pipeline ${this.view.id} cannot take ${cells} cells and a sequence`);
    try {
      await this.#seqOps([seqOp(SeqOpKind.REMOVE, seq)]);
    } catch (err) {
      await this.#unreserve(seq);
      throw err;
    }
    return seq;
  }

  #unreserve(seq: number): Promise<void> {
    this.#deliver({ type: 'unreserve', seq });
    return this.#drops.get(seq) ?? Promise.resolve();
  }

  /** Runs `ops` on every stage: whether every stage did; a failure is logged at `level`. */
  async #tryOps(ops: SeqOp[], level: 'warn' | 'error', message: string, fields: Record<string, unknown>): Promise<boolean> {
    try {
      await this.#seqOps(ops);
      return true;
    } catch (err) {
      this.#log[level](message, { ...fields, err });
      return false;
    }
  }

  /**
   * A request's sequence operations, tried again while a stage does not answer (gone from NATS:
   * partitioned, restarting) for up to --seq-op-timeout-ms: a stage that is lost takes its
   * pipeline down meanwhile, and the request is rebuilt elsewhere instead of failing here.
   * Every operation a request prepares with may be repeated (REMOVE and COPY give the same
   * cells again; a LOAD the tiers no longer hold falls back to prefilling).
   */
  async #seqOpsWhileUp(ops: SeqOp[]): Promise<void> {
    const until = Date.now() + this.#d.seqOpTimeoutMs;
    for (;;) {
      try {
        await this.#seqOps(ops);
        return;
      } catch (err) {
        if (!(err instanceof CoordinatorError) || err.code !== 'stage_failed' || Date.now() >= until) throw err;
        await new Promise((r) => setTimeout(r, SEQ_OP_RETRY_MS));
      }
    }
  }

  /**
   * Sends sequence operations to every stage; throws CoordinatorError if one refuses. Resolves
   * with each stage's answer: per op, the highest position its sequence holds after it.
   */
  async #seqOps(ops: SeqOp[]): Promise<number[][]> {
    // A tier operation (SAVE, LOAD, FORGET) goes alone in its request; the others go together, in order.
    const tier = (o: SeqOp) => o.kind === SeqOpKind.SAVE || o.kind === SeqOpKind.LOAD || o.kind === SeqOpKind.FORGET;
    if (ops.some(tier) && ops.length > 1) {
      const out: number[][] = this.view.stages.map(() => []);
      for (let i = 0; i < ops.length;) {
        let k = i + 1;
        if (!tier(ops[i]!)) while (k < ops.length && !tier(ops[k]!)) k++;
        const part = await this.#seqOps(ops.slice(i, k));
        part.forEach((p, s) => out[s]!.push(...p));
        i = k;
      }
      return out;
    }
    const term = BigInt(this.#d.term);
    return Promise.all(this.view.stages.map(async (s) => {
      let reply;
      try {
        reply = await request(this.#d.nc, subjects.workerSeq(s.workerId), SeqOpRequestSchema, { ops, term, generation: this.generation, fenceProof: this.#d.proof(term, this.generation) }, SeqOpReplySchema, this.#d.seqOpTimeoutMs);
      } catch (err) {
        throw new CoordinatorError('stage_failed', `worker ${s.workerId} did not apply sequence operations: ${(err as Error).message}`);
      }
      if (reply.error) throw new CoordinatorError(reply.error.code, `worker ${s.workerId}: ${reply.error.message}`);
      if (reply.stale) throw new CoordinatorError('stale_generation', `worker ${s.workerId} serves a newer scheduler of pipeline ${this.view.id}`);
      return reply.posMax;
    }));
  }
}

/** The answer of type `type` among a message's effects (every such message yields exactly one). */
function answer<T extends PipelineEffect['type']>(fx: readonly PipelineEffect[], type: T): Extract<PipelineEffect, { type: T }> {
  const a = fx.find((e): e is Extract<PipelineEffect, { type: T }> => e.type === type);
  if (!a) throw new Error(`the pipeline's core gave no '${type}'`);
  return a;
}
