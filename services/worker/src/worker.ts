// The worker process: one stage on NATS. It heartbeats what it serves, runs the micro-batches
// routed to it, forwards activations to the next stage, and answers sequence operations and
// stats requests. Steps run one at a time in arrival order (evaluation is synchronous).
// Coordinators' messages carry their leader term: a stage drops whatever comes with a term below
// the newest leader announced, fencing out a deposed leader. (Only announcements raise it: a
// garbled step or sequence operation cannot fence the real leader out.)
import { Vocab } from '@strata/ggml';
import { redactUrl, type Logger } from '@strata/log';
import { Stage, parseRange, readHParams } from '@strata/model';
import { GgufFile } from '@strata/gguf';
import { natsOptions,
  DrainReplySchema, DrainRequestSchema, HeartbeatSchema, LeaderAnnouncementSchema, MigrateOutReplySchema, MigrateOutRequestSchema, SeqOpReplySchema, SeqOpRequestSchema, StageInputAssembler, StageStatsSchema, StepResultSchema,
  decode, encode, encodeStageInput, request, subjects, type StageCounters, type StageInfo, type StepHeader,
} from '@strata/wire';
import { connect, type Msg, type NatsConnection, type Subscription } from 'nats';
import type { WorkerConfig } from './config.ts';
import { WorkerError } from './errors.ts';
import { SamplerSet } from './samplers.ts';
import { KvTransferServer, closePushClients, loadSecurity, pushState, type TransferSecurity } from './kv-transfer.ts';
import { StepRunner, stepErrorCode } from './step-runner.ts';
import { endStage, observeKvCells, startStage, tracePush } from './telemetry.ts';
import { context } from '@opentelemetry/api';
import { headerBytes } from '@strata/telemetry';

/** Steps whose chunks stop arriving for this long are dropped (milliseconds). */
const PARTIAL_STEP_MS = 30_000;

/** A running worker. stop() drains and frees everything; it is idempotent. */
export class Worker {
  readonly info: StageInfo;
  readonly #runner: StepRunner;
  readonly #nc: NatsConnection;
  readonly #log: Logger;
  readonly #vocab: Vocab | null;
  readonly #samplers: SamplerSet | null;
  readonly #assembler = new StageInputAssembler();
  readonly #subs: Subscription[] = [];
  #kv: KvTransferServer | null = null;
  #security: TransferSecurity = { token: null, tls: null };
  readonly #io = { steps: 0n, bytesIn: 0n, bytesOut: 0n };
  #timer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | null = null;
  #draining = false;
  /** stops reporting KV occupancy to metrics */
  #unobserve: () => void = () => {};
  /** the newest leader's term */
  #term = 0n;

  private constructor(c: WorkerConfig, stage: Stage, vocab: Vocab | null, nc: NatsConnection, log: Logger) {
    this.#nc = nc;
    this.#log = log;
    this.#vocab = vocab;
    this.#samplers = stage.isLast ? new SamplerSet(stage.hp.nVocab, vocab) : null;
    this.#runner = new StepRunner(stage, this.#samplers, { workerId: c.id, nSeqMax: c.nSeqMax, maxBatch: c.maxBatch });
    const hp = stage.hp;
    this.info = {
      $typeName: 'strata.v1.StageInfo',
      workerId: c.id, modelFingerprint: hp.fingerprint, modelId: c.modelId, nLayer: hp.nLayer,
      l0: stage.range.l0, l1: stage.range.l1, device: c.device, kvCells: stage.cells.size, kvStreams: 1,
      nSeqMax: c.nSeqMax, maxBatch: c.maxBatch, nVocab: hp.nVocab, nEmbd: hp.nEmbd, nCtxTrain: hp.nCtxTrain,
      startedAtMs: BigInt(Date.now()), grpcAddress: '', kvType: c.kvTypeName, group: c.group,
    };
  }

  /** Loads the stage, connects to NATS, subscribes and starts heartbeating. */
  static async start(c: WorkerConfig, log: Logger): Promise<Worker> {
    const file = GgufFile.open(c.model);
    let stage: Stage | undefined;
    let vocab: Vocab | null = null;
    try {
      const hp = readHParams(file);
      const range = c.layers ? parseRange(c.layers) : { l0: 0, l1: hp.nLayer };
      stage = Stage.load(file, hp, { model: c.model, range, threads: c.threads, device: c.device, ctxSize: c.ctxSize, kvType: c.kvType, maxBatch: c.maxBatch });
      if (stage.isLast) vocab = Vocab.load(c.model);
    } catch (err) {
      stage?.dispose();
      throw err;
    } finally {
      file.close();
    }
    let nc: NatsConnection;
    try {
      nc = await connect(natsOptions(c.natsUrl, `strata-worker-${c.id}`));
    } catch (err) {
      stage.dispose();
      vocab?.dispose();
      throw err;
    }
    const w = new Worker(c, stage, vocab, nc, log.child({ worker: c.id }));
    try {
      w.#security = loadSecurity(c);
      w.#kv = await KvTransferServer.start({ security: w.#security, host: c.grpcHost, port: c.grpcPort, workerId: c.id, nSeqMax: c.nSeqMax, stage, log: w.#log, maxBlobBytes: c.transferMaxBlobBytes, onChange: () => w.#heartbeat() });
    } catch (err) {
      await w.stop();
      throw err;
    }
    w.info.grpcAddress = c.grpcAdvertise ?? w.#kv.address;
    w.#subscribe();
    w.#unobserve = observeKvCells(c.id, () => ({ used: w.#runner.stage.cells.used, total: w.#runner.stage.cells.size }));
    w.#heartbeat();
    w.#timer = setInterval(() => {
      w.#heartbeat();
      for (const id of w.#assembler.prune(PARTIAL_STEP_MS)) w.#log.warn('dropped a step whose chunks stopped coming', { step: id });
    }, c.heartbeatMs);
    w.#log.info('worker ready', { layers: `${w.info.l0}:${w.info.l1}`, model: c.modelId, kvCells: w.info.kvCells, nats: redactUrl(c.natsUrl) });
    return w;
  }

  /** the stage's counters and the worker's traffic */
  counters(): StageCounters {
    const c = this.#runner.stage.counters;
    return {
      $typeName: 'strata.v1.StageCounters',
      batches: BigInt(c.batches), tokens: BigInt(c.tokens), graphReuses: BigInt(c.graphReuses), shifts: BigInt(c.shifts),
      defrags: BigInt(c.defrags), swaPruned: BigInt(c.swaPruned), steps: this.#io.steps, bytesIn: this.#io.bytesIn, bytesOut: this.#io.bytesOut,
    };
  }

  #subscribe(): void {
    const id = this.info.workerId;
    this.#subs.push(this.#nc.subscribe(subjects.workerStep(id), { callback: (err, m) => err ? this.#log.error('step subscription', { err }) : this.#onStep(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerSeq(id), { callback: (err, m) => err ? this.#log.error('seq subscription', { err }) : this.#onSeq(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerMigrate(id), { callback: (err, m) => err ? this.#log.error('migrate subscription', { err }) : void this.#onMigrate(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.coordinatorLeader(), { callback: (err, m) => err ? this.#log.error('leader subscription', { err }) : this.#onLeader(m) }));
    this.#subs.push(this.#nc.subscribe(subjects.workerStats(id), { callback: (err, m) => err ? this.#log.error('stats subscription', { err }) : this.#onStats(m) }));
  }

  #heartbeat(): void {
    if (this.#nc.isClosed()) return;
    const cells = this.#runner.stage.cells;
    this.#nc.publish(subjects.workerHeartbeat(), encode(HeartbeatSchema, {
      stage: this.info, kvCellsUsed: cells.used, sequences: countSequences(this.#runner.stage, this.info.nSeqMax),
      counters: this.counters(), sentAtMs: BigInt(Date.now()), draining: this.#draining,
    }));
  }

  #onStep(m: Msg): void {
    this.#io.bytesIn += BigInt(m.data.length);
    let whole;
    try {
      whole = this.#assembler.add(m.data);
    } catch (err) {
      // Without a whole header there is no one to answer: the coordinator's step timeout covers it.
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
    const t0 = performance.now();
    const stage = startStage(this.info, h, m.headers);
    let failure: unknown;
    try {
      const out = this.#runner.run(h, whole.hidden);
      h.stageMs.push(performance.now() - t0);
      if (out.kind === 'hidden') {
        const next = h.route[h.hop + 1];
        if (next === undefined) throw new WorkerError('bad_step', `step ${h.stepId}: no stage after hop ${h.hop} but this stage is not the last`);
        h.hop++;
        // The trace-context headers count against NATS's max payload.
        for (const chunk of encodeStageInput(h, out.hidden, (this.#nc.info?.max_payload ?? 1 << 20) - headerBytes(stage.headers))) {
          this.#io.bytesOut += BigInt(chunk.length);
          this.#nc.publish(subjects.workerStep(next), chunk, { headers: stage.headers });
        }
      } else {
        this.#reply(h, { stepId: h.stepId, pipelineId: h.pipelineId, tokens: out.tokens, stageMs: h.stageMs });
      }
    } catch (err) {
      failure = err;
      const code = stepErrorCode(err);
      if (code === 'stage_failed') context.with(stage.context, () => this.#log.error('step failed', { step: h.stepId, err }));
      this.#reply(h, { stepId: h.stepId, pipelineId: h.pipelineId, error: { code, message: (err as Error).message, workerId: this.info.workerId } });
    }
    endStage(stage, performance.now() - t0, failure);
  }

  /** Whether `term` is older than the newest leader's (0: an unfenced sender, such as a tool). */
  #stale(term: bigint): boolean {
    return term !== 0n && term < this.#term;
  }

  #onLeader(m: Msg): void {
    try {
      const { term } = decode(LeaderAnnouncementSchema, m.data, m.subject);
      if (term > this.#term) this.#term = term;
    } catch (err) {
      this.#log.warn('refused a leader announcement', { err });
    }
  }

  #reply(h: StepHeader, result: Parameters<typeof encode<typeof StepResultSchema>>[1]): void {
    if (!h.replySubject.startsWith('strata.v1.coordinator.result.')) {
      this.#log.warn('step with a reply subject outside the protocol', { subject: h.replySubject });
      return;
    }
    this.#nc.publish(h.replySubject, encode(StepResultSchema, result));
  }

  #onSeq(m: Msg): void {
    try {
      const req = decode(SeqOpRequestSchema, m.data, m.subject);
      if (this.#stale(req.term)) throw new WorkerError('stale_leader', `term ${req.term} is older than ${this.#term}: another coordinator leads`);
      const posMax = this.#runner.seqOps(req.ops);
      m.respond(encode(SeqOpReplySchema, { posMax, kvCellsUsed: this.#runner.stage.cells.used }));
    } catch (err) {
      const code = err instanceof WorkerError ? err.code : 'bad_request';
      m.respond(encode(SeqOpReplySchema, { error: { code, message: (err as Error).message, workerId: this.info.workerId } }));
    }
  }

  async #onMigrate(m: Msg): Promise<void> {
    let out;
    try {
      const req = decode(MigrateOutRequestSchema, m.data, m.subject);
      if (this.#stale(req.term)) throw new WorkerError('stale_leader', `term ${req.term} is older than ${this.#term}: another coordinator leads`);
      const r = this.#runner.stage.range;
      if (req.seq >= this.info.nSeqMax) throw new WorkerError('bad_request', `seq ${req.seq} is not below ${this.info.nSeqMax}`);
      if (req.l0 >= req.l1 || req.l0 < r.l0 || req.l1 > r.l1) throw new WorkerError('bad_request', `layers ${req.l0}:${req.l1} are not within ${r.l0}:${r.l1}`);
      if (!req.targetAddress) throw new WorkerError('bad_request', 'no target address');
      out = await tracePush(req, m.headers, () => pushState(this.#runner.stage, this.info.workerId, req, this.#log, this.#security));
    } catch (err) {
      const code = err instanceof WorkerError ? err.code : 'bad_request';
      out = { error: { code, message: (err as Error).message, workerId: this.info.workerId } };
    }
    m.respond(encode(MigrateOutReplySchema, out));
  }

  #onStats(m: Msg): void {
    const mem = this.#runner.stage.memory();
    const big = (r: Record<string, number>) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, BigInt(v)]));
    m.respond(encode(StageStatsSchema, {
      stage: this.info, counters: this.counters(), kvCellsUsed: this.#runner.stage.cells.used,
      weightsBytes: big(mem.weights), kvBytes: big(mem.kv), computeBytes: big(mem.compute),
    }));
  }

  /**
   * The graceful stop (SIGTERM): asks the coordinator to drain this worker, which migrates its
   * sessions to other pipelines and waits for its one-off requests, then stops. Without an answer
   * within `drainMs` it stops anyway, and the coordinator rebuilds what was left by re-prefill.
   */
  async handOff(drainMs: number): Promise<void> {
    if (drainMs > 0 && !this.#stopping) {
      const t0 = Date.now();
      try {
        const r = await request(this.#nc, subjects.coordinatorDrain(), DrainRequestSchema, { workerId: this.info.workerId }, DrainReplySchema, drainMs);
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
      try {
        await this.#nc.drain();
      } catch (err) {
        this.#log.warn('NATS drain failed', { err });
      }
      this.#samplers?.dispose();
      this.#runner.stage.dispose();
      this.#vocab?.dispose();
      this.#log.info('worker stopped');
    })();
    return this.#stopping;
  }
}

function countSequences(stage: Stage, nSeqMax: number): number {
  let n = 0;
  for (let s = 0; s < nSeqMax; s++) if (stage.seqPosMax(s) >= 0) n++;
  return n;
}
