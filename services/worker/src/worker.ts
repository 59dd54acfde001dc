// The worker process: one stage on NATS. Its main thread never computes: the stage (weights,
// KV cache, samplers) lives on a stage thread (stage-thread.ts) that runs steps, sequence
// operations and imports in arrival order, while this thread heartbeats, answers stats, receives
// and decodes the next micro-batches and serves KvTransfer, however long a step takes.
// Coordinators' messages carry their leader term: a stage drops whatever comes with a term below
// the newest leader announced, fencing out a deposed leader. (Only announcements raise it: a
// garbled step or sequence operation cannot fence the real leader out.) Steps and sequence
// operations also carry their pipeline's generation: after a reset, the stage thread drops what
// the pipeline's earlier scheduler sent, so no stale step refills a sequence the new one emptied.
import { redactUrl, type Logger } from '@strata/log';
import type { StageMemory } from '@strata/model';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FenceGuard, FenceVerifier, connectNats, drainNats,
  DrainReplySchema, DrainRequestSchema, HeartbeatSchema, LeaderAnnouncementSchema, MigrateOutReplySchema, MigrateOutRequestSchema, RingTokensSchema, SeqOpReplySchema, SeqOpRequestSchema, StageInputAssembler, StageStatsSchema, StepResultSchema,
  SeqOpKind, decode, encode, encodeStageInput, request, subjects, type SeqOp, type StageCounters, type StageInfo, type StageLoad, type StepHeader,
} from '@strata/wire';
import type { Msg, NatsConnection, Subscription } from 'nats';
import type { WorkerConfig } from './config.ts';
import { WorkerError } from './errors.ts';
import { KvTransferServer, closePushClients, loadSecurity, pushState, type TransferSecurity } from './kv-transfer.ts';
import { KvTiers, TierMiss } from './kv-tiers.ts';
import { ringEntries, ringMessage, ringSamples, type RingSample } from './ring.ts';
import { StageHost, ringedFailure, type StepAnswer } from './stage-host.ts';
import { countTierOp, endStage, observeKvCells, observeTiers, startStage, tracePush } from './telemetry.ts';
import { context } from '@opentelemetry/api';
import { carrierContext, headerBytes, natsContext, traceCarrier } from '@strata/telemetry';

/** Sequence operations that go through the tiers, not the stage alone. */
const isTierOp = (op: SeqOp) => op.kind === SeqOpKind.SAVE || op.kind === SeqOpKind.LOAD || op.kind === SeqOpKind.FORGET;

/** Steps whose chunks stop arriving for this long are dropped (milliseconds). */
const PARTIAL_STEP_MS = 30_000;

/** A running worker. stop() drains and frees everything; it is idempotent. */
export class Worker {
  readonly info: StageInfo;
  readonly #host: StageHost;
  /** evicted sessions' KV state, below the device's cells */
  readonly #tiers: KvTiers;
  readonly #nc: NatsConnection;
  readonly #log: Logger;
  readonly #assembler = new StageInputAssembler();
  readonly #subs: Subscription[] = [];
  #kv: KvTransferServer | null = null;
  #security: TransferSecurity = { token: null, tls: null };
  readonly #io = { steps: 0n, bytesIn: 0n, bytesOut: 0n };
  #memory: StageMemory;
  #timer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | null = null;
  #draining = false;
  /** times the NATS connection came back (heartbeats carry it: the leader resets a pipeline with steps in flight) */
  #reconnects = 0;
  /** stops reporting KV occupancy to metrics */
  #unobserve: () => void = () => {};
  /** the newest leader's term */
  #term = 0n;
  /** which fences (term, generation) this worker believes (--term-public-key-file) */
  readonly #guard: FenceGuard;
  readonly #verifier: FenceVerifier | null;
  /** rejects when the stage thread dies on its own: the worker cannot serve any more */
  readonly failed: Promise<never>;
  #fail: (err: Error) => void = () => {};

  private constructor(c: WorkerConfig, host: StageHost, nc: NatsConnection, verifier: FenceVerifier | null, log: Logger) {
    this.#host = host;
    // Each worker its own folder: workers of a host (or a pod's volume) may share --kv-disk-dir.
    this.#tiers = new KvTiers(c.kvHostCacheMib * 2 ** 20, c.kvDiskCacheMib * 2 ** 20, c.kvDiskDir ? join(c.kvDiskDir, c.id) : '');
    this.#verifier = verifier;
    this.#guard = new FenceGuard(verifier);
    this.#nc = nc;
    this.#log = log;
    this.#memory = host.memoryAtLoad;
    this.failed = new Promise<never>((_, reject) => {
      this.#fail = reject;
    });
    this.failed.catch(() => {});
    const d = host.description;
    this.info = {
      $typeName: 'strata.v1.StageInfo',
      workerId: c.id, modelFingerprint: d.fingerprint, modelId: c.modelId, nLayer: d.nLayer,
      l0: d.l0, l1: d.l1, device: c.device, kvCells: d.kvCells / d.kvStreams, kvStreams: d.kvStreams,
      nSeqMax: c.nSeqMax, maxBatch: c.maxBatch, nVocab: d.nVocab, nEmbd: d.nEmbd, nCtxTrain: d.nCtxTrain,
      startedAtMs: BigInt(Date.now()), grpcAddress: '', kvType: c.kvTypeName, group: c.group, role: c.role, kvSwaCells: d.kvSwaCells,
    };
    host.onFatal = (err) => {
      this.#log.error('the stage thread died', { err });
      this.#fail(err);
      void this.stop();
    };
    host.onWarn = (msg, fields) => this.#log.warn(msg, fields);
    // A step from the stage before over a same-host link: it computes already; this thread
    // counts it, traces it and sends on what it produces.
    host.onLinked = (h, trace, bytes, answer) => {
      this.#io.steps++;
      this.#io.bytesIn += BigInt(bytes);
      void this.#finishStep(h, answer, startStage(this.info, h, carrierContext(trace)), performance.now());
    };
  }

  /** Loads the stage on its thread, connects to NATS, subscribes and starts heartbeating. */
  static async start(c: WorkerConfig, log: Logger): Promise<Worker> {
    const verifier = c.termPublicKeyFile ? FenceVerifier.fromPem(readFileSync(c.termPublicKeyFile)) : null;
    if (!verifier) log.warn('leader terms are not verified (--term-public-key-file): any client allowed to publish here can fence the leader out');
    const security = loadSecurity(c);
    const host = await StageHost.start({
      workerId: c.id, model: c.model, layers: c.layers, threads: c.threads, device: c.device, ctxSize: c.ctxSize, kvType: c.kvType,
      maxBatch: c.maxBatch, nSeqMax: c.nSeqMax, kvSwaFull: c.kvSwaFull, kvStreams: c.kvStreams, kvDebug: c.kvDebug, testStepDelayMs: c.testStepDelayMs, testStepDelayMinTokens: c.testStepDelayMinTokens,
      linkDir: c.stageLinkDir, linkToken: security.token,
    });
    const nc = await connectNats(c.natsUrl, `strata-worker-${c.id}`, () => host.close());
    const w = new Worker(c, host, nc, verifier, log.child({ worker: c.id }));
    try {
      w.#security = security;
      w.#kv = await KvTransferServer.start({ security: w.#security, host: c.grpcHost, port: c.grpcPort, workerId: c.id, nSeqMax: c.nSeqMax, stage: host, log: w.#log, maxBlobBytes: c.transferMaxBlobBytes, onChange: () => w.#heartbeat() });
    } catch (err) {
      await w.stop();
      throw err;
    }
    w.info.grpcAddress = c.grpcAdvertise ?? w.#kv.address;
    w.#subscribe();
    void w.#watchNats();
    const unobserveCells = observeKvCells(c.id, () => ({ used: w.#host.snapshot.used, total: w.info.kvCells * w.info.kvStreams, busyMs: w.load().busyMs }));
    const unobserveTiers = observeTiers(c.id, () => w.#tiers.stats);
    w.#unobserve = () => {
      unobserveCells();
      unobserveTiers();
    };
    w.#heartbeat();
    w.#timer = setInterval(() => {
      w.#heartbeat();
      for (const id of w.#assembler.prune(PARTIAL_STEP_MS)) w.#log.warn('dropped a step whose chunks stopped coming', { step: id });
    }, c.heartbeatMs);
    w.#log.info('worker ready', { layers: `${w.info.l0}:${w.info.l1}`, model: c.modelId, kvCells: w.info.kvCells, kvStreams: w.info.kvStreams, nats: redactUrl(c.natsUrl) });
    return w;
  }

  /** the stage's counters and the worker's traffic */
  counters(): StageCounters {
    const c = this.#host.snapshot.counters, l = this.#host.snapshot.links;
    return {
      $typeName: 'strata.v1.StageCounters',
      batches: BigInt(c.batches), tokens: BigInt(c.tokens), graphReuses: BigInt(c.graphReuses), shifts: BigInt(c.shifts),
      defrags: BigInt(c.defrags), swaPruned: BigInt(c.swaPruned), steps: this.#io.steps, bytesIn: this.#io.bytesIn, bytesOut: this.#io.bytesOut,
      linkStepsIn: BigInt(l?.stepsIn ?? 0), linkStepsOut: BigInt(l?.stepsOut ?? 0), linkRingsIn: BigInt(l?.ringsIn ?? 0), linkRingsOut: BigInt(l?.ringsOut ?? 0),
    };
  }

  /** What the stage computes now and what its last step cost. */
  load(): StageLoad {
    const s = this.#host.snapshot, busy = this.#host.busy;
    return {
      $typeName: 'strata.v1.StageLoad', busyStepId: busy?.stepId ?? 0n, busyTokens: busy?.tokens ?? 0, busyMs: busy ? Math.max(0, Date.now() - busy.sinceMs) : 0,
      busyAttention: BigInt(busy?.attention ?? 0), queued: s.queued, lastStepTokens: s.lastStep?.tokens ?? 0, lastStepMs: s.lastStep?.ms ?? 0,
    };
  }

  #subscribe(): void {
    const id = this.info.workerId;
    this.#subs.push(this.#nc.subscribe(subjects.workerStep(id), { callback: (err, m) => err ? this.#log.error('step subscription', { err }) : this.#onStep(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerRing(id), { callback: (err, m) => err ? this.#log.error('ring subscription', { err }) : this.#onRing(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerSeq(id), { callback: (err, m) => err ? this.#log.error('seq subscription', { err }) : void this.#onSeq(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerMigrate(id), { callback: (err, m) => err ? this.#log.error('migrate subscription', { err }) : void this.#onMigrate(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.coordinatorLeader(), { callback: (err, m) => err ? this.#log.error('leader subscription', { err }) : this.#onLeader(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerStats(id), { callback: (err, m) => err ? this.#log.error('stats subscription', { err }) : this.#onStats(m) }));
  }

  /**
   * Counts NATS reconnects and heartbeats at once after one: steps or results sent while the
   * connection was away may be lost, and the leader need not wait for its step deadline to know.
   */
  async #watchNats(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type !== 'reconnect') continue;
      this.#reconnects++;
      this.#log.warn('NATS reconnected: steps in flight may have been lost', { reconnects: this.#reconnects });
      this.#heartbeat();
    }
  }

  #heartbeat(): void {
    if (this.#nc.isClosed()) return;
    const s = this.#host.snapshot;
    this.#nc.publish(subjects.workerHeartbeat(), encode(HeartbeatSchema, {
      stage: this.info, kvCellsUsed: s.used, sequences: s.sequences,
      counters: this.counters(), sentAtMs: BigInt(Date.now()), draining: this.#draining, load: this.load(), reconnects: this.#reconnects,
    }));
  }

  /** Takes a chunk of a step; a whole step goes to the stage thread at once, in arrival order. */
  #onStep(m: Msg): void {
    this.#io.bytesIn += BigInt(m.data.length);
    let whole;
    try {
      whole = this.#assembler.add(m.data);
    } catch (err) {
      // Without a whole header there is no one to answer: the coordinator's step deadline covers it.
      this.#log.warn('refused a step chunk', { err });
      return;
    }
    if (!whole) return;
    this.#io.steps++;
    const h = whole.header;
    if (this.#stale(h.term)) {
      this.#log.warn('dropped a step of a deposed leader', { step: h.stepId, term: h.term, newest: this.#term });
      return;
    }
    const refused = this.#guard.refuse(h.term, h.generation, h.fenceProof);
    if (refused) {
      this.#log.warn('dropped a step of an unproven fence', { step: h.stepId, why: refused });
      return;
    }
    void this.#runStep(h, whole.hidden, m);
  }

  #runStep(h: StepHeader, hidden: Float32Array, m: Msg): Promise<void> {
    const t0 = performance.now();
    const stage = startStage(this.info, h, natsContext(m.headers));
    return this.#finishStep(h, this.#host.step(h, hidden, traceCarrier(stage.context)), stage, t0);
  }

  /** Sends on what a step produced once the stage thread answers: hidden states, samples, or its failure. */
  async #finishStep(h: StepHeader, pending: Promise<StepAnswer>, stage: ReturnType<typeof startStage>, t0: number): Promise<void> {
    let failure: unknown;
    try {
      const answer = await pending;
      if ('stale' in answer) {
        this.#log.debug('dropped a step of an earlier generation of its pipeline', { step: h.stepId, generation: h.generation });
        endStage(stage, performance.now() - t0, undefined);
        return;
      }
      const out = answer.output;
      if (answer.rewrite) {
        // The first stage filled in (or dropped) the entries chained to the step this one follows.
        h.entries = answer.rewrite.entries;
        h.tokens = answer.rewrite.tokens;
      }
      h.stageMs.push(answer.ms);
      if (out.kind === 'empty') {
        this.#reply(h, { stepId: h.stepId, pipelineId: h.pipelineId, tokens: [], stageMs: [] });
      } else if (out.kind === 'forwarded') {
        // The stage thread sent it on over a same-host link itself.
        this.#io.bytesOut += BigInt(out.bytes);
        if (out.dropped) this.#log.warn('dropped a step: the stage link its pipeline\'s steps take broke (the coordinator resets the pipeline)', { step: h.stepId, next: h.route[h.hop + 1] });
      } else if (out.kind === 'hidden') {
        const next = h.route[h.hop + 1];
        if (next === undefined) throw new WorkerError('bad_step', `step ${h.stepId}: no stage after hop ${h.hop} but this stage is not the last`);
        h.hop++;
        // The trace-context headers count against NATS's max payload.
        for (const chunk of encodeStageInput(h, out.hidden, (this.#nc.info?.max_payload ?? 1 << 20) - headerBytes(stage.headers))) {
          this.#io.bytesOut += BigInt(chunk.length);
          this.#nc.publish(subjects.workerStep(next), chunk, { headers: stage.headers });
        }
      } else {
        // The ring first: the first stage may be waiting for these samples to run the next step.
        if (h.ring && h.hop > 0 && !answer.ringed) this.#ringTo(h, ringEntries(out.tokens, out.ends), null);
        this.#reply(h, { stepId: h.stepId, pipelineId: h.pipelineId, tokens: out.tokens, stageMs: h.stageMs });
      }
    } catch (err) {
      failure = err;
      const code = err instanceof WorkerError ? err.code : 'stage_failed';
      if (code === 'stage_failed') context.with(stage.context, () => this.#log.error('step failed', { step: h.stepId, err }));
      const error = { code, message: (err as Error).message, workerId: this.info.workerId };
      // A step that follows this one must not wait for samples that will not come (a first stage's
      // own failure is recorded where it ran, on its stage thread).
      if (h.ring && h.hop > 0 && !ringedFailure(err)) this.#ringTo(h, [], error);
      this.#reply(h, { stepId: h.stepId, pipelineId: h.pipelineId, error });
    }
    endStage(stage, performance.now() - t0, failure);
  }

  /** Sends a step's samples (or its failure) to the first stage of its route. */
  #ringTo(h: StepHeader, tokens: RingSample[], error: { code: string; message: string; workerId: string } | null): void {
    const first = h.route[0];
    if (first === undefined || first === this.info.workerId) return;
    this.#publish(subjects.workerRing(first), encode(RingTokensSchema, ringMessage(h, tokens, error)));
  }

  /** A last stage's samples for a step that follows theirs here. */
  #onRing(m: Msg): void {
    try {
      const r = decode(RingTokensSchema, m.data, m.subject);
      if (this.#stale(r.term)) return;
      const refused = this.#guard.refuse(r.term, r.generation, r.fenceProof);
      if (refused) {
        this.#log.warn('dropped the samples of a step of an unproven fence', { step: r.stepId, why: refused });
        return;
      }
      this.#host.ring(r.stepId, ringSamples(r.tokens, r.error !== undefined), { term: r.term, generation: r.generation });
    } catch (err) {
      this.#log.warn('refused the samples of a step', { err });
    }
  }

  /** Whether `term` is older than the newest leader's (0: an unfenced sender, such as a tool). */
  #stale(term: bigint): boolean {
    return term !== 0n && term < this.#term;
  }

  #onLeader(m: Msg): void {
    try {
      const a = decode(LeaderAnnouncementSchema, m.data, m.subject);
      if (a.term <= this.#term) return;
      if (this.#verifier && !this.#verifier.leader(a.coordinatorId, a.term, a.proof)) {
        this.#log.warn('refused a leader announcement without the coordinators\' signature', { coordinator: a.coordinatorId, term: a.term });
        return;
      }
      this.#term = a.term;
      this.#host.leader(a.term);
    } catch (err) {
      this.#log.warn('refused a leader announcement', { err });
    }
  }

  #reply(h: StepHeader, result: Parameters<typeof encode<typeof StepResultSchema>>[1]): void {
    if (!h.replySubject.startsWith('strata.v1.coordinator.result.')) {
      this.#log.warn('step with a reply subject outside the protocol', { subject: h.replySubject });
      return;
    }
    this.#publish(h.replySubject, encode(StepResultSchema, result));
  }

  /**
   * Publishes what a step produced. A step that finishes after the connection closed (the worker
   * is stopping) has no one left to tell: it is dropped, not thrown out of the step.
   */
  #publish(subject: string, data: Uint8Array): void {
    if (this.#nc.isClosed()) {
      this.#log.debug('dropped what a step produced: NATS is closed', { subject });
      return;
    }
    this.#nc.publish(subject, data);
  }

  /** Sequence operations run on the stage thread in order with the steps that came before them. */
  async #onSeq(m: Msg): Promise<void> {
    try {
      const req = decode(SeqOpRequestSchema, m.data, m.subject);
      if (this.#stale(req.term)) throw new WorkerError('stale_leader', `term ${req.term} is older than ${this.#term}: another coordinator leads`);
      const refused = this.#guard.refuse(req.term, req.generation, req.fenceProof);
      if (refused) throw new WorkerError('unproven_fence', refused);
      const fence = { term: req.term, generation: req.generation };
      const r = req.ops.some(isTierOp) ? await this.#tierOp(req.ops, fence) : await this.#host.seqOps(req.ops, fence);
      if ('stale' in r) m.respond(encode(SeqOpReplySchema, { stale: true, kvCellsUsed: this.#host.snapshot.used }));
      else m.respond(encode(SeqOpReplySchema, { posMax: r.posMax, kvCellsUsed: this.#host.snapshot.used }));
    } catch (err) {
      const code = err instanceof WorkerError ? err.code : 'bad_request';
      m.respond(encode(SeqOpReplySchema, { error: { code, message: (err as Error).message, workerId: this.info.workerId } }));
    }
  }

  /**
   * SAVE, LOAD or FORGET (alone in its request): a sequence's state to or from the tiers. Fenced
   * like the other sequence operations: an older generation's is answered stale, unapplied.
   */
  async #tierOp(ops: SeqOp[], fence: { term: bigint; generation: bigint }): Promise<{ posMax: number[] } | { stale: true }> {
    if (ops.length !== 1) throw new WorkerError('bad_request', 'a SAVE, LOAD or FORGET goes alone in its request');
    const op = ops[0]!;
    if (!op.key) throw new WorkerError('bad_request', 'a tier operation needs a key');
    if (op.kind !== SeqOpKind.FORGET && op.seq >= this.info.nSeqMax) throw new WorkerError('bad_request', `seq ${op.seq} is not below ${this.info.nSeqMax}`);
    if (op.kind === SeqOpKind.SAVE) {
      // Exported before anything else reaches the stage (the sequence's emptying follows this
      // request): no await before it. Reading a sequence needs no generation check.
      // Its highest position is asked right behind it, answered before anything later changes it.
      const exported = this.#host.exportState(op.seq, -1, -1, this.info.l0, this.info.l1);
      const [state, end] = await Promise.all([exported, this.#host.seqPosMax(op.seq)]);
      if (end < 0 || !this.#tiers.enabled) return { posMax: [-1] };
      const tier = this.#tiers.put(op.key, state);
      this.#log.debug('saved a sequence to a tier', { seq: op.seq, key: op.key, tier, bytes: state.byteLength });
      countTierOp(this.info.workerId, 'save', tier ?? 'none');
      return { posMax: [tier ? end : -1] };
    }
    const check = await this.#host.seqOps([], fence);
    if ('stale' in check) return check;
    switch (op.kind) {
      case SeqOpKind.LOAD: {
        let taken;
        try {
          taken = this.#tiers.take(op.key);
        } catch (err) {
          if (err instanceof TierMiss) {
            countTierOp(this.info.workerId, 'miss', 'none');
            throw new WorkerError('kv_tier_miss', err.message);
          }
          throw err;
        }
        countTierOp(this.info.workerId, 'load', taken.tier);
        await this.#host.importState(taken.state, op.seq);
        return { posMax: [await this.#host.seqPosMax(op.seq)] };
      }
      default:
        if (op.key === '*') this.#tiers.clear();
        else this.#tiers.delete(op.key);
        return { posMax: [-1] };
    }
  }

  async #onMigrate(m: Msg): Promise<void> {
    let out;
    try {
      const req = decode(MigrateOutRequestSchema, m.data, m.subject);
      if (this.#stale(req.term)) throw new WorkerError('stale_leader', `term ${req.term} is older than ${this.#term}: another coordinator leads`);
      const refused = this.#guard.refuse(req.term, 0n, req.fenceProof);
      if (refused) throw new WorkerError('unproven_fence', refused);
      const r = { l0: this.info.l0, l1: this.info.l1 };
      if (req.seq >= this.info.nSeqMax) throw new WorkerError('bad_request', `seq ${req.seq} is not below ${this.info.nSeqMax}`);
      if (req.l0 >= req.l1 || req.l0 < r.l0 || req.l1 > r.l1) throw new WorkerError('bad_request', `layers ${req.l0}:${req.l1} are not within ${r.l0}:${r.l1}`);
      if (!req.targetAddress) throw new WorkerError('bad_request', 'no target address');
      out = await tracePush(req, m.headers, () => pushState(this.#host, this.info.workerId, req, this.#log, this.#security));
    } catch (err) {
      const code = err instanceof WorkerError ? err.code : 'bad_request';
      out = { error: { code, message: (err as Error).message, workerId: this.info.workerId } };
    }
    m.respond(encode(MigrateOutReplySchema, out));
  }

  /** Answers at once with what the stage said last; the memory is refreshed for the next ask. */
  #onStats(m: Msg): void {
    const mem = this.#memory;
    const big = (r: Record<string, number>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, BigInt(v)]));
    m.respond(encode(StageStatsSchema, {
      stage: this.info, counters: this.counters(), kvCellsUsed: this.#host.snapshot.used, load: this.load(),
      weightsBytes: big(mem.weights), kvBytes: big(mem.kv), computeBytes: big(mem.compute),
    }));
    this.#host.memory().then((fresh) => {
      this.#memory = fresh;
    }, () => {});
  }

  /**
   * The graceful stop (SIGTERM): asks the coordinator to drain this worker, which migrates its
   * sessions to other pipelines and waits for its one-off requests, then stops. The drain is
   * forced: the worker stops anyway, so even its model's last pipeline first finishes what runs.
   * Without an answer within `drainMs` it stops anyway, and the coordinator rebuilds what was
   * left by re-prefill.
   */
  async handOff(drainMs: number): Promise<void> {
    if (drainMs > 0 && !this.#stopping) {
      const t0 = Date.now();
      try {
        const r = await request(this.#nc, subjects.coordinatorDrain(), DrainRequestSchema, { workerId: this.info.workerId, force: true }, DrainReplySchema, drainMs);
        if (r.error) this.#log.warn('the coordinator did not drain this worker', { code: r.error.code, message: r.error.message });
        else this.#log.info('drained', { migrations: r.migrations.length, left: r.failed, ms: Date.now() - t0 });
      } catch (err) {
        // No responders (503): there is no coordinator to hand off to.
        if ((err as { code?: string }).code === '503') this.#log.info('no coordinator to drain this worker');
        else this.#log.warn('no coordinator drained this worker', { err });
      }
    }
    await this.stop();
  }

  /** Stops taking work, says so in a last heartbeat, drains NATS and frees the stage. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#draining = true;
      clearInterval(this.#timer);
      this.#unobserve();
      this.#heartbeat();
      await this.#kv?.stop();
      closePushClients();
      await drainNats(this.#nc, this.#log);
      await this.#host.close();
      this.#log.info('worker stopped');
    })();
    return this.#stopping;
  }
}
