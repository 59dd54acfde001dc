// The coordinator process: the runtime around the actors. It feeds heartbeats and ticks to the
// cluster actor, keeps one scheduler per pipeline, routes generate requests to a pipeline and
// step results to their scheduler, and answers cluster queries.
import { redactUrl, type Logger } from '@strata/log';
import { natsOptions,
  CancelRequestSchema, ClusterStateSchema, DrainReplySchema, DrainRequestSchema, MigrateReplySchema, MigrateRequestSchema, MigrationListSchema, MigrationsRequestSchema, GenerateReplySchema, GenerateRequestSchema, HeartbeatSchema, StepResultSchema,
  decode, encode, isId, subjects, type GenerateReply, type GenerateRequest, type DrainReply, type MigrateReply, type MigrationInfo,
} from '@strata/wire';
import { Redis } from 'ioredis';
import { connect, type Msg, type NatsConnection } from 'nats';
import { clusterTransition, initialCluster, type ClusterEffect, type ClusterState, type PipelineView } from './cluster.ts';
import type { CoordinatorConfig } from './config.ts';
import { CoordinatorError } from './errors.ts';
import { PipelineScheduler, publishFailure, refuse, type Rebuild } from './scheduler.ts';
import { MigrationLedger, type MigrationRecord } from './ledger.ts';
import { startMigration } from './migration.ts';
import { pickRebalance } from './rebalance.ts';
import { SessionStore } from './session-store.ts';

/** A ledger record on the wire. */
function migrationInfo(r: MigrationRecord): MigrationInfo {
  return {
    $typeName: 'strata.v1.MigrationInfo', id: r.id, sessionId: r.session, fromPipeline: r.from, toPipeline: r.to, state: r.state, reason: r.reason,
    error: r.error, bytes: BigInt(r.bytes), rounds: r.rounds, copyMs: r.copyMs, holdMs: r.holdMs, pauseMs: r.pauseMs, totalMs: r.totalMs, createdMs: BigInt(r.createdMs),
    plan: r.plan, positions: r.positions,
  };
}

/** A running coordinator. stop() is idempotent. */
export class Coordinator {
  readonly id: string;
  readonly #c: CoordinatorConfig;
  readonly #nc: NatsConnection;
  readonly #redis: Redis;
  readonly #store: SessionStore;
  readonly #log: Logger;
  readonly #cluster: ClusterState = initialCluster();
  readonly #schedulers = new Map<string, PipelineScheduler>();
  readonly #ledger: MigrationLedger;
  /** session -> migration under way */
  readonly #moving = new Map<string, Promise<MigrationRecord>>();
  #timer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | null = null;

  private constructor(c: CoordinatorConfig, nc: NatsConnection, redis: Redis, log: Logger) {
    this.id = c.id;
    this.#c = c;
    this.#nc = nc;
    this.#redis = redis;
    this.#store = new SessionStore(redis, c.id);
    this.#ledger = new MigrationLedger(redis);
    this.#log = log.child({ coordinator: c.id });
  }

  /** Connects to NATS and Redis and starts serving. */
  static async start(c: CoordinatorConfig, log: Logger): Promise<Coordinator> {
    const redis = new Redis(c.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 3 });
    await redis.connect();
    let nc: NatsConnection;
    try {
      nc = await connect(natsOptions(c.natsUrl, `strata-coordinator-${c.id}`));
    } catch (err) {
      redis.disconnect();
      throw err;
    }
    const co = new Coordinator(c, nc, redis, log);
    const sub = (subject: string, fn: (m: Msg) => void, queue?: string) =>
      nc.subscribe(subject, { queue, callback: (err, m) => (err ? co.#log.error('subscription', { subject, err }) : fn(m)) });
    sub(subjects.workerHeartbeat(), (m) => co.#onHeartbeat(m));
    sub(subjects.coordinatorResult(c.id), (m) => co.#onResult(m));
    sub(subjects.coordinatorGenerate(), (m) => co.#onGenerate(m), 'coordinator');
    sub(subjects.coordinatorCancel(), (m) => co.#onCancel(m));
    sub(subjects.coordinatorCluster(), (m) => co.#onCluster(m), 'coordinator');
    sub(subjects.coordinatorMigrate(), (m) => void co.#onMigrate(m), 'coordinator');
    sub(subjects.coordinatorMigrations(), (m) => void co.#onMigrations(m), 'coordinator');
    sub(subjects.coordinatorDrain(), (m) => void co.#onDrain(m), 'coordinator');
    await co.#recoverMigrations();
    co.#timer = setInterval(() => co.#tick(), Math.min(1000, c.workerTimeoutMs / 3));
    co.#log.info('coordinator ready', { nats: redactUrl(c.natsUrl), redis: redactUrl(c.redisUrl) });
    return co;
  }

  /**
   * A pipeline whose step went unanswered (messages lost in a NATS restart, a stage that hangs)
   * starts over: a fresh scheduler empties every sequence of its stages, and every request on it
   * is rebuilt there by re-prefill, from the tokens its client has already seen.
   */
  #reset(s: PipelineScheduler): void {
    this.#log.warn('a step went unanswered: resetting the pipeline', { pipeline: s.view.id });
    this.#schedulers.delete(s.view.id);
    const orphans = s.down(`pipeline ${s.view.id} reset after an unanswered step`);
    const fresh = this.#scheduler(s.view);
    for (const r of orphans) fresh.rebuild(r);
  }

  #scheduler(view: PipelineView): PipelineScheduler {
    const s = new PipelineScheduler(view, {
      nc: this.#nc, resultSubject: subjects.coordinatorResult(this.id), store: this.#store, log: this.#log,
      options: {
        prefillChunk: this.#c.prefillChunk, stepTimeoutMs: this.#c.stepTimeoutMs, seqOpTimeoutMs: this.#c.seqOpTimeoutMs,
        defaultMaxTokens: this.#c.defaultMaxTokens, maxQueue: this.#c.maxQueue, queueFactor: this.#c.queueFactor,
      },
    });
    this.#schedulers.set(view.id, s);
    return s;
  }

  #apply(effects: ClusterEffect[]): void {
    for (const e of effects) {
      if (e.type === 'pipeline_up') {
        this.#scheduler(e.pipeline);
        this.#log.info('pipeline up', { pipeline: e.pipeline.id, model: e.pipeline.modelId, layers: e.pipeline.stages.map((s) => `${s.l0}:${s.l1}`).join(',') });
      } else {
        const down = this.#schedulers.get(e.pipeline.id);
        this.#schedulers.delete(e.pipeline.id);
        this.#log.warn('pipeline down', { pipeline: e.pipeline.id, reason: e.reason });
        for (const r of down?.down(e.reason) ?? []) this.#replace(r, e.pipeline.fingerprint, e.reason);
      }
    }
  }

  /**
   * Migrations a previous coordinator left unfinished: the epoch claim is the commit point, so one
   * whose session is now owned by its target is done, and any other aborted. (The target's
   * sequence is emptied when its pipeline comes up: a new coordinator clears every sequence.)
   */
  async #recoverMigrations(): Promise<void> {
    for (const m of await this.#ledger.active()) {
      const s = await this.#store.get(m.session);
      const committed = m.state === 'switching' && s?.pipeline === m.to;
      await this.#ledger.update(m.id, m.session, committed ? 'done' : 'aborted', committed ? {} : { error: `coordinator ${m.owner} stopped during the migration (${m.state})` });
      this.#log.warn('finished a migration from the ledger', { migration: m.id, state: committed ? 'done' : 'aborted' });
    }
  }

  async #onMigrate(m: Msg): Promise<void> {
    let reply: MigrateReply;
    try {
      const req = decode(MigrateRequestSchema, m.data, m.subject);
      const rec = await this.migrate(req.sessionId, req.toPipeline, req.reason || 'operator', req.wait);
      reply = { $typeName: 'strata.v1.MigrateReply', migration: migrationInfo(rec) };
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'bad_request';
      reply = { $typeName: 'strata.v1.MigrateReply', error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId: '' } };
    }
    m.respond(encode(MigrateReplySchema, reply));
  }

  /** Moves a session to `to` (or the least loaded other pipeline of its model); with `wait`, resolves when it ended. */
  async migrate(session: string, to: string, reason: string, wait: boolean): Promise<MigrationRecord> {
    if (!isId(session)) throw new CoordinatorError('bad_request', 'a session id is 1-128 of A-Z a-z 0-9 _ -');
    if (this.#moving.has(session)) throw new CoordinatorError('session_busy', `session ${session} is already moving`);
    const src = [...this.#schedulers.values()].find((s) => s.session(session) !== null);
    if (!src) throw new CoordinatorError('not_found', `no pipeline holds session ${session}`);
    const others = [...this.#schedulers.values()].filter((s) => s !== src && s.view.fingerprint === src.view.fingerprint);
    const dst = to ? this.#schedulers.get(to) : others.reduce<PipelineScheduler | undefined>((a, b) => (!a || b.load < a.load ? b : a), undefined);
    if (!dst) throw new CoordinatorError('no_pipeline', to ? `no pipeline ${to}` : `no other pipeline serves ${src.view.modelId}`);
    if (dst === src) throw new CoordinatorError('bad_request', `session ${session} is already on ${to}`);
    const mig = await startMigration({ nc: this.#nc, ledger: this.#ledger, store: this.#store, log: this.#log, owner: this.id, options: this.#c.migration }, session, src, dst, reason);
    const finished = mig.finished.finally(() => this.#moving.delete(session));
    this.#moving.set(session, finished);
    return wait ? finished : mig.record;
  }

  async #onDrain(m: Msg): Promise<void> {
    let reply: DrainReply;
    try {
      const req = decode(DrainRequestSchema, m.data, m.subject);
      reply = await this.drain(req.workerId);
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'bad_request';
      reply = { $typeName: 'strata.v1.DrainReply', pipelineId: '', migrations: [], waited: 0, failed: 0, error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId: '' } };
    }
    m.respond(encode(DrainReplySchema, reply));
  }

  /**
   * Moves every session off the pipeline of `workerId` and waits for its one-off requests, so the
   * worker can stop: the pipeline takes no new request from now on.
   */
  async drain(workerId: string): Promise<DrainReply> {
    const pid = this.#cluster.memberOf.get(workerId);
    const src = pid === undefined ? undefined : this.#schedulers.get(pid);
    if (!src) throw new CoordinatorError('not_found', `worker ${workerId} is in no pipeline`);
    src.draining = true;
    this.#log.info('draining', { pipeline: src.view.id, worker: workerId });
    const records: MigrationRecord[] = [];
    for (const session of src.sessionIds()) {
      const moving = this.#moving.get(session);
      if (moving) {
        records.push(await moving);
        continue;
      }
      try {
        records.push(await this.migrate(session, '', `drain ${workerId}`, true));
      } catch (err) {
        this.#log.warn('a session could not leave a draining pipeline', { session, err });
      }
    }
    let waited = 0;
    for (let i = 0; src.oneOff > 0 && i < 600; i++) {
      waited = Math.max(waited, src.oneOff);
      await new Promise((r) => setTimeout(r, 100));
    }
    const failed = src.sessionIds().length;
    return { $typeName: 'strata.v1.DrainReply', pipelineId: src.view.id, migrations: records.map(migrationInfo), waited, failed };
  }

  /**
   * The rebalancer: when a worker's KV occupancy passes the high watermark, the largest session of
   * its pipeline that fits moves to the emptiest other pipeline of the model, so long as that one
   * stays below the low watermark with it.
   */
  #rebalance(): void {
    if (this.#moving.size > 0) return;
    const loads = [...this.#schedulers.values()].map((s) => ({
      id: s.view.id, fingerprint: s.view.fingerprint, draining: s.draining,
      occupancy: Math.max(...s.view.stages.map((st) => {
        const w = this.#cluster.workers.get(st.workerId);
        return w && st.kvCells > 0 ? w.kvCellsUsed / st.kvCells : 0;
      })),
      cells: Math.min(...s.view.stages.map((st) => st.kvCells)),
      sessions: s.sessionIds().map((id) => ({ id, cells: s.session(id)?.done ?? 0 })),
    }));
    const move = pickRebalance(loads, this.#c.rebalanceHigh, this.#c.rebalanceLow);
    if (!move) return;
    this.#log.info('rebalancing', { ...move });
    void this.migrate(move.session, move.to, `rebalance: ${(move.occupancy * 100).toFixed(0)}% of KV cells used`, false).catch((err: unknown) => this.#log.warn('rebalance failed', { err }));
  }

  async #onMigrations(m: Msg): Promise<void> {
    try {
      const req = decode(MigrationsRequestSchema, m.data, m.subject);
      const list = await this.#ledger.list(Math.min(req.limit || 100, 1000));
      m.respond(encode(MigrationListSchema, { migrations: list.map(migrationInfo) }));
    } catch (err) {
      this.#log.warn('migrations query failed', { err });
      m.respond(encode(MigrationListSchema, {}));
    }
  }

  /** Re-places a request whose pipeline went down on the least loaded healthy one of its model. */
  #replace(r: Rebuild, fingerprint: string, reason: string): void {
    const target = [...this.#schedulers.values()].filter((s) => s.view.fingerprint === fingerprint && !s.draining)
      .reduce<PipelineScheduler | undefined>((a, b) => (!a || b.load < a.load ? b : a), undefined);
    if (target) {
      this.#log.warn('rebuilding a request on another pipeline', { request: r.request.req.requestId, to: target.view.id });
      target.rebuild(r);
      return;
    }
    this.#failRebuild(r, `${reason}, and no other pipeline serves the model`);
  }

  /** Ends a request that cannot be rebuilt with a retriable error. */
  #failRebuild(r: Rebuild, message: string): void {
    publishFailure(this.#nc, r.request.req, r.jobs.map((j) => ({ index: j.index, offset: j.generated.length })), 'pipeline_down', message);
  }

  #onHeartbeat(m: Msg): void {
    let hb;
    try {
      hb = decode(HeartbeatSchema, m.data, m.subject);
    } catch (err) {
      this.#log.warn('refused a heartbeat', { err });
      return;
    }
    if (!hb.stage || !isId(hb.stage.workerId) || hb.stage.l0 >= hb.stage.l1 || hb.stage.l1 > hb.stage.nLayer) {
      this.#log.warn('refused a heartbeat with a bad stage', { worker: hb.stage?.workerId });
      return;
    }
    this.#apply(clusterTransition(this.#cluster, { type: 'heartbeat', info: hb.stage, kvCellsUsed: hb.kvCellsUsed, draining: hb.draining, nowMs: Date.now() }, this.#c).effects);
  }

  #tick(): void {
    const now = Date.now();
    this.#apply(clusterTransition(this.#cluster, { type: 'tick', nowMs: now }, this.#c).effects);
    for (const s of [...this.#schedulers.values()]) if (s.stalled(now)) this.#reset(s);
    this.#rebalance();
  }

  #onResult(m: Msg): void {
    try {
      const r = decode(StepResultSchema, m.data, m.subject);
      this.#schedulers.get(r.pipelineId)?.onResult(r);
    } catch (err) {
      this.#log.warn('refused a step result', { err });
    }
  }

  #onGenerate(m: Msg): void {
    let reply: GenerateReply;
    try {
      const req = decode(GenerateRequestSchema, m.data, m.subject);
      reply = this.#admit(req);
    } catch (err) {
      reply = refuse('bad_request', (err as Error).message);
    }
    m.respond(encode(GenerateReplySchema, reply));
  }

  /** Checks a request and hands it to the pipeline that holds its session or is least loaded. */
  #admit(req: GenerateRequest): GenerateReply {
    if (!isId(req.requestId)) return refuse('bad_request', 'a request id is 1-128 of A-Z a-z 0-9 _ -');
    if (req.eventsSubject !== subjects.gatewayEvents(req.requestId)) return refuse('bad_request', 'events go to the request\'s own gateway subject');
    if (req.prompt.length === 0) return refuse('bad_request', 'the prompt is empty');
    if (req.sessionId && Math.max(1, req.n) > 1) return refuse('bad_request', 'a session continues one conversation: n must be 1');
    const all = [...this.#schedulers.values()].filter((s) => s.view.modelId === req.modelId);
    const candidates = all.filter((s) => !s.draining);
    if (candidates.length === 0) return refuse('no_pipeline', `no pipeline serves model '${req.modelId}'${all.length > 0 ? ' (all are draining)' : ''}`);
    if (req.sessionId && all.some((s) => s.draining && s.holds(req.sessionId))) return refuse('session_busy', `session ${req.sessionId} is moving off a draining pipeline; retry in a moment`);
    const nVocab = candidates[0]!.view.stages[0]!.nVocab;
    for (const t of req.prompt) if (t < 0 || t >= nVocab) return refuse('bad_request', `token ${t} is outside the vocabulary of ${nVocab}`);
    const home = req.sessionId ? candidates.find((s) => s.holds(req.sessionId)) : undefined;
    // Least loaded; ties go to the lowest pipeline id, so placement is predictable.
    const target = home ?? candidates.reduce((a, b) => (b.load < a.load || (b.load === a.load && b.view.id < a.view.id) ? b : a));
    return target.admit(req);
  }

  #onCancel(m: Msg): void {
    try {
      const { requestId, indices } = decode(CancelRequestSchema, m.data, m.subject);
      for (const s of this.#schedulers.values()) if (s.cancel(requestId, indices)) break;
    } catch (err) {
      this.#log.warn('refused a cancel', { err });
    }
  }

  #onCluster(m: Msg): void {
    m.respond(encode(ClusterStateSchema, {
      coordinatorId: this.id,
      pipelines: [...this.#schedulers.values()].map((s) => ({
        id: s.view.id, modelId: s.view.modelId, modelFingerprint: s.view.fingerprint, stages: s.view.stages,
        sessions: s.sessions, seqsUsed: s.seqsUsed, queued: s.queued,
      })),
      workers: [...this.#cluster.workers.values()].map((w) => ({
        stage: w.info, kvCellsUsed: w.kvCellsUsed, lastSeenMs: BigInt(w.lastSeenMs), pipelineId: this.#cluster.memberOf.get(w.info.workerId) ?? '', draining: w.draining,
      })),
    }));
  }

  /** Stops taking requests, fails what runs with a retriable error, drains NATS, closes Redis. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#timer);
      for (const s of this.#schedulers.values()) for (const r of s.down('the coordinator is stopping')) this.#failRebuild(r, 'the coordinator is stopping');
      try {
        await this.#nc.drain();
      } catch (err) {
        this.#log.warn('NATS drain failed', { err });
      }
      await this.#redis.quit().catch(() => this.#redis.disconnect());
      this.#log.info('coordinator stopped');
    })();
    return this.#stopping;
  }
}
