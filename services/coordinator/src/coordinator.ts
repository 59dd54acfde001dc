// The coordinator process: the runtime around the actors (docs/architecture.md). It decodes what
// comes in, routes it, encodes the answers, and leads: heartbeats and ticks go to the cluster
// actor (cluster.ts), which says when pipelines come up and go down; each pipeline gets a
// scheduler (scheduler.ts, around the pipeline's pure core); generate requests go where placement
// (placement.ts) says, step results to their pipeline's scheduler, migrations to the migrator
// (migrator.ts), drains to the drainer (drainer.ts); cluster and session queries are answered here.
//
// Coordinators race for a Redis lease (lease.ts): the holder leads, the others stand by, watching
// heartbeats so that they know the cluster when their turn comes. A new leader announces itself
// with a higher term; gateways then hand it the requests the old one had accepted (with what each
// choice has streamed) and it rebuilds them by re-prefill.
import { readFileSync } from 'node:fs';
import { redactUrl, type Logger } from '@strata/log';
import { connectNats, drainNats,
  CancelRequestSchema, ClusterStateSchema, LeaderAnnouncementSchema, DrainReplySchema, DrainRequestSchema, MigrateReplySchema, MigrateRequestSchema, MigrationListSchema, MigrationsRequestSchema, SessionListSchema, SessionsRequestSchema, GenerateReplySchema, GenerateRequestSchema, HeartbeatSchema, StepResultSchema,
  FenceSigner, UndrainReplySchema, UndrainRequestSchema,
  decode, encode, isGatewayBatch, isId, isSessionKey, subjects, type GenerateReply, type GenerateRequest, type DrainReply, type MigrateReply, type UndrainReply,
} from '@strata/wire';
import { Redis } from 'ioredis';
import type { Msg, NatsConnection, Subscription } from 'nats';
import { clusterTransition, initialCluster, type ClusterEffect, type ClusterState, type PipelineView } from './cluster.ts';
import type { CoordinatorConfig } from './config.ts';
import { DrainBook } from './drain-book.ts';
import { Drainer } from './drainer.ts';
import { CoordinatorError } from './errors.ts';
import { LeaderLease } from './lease.ts';
import { RecentIds } from './recent-ids.ts';
import { redisOptions } from './redis-url.ts';
import { encodeEvent, encodeEvents, eventsTo, failureEvents, refuse } from './replies.ts';
import type { Blame, Rebuild } from './pipeline-core.ts';
import { PipelineScheduler } from './scheduler.ts';
import { MigrationLedger } from './ledger.ts';
import { migrationInfo } from './migration.ts';
import { Migrator } from './migrator.ts';
import { placeRebuild, placeRequest } from './placement.ts';
import { SessionStore } from './session-store.ts';
import { CostBook, judgeLoad } from './step-cost.ts';
import { listSessions } from './session-list.ts';
import { endRequest, observeSlowWorkers, tracedAdmit } from './telemetry.ts';
import { context } from '@opentelemetry/api';
import { natsContext } from '@strata/telemetry';

/** ids of ended requests a coordinator remembers (a gateway asks again within seconds) */
const ENDED_KEPT = 4096;

/** A running coordinator. stop() is idempotent. */
export class Coordinator {
  readonly id: string;
  readonly #c: CoordinatorConfig;
  readonly #nc: NatsConnection;
  readonly #redis: Redis;
  readonly #store: SessionStore;
  /** signs terms and generations (--term-key-file); null: they go unsigned */
  readonly #signer: FenceSigner | null;
  readonly #proof = (term: bigint, generation: bigint): Uint8Array => this.#signer?.fence(term, generation) ?? new Uint8Array(0);
  readonly #log: Logger;
  readonly #cluster: ClusterState = initialCluster();
  readonly #schedulers = new Map<string, PipelineScheduler>();
  /** what steps cost each worker's stage */
  readonly #costs = new CostBook();
  readonly #migrator: Migrator;
  readonly #drainer: Drainer;
  readonly #lease: LeaderLease;
  readonly #startedMs = Date.now();
  /** subscriptions only the leader holds */
  #leaderSubs: Subscription[] = [];
  #leading = false;
  /** times this process's NATS connection came back (its announcements carry it) */
  #reconnects = 0;
  /** ids of requests that ended here lately: one asked again is not run twice */
  readonly #ended = new RecentIds(ENDED_KEPT);
  #campaigning = false;
  /** The latest lead taken, done once it subscribed to the leader's subjects */
  #leadTask: Promise<void> = Promise.resolve();
  #timer: NodeJS.Timeout | undefined;
  /** stops reporting slow workers to metrics */
  #unobserve: () => void = () => {};
  #leaseTimer: NodeJS.Timeout | undefined;
  #stopping: Promise<void> | null = null;

  private constructor(c: CoordinatorConfig, nc: NatsConnection, redis: Redis, signer: FenceSigner | null, log: Logger) {
    this.id = c.id;
    this.#c = c;
    this.#nc = nc;
    this.#redis = redis;
    this.#store = new SessionStore(redis, c.id, c.sessionTtlS * 1000);
    this.#signer = signer;
    this.#lease = new LeaderLease(redis, c.id, c.leaseMs, redisOptions(c.redisUrl).sentinel);
    this.#log = log.child({ coordinator: c.id });
    this.#migrator = new Migrator({
      nc, ledger: new MigrationLedger(redis), store: this.#store, log: this.#log, owner: c.id, options: c.migration, term: () => this.#lease.term, proof: this.#proof,
      schedulers: this.#schedulers, cluster: this.#cluster, rebalance: { high: c.rebalanceHigh, low: c.rebalanceLow },
    });
    this.#drainer = new Drainer({
      book: new DrainBook(redis), cluster: this.#cluster, schedulers: this.#schedulers, moving: this.#migrator.moving,
      migrate: (session, reason) => this.#migrator.migrate(session, '', reason, true), log: this.#log,
    });
  }

  /** Whether this coordinator leads now, and its term (0 when standing by). */
  get term(): number {
    return this.#leading ? this.#lease.term : 0;
  }

  /** Connects to NATS and Redis and starts serving. */
  static async start(c: CoordinatorConfig, log: Logger): Promise<Coordinator> {
    const signer = c.termKeyFile ? FenceSigner.fromPem(readFileSync(c.termKeyFile)) : null;
    if (!signer) log.warn('leader terms are not signed (--term-key-file): any client allowed to publish to workers can fence this coordinator out');
    const { sentinel: _sentinel, ...redisOpts } = redisOptions(c.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 3 });
    const redis = new Redis(redisOpts);
    await redis.connect();
    // ioredis reconnects by itself; without a listener its errors would be 'unhandled'.
    let redisDown = false;
    redis.on('error', (err: Error) => {
      if (!redisDown) log.warn('Redis connection lost: reconnecting', { err: err.message });
      redisDown = true;
    });
    redis.on('ready', () => {
      if (redisDown) log.info('Redis reconnected');
      redisDown = false;
    });
    const nc = await connectNats(c.natsUrl, `strata-coordinator-${c.id}`, () => redis.disconnect());
    const co = new Coordinator(c, nc, redis, signer, log);
    // Standbys watch heartbeats too: they know the cluster when they take over.
    co.#sub(subjects.workerHeartbeat(), (m) => co.#onHeartbeat(m));
    co.#timer = setInterval(() => co.#tick(), Math.min(1000, c.workerTimeoutMs / 3));
    co.#unobserve = observeSlowWorkers(() => [...co.#cluster.workers.values()].map((w) => ({ worker: w.info.workerId, slow: judgeLoad(w.load, co.#costs.stage(w.info.workerId)).slow })));
    co.#leaseTimer = setInterval(() => void co.#campaign(), c.leaseMs / 3);
    void co.#watchNats();
    await co.#campaign();
    await co.#leadTask;
    co.#log.info('coordinator ready', { role: co.#leading ? 'leader' : 'standby', term: co.term, nats: redactUrl(c.natsUrl), redis: redactUrl(c.redisUrl) });
    return co;
  }

  /**
   * After NATS reconnects, steps in flight may have been lost with the old connection (or the
   * server): the pipelines that had any start over at once rather than at the step timeout. So
   * may events: the leader announces itself at once, counting the reconnect, and the gateways
   * start their running requests over from what their clients have (a request's last event,
   * lost, would otherwise leave its client waiting with nothing in flight anywhere).
   */
  async #watchNats(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type !== 'reconnect') continue;
      this.#reconnects++;
      if (!this.#leading) continue;
      for (const sc of [...this.#schedulers.values()]) if (sc.inFlight > 0) this.#reset(sc, 'NATS reconnected with steps in flight', 'none');
      this.#announce();
    }
  }

  #sub(subject: string, fn: (m: Msg) => void, queue?: string): Subscription {
    return this.#nc.subscribe(subject, { queue, callback: (err, m) => (err ? this.#log.error('subscription', { subject, err }) : fn(m)) });
  }

  /** Renews the lease (leader) or tries to take it (standby). */
  async #campaign(): Promise<void> {
    if (this.#campaigning || this.#stopping) return;
    this.#campaigning = true;
    try {
      await this.#lease.present();
      if (this.#leading) {
        // Redis unreachable throws: the leader goes on, since no standby can take the lease
        // either; one that can and does raises the term, and stages fence this leader out.
        if (await this.#lease.renew()) this.#announce();
        else this.#standDown('another coordinator holds the lease');
      } else if (Date.now() - this.#startedMs >= this.#c.workerTimeoutMs / 2) {
        // (A fresh process first listens to heartbeats for a while, to know the pipelines.)
        const term = await this.#lease.acquire();
        // Not awaited: the next ticks renew the lease while the new leader reads Redis.
        if (term > 0) this.#leadTask = this.#lead(term);
      }
    } catch (err) {
      this.#log.warn('the leader lease could not be checked', { err });
    } finally {
      this.#campaigning = false;
    }
  }

  #announce(): void {
    const term = BigInt(this.#lease.term);
    this.#nc.publish(subjects.coordinatorLeader(), encode(LeaderAnnouncementSchema, { coordinatorId: this.id, term, proof: this.#signer?.leader(this.id, term) ?? new Uint8Array(0), reconnects: this.#reconnects }));
  }

  /** Takes the lead: the pipelines seen so far get schedulers (emptying their stages), then work comes. */
  async #lead(term: number): Promise<void> {
    this.#leading = true;
    this.#log.info('leading', { term });
    // Announced first: stages raise their term from announcements, before the new schedulers'
    // first sequence operations reach them.
    this.#announce();
    for (const p of this.#cluster.pipelines.values()) this.#scheduler(p);
    // Before any request is taken: a pipeline an earlier leader drained stays drained.
    await this.#drainer.load();
    // (Redis unreachable: the ledger waits for the next leader; this one still serves.)
    await this.#migrator.recover().catch((err: unknown) => this.#log.warn('unfinished migrations could not be read from the ledger', { err }));
    // Stood down meanwhile (the lease lost while Redis answered slowly), or leading again under a
    // newer term whose own lead subscribes: this one takes no work.
    if (!this.#leading || this.#lease.term !== term) return;
    const s = (subject: string, fn: (m: Msg) => void, queue?: string) => this.#leaderSubs.push(this.#sub(subject, fn, queue));
    s(subjects.coordinatorResult(this.id), (m) => this.#onResult(m));
    s(subjects.coordinatorGenerate(), (m) => this.#onGenerate(m), 'coordinator');
    s(subjects.coordinatorGenerateAt(this.id), (m) => this.#onGenerate(m));
    s(subjects.coordinatorCancel(), (m) => this.#onCancel(m));
    s(subjects.coordinatorCluster(), (m) => this.#onCluster(m), 'coordinator');
    s(subjects.coordinatorMigrate(), (m) => void this.#onMigrate(m), 'coordinator');
    s(subjects.coordinatorMigrations(), (m) => void this.#onMigrations(m), 'coordinator');
    s(subjects.coordinatorDrain(), (m) => void this.#onDrain(m), 'coordinator');
    s(subjects.coordinatorUndrain(), (m) => void this.#onUndrain(m), 'coordinator');
    s(subjects.coordinatorSessions(), (m) => this.#onSessions(m), 'coordinator');
    this.#announce();
  }

  /**
   * Stops leading without a word to anyone: the new leader has the requests from the gateways,
   * and stages already refuse this coordinator's term.
   */
  #standDown(reason: string, handedOver = false): void {
    if (!this.#leading) return;
    if (handedOver) this.#log.info('standing down', { reason });
    else this.#log.error('standing down', { reason });
    this.#leading = false;
    for (const sub of this.#leaderSubs.splice(0)) sub.unsubscribe();
    for (const s of this.#schedulers.values()) s.abandon();
    this.#schedulers.clear();
    this.#migrator.moving.clear();
    this.#drainer.unload();
  }

  /**
   * A pipeline whose step went unanswered (messages lost in a NATS restart, a stage that hangs),
   * or that had steps in flight when NATS reconnected, starts over: a fresh scheduler empties
   * every sequence of its stages, and every request on it is rebuilt there by re-prefill, from
   * the tokens its client has already seen. `blame`: the requests that count a failure for it.
   */
  #reset(s: PipelineScheduler, why: string, blame: Blame): void {
    this.#log.warn('resetting a pipeline', { pipeline: s.view.id, why });
    this.#schedulers.delete(s.view.id);
    const orphans = s.down(`pipeline ${s.view.id} reset: ${why}`, blame);
    const fresh = this.#scheduler(s.view);
    for (const r of orphans) fresh.rebuild(r);
  }

  #scheduler(view: PipelineView): PipelineScheduler {
    const s = new PipelineScheduler(view, {
      nc: this.#nc, resultSubject: subjects.coordinatorResult(this.id), store: this.#store, log: this.#log, term: this.#lease.term, proof: this.#proof, costs: this.#costs,
      seqOpTimeoutMs: this.#c.seqOpTimeoutMs,
      ended: (id) => this.#ended.add(id),
      handOff: (from, key, prefilled) => this.#migrator.handOff(from, key, prefilled).catch((err: unknown) => this.#log.error('a hand-off failed', { key, err })),
      options: {
        prefillChunk: this.#c.prefillChunk, overlap: this.#c.overlapSteps, prefixCache: this.#c.prefixCache, tiers: this.#c.kvTiers, stepDeadlineFloorMs: this.#c.stepDeadlineFloorMs, stepDeadlineMargin: this.#c.stepDeadlineMargin,
        stepBudgetMs: this.#c.stepBudgetMs, decodeBurstMs: this.#c.decodeBurstMs, defaultMaxTokens: this.#c.defaultMaxTokens, maxQueue: this.#c.maxQueue, queueFactor: this.#c.queueFactor, maxRequestFailures: this.#c.maxRequestFailures,
      },
    });
    s.draining = this.#drainer.drains(view.stages);
    this.#schedulers.set(view.id, s);
    return s;
  }

  #apply(effects: ClusterEffect[]): void {
    if (!this.#leading) return;
    for (const e of effects) {
      if (e.type === 'pipeline_up') {
        this.#scheduler(e.pipeline);
        this.#log.info('pipeline up', { pipeline: e.pipeline.id, model: e.pipeline.modelId, layers: e.pipeline.stages.map((s) => `${s.l0}:${s.l1}`).join(',') });
      } else if (e.type === 'reconnected') {
        // (as after this coordinator's own reconnect: a lost step need not wait for its deadline)
        const s = this.#schedulers.get(e.pipeline.id);
        if (s && s.inFlight > 0) this.#reset(s, `worker ${e.workerId} reconnected to NATS with steps in flight`, 'none');
      } else {
        const down = this.#schedulers.get(e.pipeline.id);
        this.#schedulers.delete(e.pipeline.id);
        this.#log.warn('pipeline down', { pipeline: e.pipeline.id, reason: e.reason });
        // Requests in flight on a worker that died may have killed it.
        for (const r of down?.down(e.reason, e.lost ? 'inflight' : 'none') ?? []) this.#replace(r, e.pipeline.fingerprint, e.reason);
      }
    }
  }

  async #onMigrate(m: Msg): Promise<void> {
    let reply: MigrateReply;
    try {
      const req = decode(MigrateRequestSchema, m.data, m.subject);
      // The migration's span is a child of the caller's (the admin API's request).
      const rec = await context.with(natsContext(m.headers), () => this.#migrator.migrate(req.sessionId, req.toPipeline, req.reason || 'operator', req.wait));
      reply = { $typeName: 'strata.v1.MigrateReply', migration: migrationInfo(rec) };
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'bad_request';
      reply = { $typeName: 'strata.v1.MigrateReply', error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId: '' } };
    }
    m.respond(encode(MigrateReplySchema, reply));
  }

  async #onDrain(m: Msg): Promise<void> {
    let reply: DrainReply;
    try {
      const req = decode(DrainRequestSchema, m.data, m.subject);
      reply = await context.with(natsContext(m.headers), () => this.#drainer.drain(req.workerId, req.force));
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'bad_request';
      reply = { $typeName: 'strata.v1.DrainReply', pipelineId: '', migrations: [], waited: 0, failed: 0, undrained: false, error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId: '' } };
    }
    m.respond(encode(DrainReplySchema, reply));
  }

  async #onUndrain(m: Msg): Promise<void> {
    let reply: UndrainReply;
    try {
      const req = decode(UndrainRequestSchema, m.data, m.subject);
      reply = await this.#drainer.undrain(req.workerId);
    } catch (err) {
      const code = err instanceof CoordinatorError ? err.code : 'bad_request';
      reply = { $typeName: 'strata.v1.UndrainReply', pipelineId: '', workers: [], error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId: '' } };
    }
    m.respond(encode(UndrainReplySchema, reply));
  }

  async #onMigrations(m: Msg): Promise<void> {
    try {
      const req = decode(MigrationsRequestSchema, m.data, m.subject);
      const list = await this.#migrator.list(Math.min(req.limit || 100, 1000));
      m.respond(encode(MigrationListSchema, { migrations: list.map(migrationInfo) }));
    } catch (err) {
      this.#log.warn('migrations query failed', { err });
      m.respond(encode(MigrationListSchema, {}));
    }
  }

  /** The sessions every pipeline holds, for operators (strata sessions, the dashboard). */
  #onSessions(m: Msg): void {
    try {
      const req = decode(SessionsRequestSchema, m.data, m.subject);
      const pipelines = [...this.#schedulers.values()].map((s) => ({ pipelineId: s.view.id, sessions: s.sessionViews() }));
      m.respond(encode(SessionListSchema, listSessions(pipelines, new Set(this.#migrator.moving.keys()), req.limit)));
    } catch (err) {
      this.#log.warn('sessions query failed', { err });
      m.respond(encode(SessionListSchema, {}));
    }
  }

  /** Re-places a request whose pipeline went down on the least loaded healthy one of its model. */
  #replace(r: Rebuild, fingerprint: string, reason: string): void {
    const target = placeRebuild([...this.#schedulers.values()], fingerprint);
    if (target) {
      this.#log.warn('rebuilding a request on another pipeline', { request: r.request.req.requestId, to: target.view.id });
      target.rebuild(r);
      return;
    }
    this.#failRebuild(r, `${reason}, and no other pipeline serves the model`);
  }

  /** Ends a request that cannot be rebuilt with a retriable error. */
  #failRebuild(r: Rebuild, message: string): void {
    const { req } = r.request;
    const error = { code: 'pipeline_down', message };
    const events = failureEvents(req, r.jobs.map((j) => ({ index: j.index, offset: j.generated.length })), error.code, error.message);
    const to = eventsTo(req);
    if (to.batched) this.#nc.publish(to.subject, encodeEvents(events));
    else for (const e of events) this.#nc.publish(to.subject, encodeEvent(e));
    endRequest(req, error);
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
    this.#apply(clusterTransition(this.#cluster, { type: 'heartbeat', info: hb.stage, kvCellsUsed: hb.kvCellsUsed, draining: hb.draining, nowMs: Date.now(), load: hb.load, reconnects: hb.reconnects }, this.#c).effects);
  }

  #tick(): void {
    const now = Date.now();
    this.#apply(clusterTransition(this.#cluster, { type: 'tick', nowMs: now }, this.#c).effects);
    this.#costs.keepOnly((id) => this.#cluster.workers.has(id));
    if (!this.#leading) return;
    this.#drainer.tick();
    for (const s of [...this.#schedulers.values()]) {
      const why = s.stalled(now);
      if (why) this.#reset(s, why, 'stuck');
    }
    this.#migrator.rebalance();
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
      reply = tracedAdmit(req, m.headers, () => this.#admit(req));
    } catch (err) {
      reply = refuse('bad_request', (err as Error).message);
    }
    m.respond(encode(GenerateReplySchema, reply));
  }

  /** Checks a request and hands it to the pipeline placement chooses (placement.ts). */
  #admit(req: GenerateRequest): GenerateReply {
    if (!isId(req.requestId)) return refuse('bad_request', 'a request id is 1-128 of A-Z a-z 0-9 _ -');
    if (req.requestId.startsWith('batch-')) return refuse('bad_request', 'a request id does not start with batch- (gateways\' batched event subjects do)');
    if (req.eventsSubject !== subjects.gatewayEvents(req.requestId)) return refuse('bad_request', 'events go to the request\'s own gateway subject');
    if (req.batchSubject && !isGatewayBatch(req.batchSubject)) return refuse('bad_request', 'batched events go to a gateway\'s batch subject (strata.v1.gateway.events.batch-<gateway>)');
    if (req.prompt.length === 0) return refuse('bad_request', 'the prompt is empty');
    // A gateway that timed out waiting for the answer asks again: the same request, once (its
    // events went to the subscription it opened before asking, even when it has ended since).
    const known = [...this.#schedulers.values()].find((x) => x.knows(req.requestId));
    if (known || this.#ended.has(req.requestId)) {
      return { $typeName: 'strata.v1.GenerateReply', accepted: true, cachedTokens: 0, pipelineId: known?.view.id ?? '', coordinatorId: this.id, term: BigInt(this.#lease.term) };
    }
    if (req.sessionId && !isSessionKey(req.sessionId)) return refuse('bad_request', 'a session is [<tenant>:]<id>: tenant 1-40 of A-Z a-z 0-9 -, id 1-128 of A-Z a-z 0-9 _ -');
    if (req.sessionId && Math.max(1, req.n) > 1) return refuse('bad_request', 'a session continues one conversation: n must be 1');
    if (req.sampling?.embed && (req.sessionId || Math.max(1, req.n) > 1 || req.maxTokens !== 1)) return refuse('bad_request', 'an embedding is one choice of one answer, without a session');
    const hint = this.#c.routeByPrefix ? { scope: req.cacheScope, prompt: req.prompt, cacheKey: req.promptCacheKey, loadTokens: this.#c.routeLoadTokens } : undefined;
    const split = {
      eligible: req.resume.length === 0 && Math.max(1, req.n) === 1 && !req.sampling?.embed, prompt: req.prompt, scope: req.cacheScope,
      minPrompt: this.#c.disaggMinPrompt, maxPrefillLoad: this.#c.disaggMaxPrefillLoad,
    };
    const placed = placeRequest([...this.#schedulers.values()], req.modelId, req.sessionId, hint, split);
    if ('refused' in placed) return refuse(placed.refused.code, placed.refused.message);
    const target = placed.to;
    const nVocab = target.view.stages[0]!.nVocab;
    for (const t of req.prompt) if (t < 0 || t >= nVocab) return refuse('bad_request', `token ${t} is outside the vocabulary of ${nVocab}`);
    let reply = req.resume.length > 0 ? target.resume(req) : target.admit(req, placed.handOff === true);
    // A prefill pipeline whose queue is full: prefilled where it decodes instead.
    if (placed.handOff && reply.error?.code === 'overloaded') {
      const whole = placeRequest([...this.#schedulers.values()], req.modelId, req.sessionId, hint);
      if ('to' in whole && whole.to !== target) reply = whole.to.admit(req);
    }
    return { ...reply, coordinatorId: this.id, term: BigInt(this.#lease.term) };
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
        sessions: s.sessions, seqsUsed: s.seqsUsed, strandedSeqs: s.strandedSeqs, queued: s.queued, draining: s.draining,
        cachedPrefixes: s.prefixCache.prefixes, cachedCells: s.prefixCache.cells, savedPrefixes: s.prefixCache.saved,
        promptTokens: BigInt(s.promptTokens), cachedPromptTokens: BigInt(s.cachedPromptTokens),
        role: s.role, handoffsOut: BigInt(s.handOffsOut), handoffsIn: BigInt(s.handOffsIn), handoffsFailed: BigInt(s.handOffsFailed),
      })),
      workers: [...this.#cluster.workers.values()].map((w) => ({
        stage: w.info, kvCellsUsed: w.kvCellsUsed, lastSeenMs: BigInt(w.lastSeenMs), pipelineId: this.#cluster.memberOf.get(w.info.workerId) ?? '', draining: w.draining,
        load: w.load, ...judgeLoad(w.load, this.#costs.stage(w.info.workerId)),
      })),
    }));
  }

  /**
   * Hands over and stops: takes no new work, gives the lease up so that a standby leads at once,
   * and waits (up to one lease time) for it to announce itself, when the gateways move their
   * requests to it. Without a successor, what runs fails with a retriable error. Then drains NATS
   * and closes Redis. Idempotent.
   */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#timer);
      clearInterval(this.#leaseTimer);
      this.#unobserve();
      if (this.#leading) {
        const intake = new Set([subjects.coordinatorGenerate(), subjects.coordinatorGenerateAt(this.id), subjects.coordinatorMigrate(), subjects.coordinatorDrain(), subjects.coordinatorUndrain(), subjects.coordinatorCluster(), subjects.coordinatorMigrations(), subjects.coordinatorSessions()]);
        for (const sub of this.#leaderSubs) if (intake.has(sub.getSubject())) sub.unsubscribe();
        const term = this.#lease.term;
        const standbys = await this.#lease.others().catch(() => []);
        const successor = this.#successor(term, standbys.length > 0 ? this.#c.leaseMs : 0);
        await this.#lease.release().catch((err: unknown) => this.#log.warn('the lease could not be released', { err }));
        const next = await successor;
        if (next) {
          this.#log.info('handed over', { to: next });
          this.#standDown(`${next} leads now`, true);
        } else {
          for (const s of this.#schedulers.values()) for (const r of s.down('the coordinator is stopping')) this.#failRebuild(r, 'the coordinator stopped and no standby took over');
        }
      }
      await this.#lease.absent().catch(() => {});
      await drainNats(this.#nc, this.#log);
      await this.#redis.quit().catch(() => this.#redis.disconnect());
      this.#log.info('coordinator stopped');
    })();
    return this.#stopping;
  }

  /** The id of a coordinator that announces a term above `term` within `ms`, or null. */
  #successor(term: number, ms: number): Promise<string | null> {
    return new Promise((resolve) => {
      const sub = this.#nc.subscribe(subjects.coordinatorLeader(), {
        callback: (err, m) => {
          if (err) return;
          try {
            const a = decode(LeaderAnnouncementSchema, m.data, m.subject);
            if (a.term > BigInt(term) && a.coordinatorId !== this.id) finish(a.coordinatorId);
          } catch {
            // not an announcement: keep waiting
          }
        },
      });
      const timer = setTimeout(() => finish(null), ms);
      const finish = (id: string | null) => {
        clearTimeout(timer);
        sub.unsubscribe();
        resolve(id);
      };
    });
  }
}
