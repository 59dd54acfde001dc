// A whole Strata cluster on this machine: private nats-server and redis-server on free loopback
// ports, then the coordinator, the workers and the gateway as separate processes, exactly as
// they run on separate machines. `strata up`, the end-to-end tests and the benchmarks use it.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { generateKeyPairSync } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { GgufFile } from '@strata/gguf';
import {
  FaultProxy, freePort, startNats, startNatsCluster, startRedis, startRedisSentinels, type LocalNatsCluster, type LocalServer, type NatsUser, type RedisUser, type ReplicatedRedis,
} from '@strata/local-servers';
import { balancedSplit, decodeCosts, ensureDefaultModel, evenSplit, formatRange, readHParams, type LayerRange } from '@strata/model';
import { ClusterRequestSchema, ClusterStateSchema, NATS_ROLES, natsPermissions, requestOnce, subjects, type NatsRole } from '@strata/wire';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '../../../bin/strata.mjs');
/** What the coordinators' Redis user may do: Strata's keys, no @dangerous command (FLUSHALL, CONFIG, KEYS...), INFO for clients' ready check */
export const REDIS_RULES = '~strata:* &* +@all -@dangerous +info';

/** A random password or token: 144 bits, in characters every config file and URL takes as they are. */
export const secret = (): string => randomBytes(18).toString('base64url');

/** Options of {@link LocalCluster.start}. */
export interface LocalClusterOptions {
  /** GGUF file (default: the synthetic default model) */
  model?: string;
  /** pipelines of the model (default 1) */
  pipelines?: number;
  /** workers (stages) per pipeline (default 2) */
  workers?: number;
  /** coordinators (default 1): the first leads, the others stand by (ids coordinator, coordinator-2, …) */
  coordinators?: number;
  /** explicit layer ranges per pipeline, instead of pipelines × workers */
  splits?: LayerRange[][];
  /**
   * how pipelines × workers cut the layers: 'even' (default; as many layers per stage) or
   * 'balanced' (as much decode cost per stage: the weights a token reads, the head counted on
   * the last stage; balancedSplit)
   */
  split?: 'even' | 'balanced';
  /** gateway port (default 8080; 0: a free one) */
  port?: number;
  /** CPU threads per worker (default: the cores shared out, at least 1) */
  threads?: number;
  /** KV cells per worker (default 4096) */
  ctxSize?: number;
  /**
   * one KV stream per sequence: each worker holds this many sequences, ctxSize / kvStreams cells
   * each (the workers' --kv-streams and --n-seq-max); unset: one stream they all share
   */
  kvStreams?: number;
  /** K/V type of every worker (default f16) */
  kvType?: string;
  /** K/V type per pipeline, instead of kvType */
  kvTypes?: string[];
  /** role per pipeline (prefill, decode, both: the workers' --role; default both) */
  roles?: string[];
  /** ggml device per pipeline (CPU, CUDA0, …: the workers' --device; default CPU) */
  devices?: string[];
  /**
   * GGUF per pipeline, instead of model (the default splits cut each one's layers); the gateway
   * serves every one of them
   */
  pipelineModels?: string[];
  /** log level of the services (default warn) */
  logLevel?: string;
  /** where Redis keeps its data (default: a fresh temporary folder, removed at stop) */
  dataDir?: string;
  /** extra flags for every worker, coordinator and gateway */
  workerFlags?: string[];
  coordinatorFlags?: string[];
  gatewayFlags?: string[];
  /** where the services' log lines go (default: this process's stderr) */
  logSink?: (line: string) => void;
  /**
   * NATS with one user per role (worker, coordinator, gateway, operator), each with a random
   * password and its role's permissions (@strata/wire natsPermissions); default true. false: any
   * local process may connect (tests that speak the protocol raw)
   */
  natsAuth?: boolean;
  /**
   * Redis with the default user off and one ACL user, the coordinators', with a random password,
   * limited to strata:* keys and to commands that are not @dangerous; default true
   */
  redisAuth?: boolean;
  /**
   * an Ed25519 key pair made for the run: coordinators sign their terms and generations with it,
   * workers and the gateway believe only signed ones; default true
   */
  signTerms?: boolean;
  /** workers present a random token to each other on KvTransfer (--transfer-token-file); default true */
  transferToken?: boolean;
  /** NATS's max payload in bytes (default: nats-server's 1 MiB) */
  natsMaxPayload?: number;
  /** nats-servers, in one cluster when more than 1 (default 1); services get every server's URL */
  natsServers?: number;
  /**
   * Redis replicas (default 0: one Redis); with replicas, 3 sentinels watch the primary and fail
   * it over, and coordinators find it through them (redis-sentinel://…)
   */
  redisReplicas?: number;
  /**
   * each service reaches NATS (and each coordinator Redis) through a fault proxy of its own, and
   * every KvTransfer stream into a worker passes one (the worker advertises the proxy's port as its
   * --grpc-advertise), so a test can give that link latency or bandwidth or cut it
   * (LocalCluster.link); one NATS server and one Redis only; default false
   */
  faultLinks?: boolean;
  /**
   * workers hand steps to the next stage and samples to the first over Unix sockets in
   * <data dir>/links (--stage-link-dir) instead of NATS; default true, false with faultLinks
   * (whose proxies stand for a network between hosts)
   */
  stageLinks?: boolean;
  /** milliseconds to wait for the gateway to be ready (default 180000) */
  readyTimeoutMs?: number;
  /** every service serves Prometheus metrics on a free loopback port of its own (ServiceProcess.metricsPort) */
  metrics?: boolean;
}

/** A service process of the cluster. */
export interface ServiceProcess {
  role: 'coordinator' | 'worker' | 'gateway';
  id: string;
  /** layers, for workers */
  layers?: LayerRange;
  proc: ChildProcess;
  /** the strata command line it runs (no secrets: /proc/<pid>/cmdline is world-readable) */
  args: string[];
  /** what it gets in its environment besides this process's: the URLs with credentials */
  env: Record<string, string>;
  /** port of its Prometheus endpoint, GET /metrics (0: none) */
  metricsPort: number;
}

/**
 * Default splits: pipeline p cuts the layers into `workers` stages (evenly, or as `base` cuts
 * them), inner boundaries moved down by p, so several pipelines of one model are split at
 * different layers.
 */
export function defaultSplits(nLayer: number, pipelines: number, workers: number, base: LayerRange[] = evenSplit(nLayer, workers)): LayerRange[][] {
  const out: LayerRange[][] = [];
  for (let p = 0; p < pipelines; p++) {
    const cuts = base.slice(1).map((r, i) => Math.max(i + 1, r.l0 - p));
    const bounds = [0, ...cuts, nLayer];
    out.push(bounds.slice(1).map((l1, i) => ({ l0: bounds[i]!, l1 })));
  }
  return out;
}

/** Pipeline p's split of `model` into `workers` stages (defaultSplits; 'balanced': from balancedSplit). */
function splitOf(model: string, p: number, workers: number, how: 'even' | 'balanced'): LayerRange[] {
  const file = GgufFile.open(model);
  try {
    const hp = readHParams(file);
    const base = how === 'balanced' ? balancedSplit(decodeCosts(file, hp), workers) : undefined;
    return defaultSplits(hp.nLayer, p + 1, workers, base)[p]!;
  } finally {
    file.close();
  }
}

/** A service's fault proxies (LocalClusterOptions.faultLinks). */
interface ServiceLinks {
  /** in front of NATS, for its connection */
  nats: FaultProxy;
  /** in front of Redis, for a coordinator's connection */
  redis: FaultProxy | null;
  /** in front of a worker's KvTransfer server: what other workers push to */
  grpc: FaultProxy | null;
  /** the port that KvTransfer server listens on, chosen before it starts (0: none) */
  grpcPort: number;
}

/** The servers a local cluster runs on: one NATS or a cluster, one Redis or a Sentinel set. */
interface Servers {
  nats: LocalServer | null;
  natsCluster: LocalNatsCluster | null;
  redis: LocalServer | null;
  redisSet: ReplicatedRedis | null;
}

/** Starts NATS and Redis as `o` asks (stopping what started when one fails). */
async function startServers(o: LocalClusterOptions, dataDir: string, users: NatsUser[] | undefined, redisUser: RedisUser | null): Promise<Servers> {
  const nServers = o.natsServers ?? 1;
  const natsCluster = nServers > 1 ? await startNatsCluster(nServers, { dir: join(dataDir, 'nats'), maxPayload: o.natsMaxPayload, users }) : null;
  const nats = natsCluster ? null : await startNats({ dir: join(dataDir, 'nats'), maxPayload: o.natsMaxPayload, users });
  try {
    const redisUsers = redisUser ? [redisUser] : [];
    if ((o.redisReplicas ?? 0) > 0) {
      return { nats, natsCluster, redis: null, redisSet: await startRedisSentinels({ dir: join(dataDir, 'redis'), replicas: o.redisReplicas, users: redisUsers }) };
    }
    return { nats, natsCluster, redis: await startRedis({ dir: join(dataDir, 'redis'), users: redisUsers }), redisSet: null };
  } catch (err) {
    await (natsCluster?.stop() ?? nats?.stop());
    throw err;
  }
}

/** A running local cluster. stop() is idempotent. */
export class LocalCluster {
  readonly model: string;
  /** the (first) nats-server */
  readonly nats: LocalServer;
  /** the Redis primary as started (after a failover, a replica leads) */
  readonly redis: LocalServer;
  /** every nats-server, with monitoring ports, when natsServers > 1 */
  readonly natsCluster: LocalNatsCluster | null;
  /** the primary, replicas and sentinels, when redisReplicas > 0 */
  readonly redisSet: ReplicatedRedis | null;
  #url: string;
  readonly services: ServiceProcess[] = [];
  readonly splits: LayerRange[][];
  /** the URL tools and tests connect to NATS with: the operator role's (credentials included when natsAuth is on) */
  natsUrl = '';
  /** the URL each role connects with (all natsUrl without natsAuth) */
  readonly natsUrls: Record<NatsRole, string> = { worker: '', coordinator: '', gateway: '', operator: '' };
  /** the URL coordinators (and tests) connect to Redis with, credentials included when redisAuth is on */
  redisUrl = '';
  readonly #dataDir: string | null;
  readonly #o: LocalClusterOptions;
  /** service id -> its fault proxies (option faultLinks) */
  readonly #links = new Map<string, ServiceLinks>();
  /** free ports for the services' metrics endpoints (option metrics) */
  readonly #metricsPorts: number[] = [];
  #stopping: Promise<void> | null = null;

  private constructor(o: LocalClusterOptions, model: string, splits: LayerRange[][], servers: Servers, url: string, dataDir: string | null) {
    this.#o = o;
    this.model = model;
    this.splits = splits;
    this.nats = servers.natsCluster?.servers[0] ?? servers.nats!;
    this.redis = servers.redisSet?.primary ?? servers.redis!;
    this.natsCluster = servers.natsCluster;
    this.redisSet = servers.redisSet;
    this.#url = url;
    this.#dataDir = dataDir;
  }

  /** Starts every server and service and waits until the gateway is ready with every pipeline. */
  static async start(o: LocalClusterOptions = {}): Promise<LocalCluster> {
    const model = o.model ?? ensureDefaultModel();
    const models = o.pipelineModels ?? Array.from({ length: o.splits?.length ?? o.pipelines ?? 1 }, () => model);
    const splits = o.splits ?? models.map((m, p) => splitOf(m, p, o.workers ?? 2, o.split ?? 'even'));
    const ownData = o.dataDir === undefined;
    const dataDir = o.dataDir ?? mkdtempSync(join(tmpdir(), 'strata-up-'));
    const users = o.natsAuth ?? true ? NATS_ROLES.map((role) => ({ user: `strata-${role}`, password: secret(), permissions: natsPermissions(role) })) : undefined;
    const redisUser = o.redisAuth ?? true ? { user: 'strata-coordinator', password: secret(), rules: REDIS_RULES } : null;
    const servers = await startServers(o, dataDir, users, redisUser);
    const port = o.port === 0 ? await freePort() : o.port ?? 8080;
    const c = new LocalCluster(o, model, splits, servers, `http://127.0.0.1:${port}`, ownData ? dataDir : null);
    const natsUrl = servers.natsCluster?.url ?? servers.nats!.url;
    for (const role of NATS_ROLES) {
      const u = users?.find((x) => x.user === `strata-${role}`);
      // every server of a cluster, each with the role's credentials
      c.natsUrls[role] = u ? natsUrl.replaceAll('nats://', `nats://${u.user}:${u.password}@`) : natsUrl;
    }
    c.natsUrl = c.natsUrls.operator;
    const redisUrl = servers.redisSet?.url ?? servers.redis!.url;
    c.redisUrl = redisUser && !servers.redisSet ? redisUrl.replace('redis://', `redis://${redisUser.user}:${redisUser.password}@`) : redisUrl;
    try {
      const nWorkers = splits.reduce((n, s) => n + s.length, 0);
      while (o.metrics && c.#metricsPorts.length < nWorkers + (o.coordinators ?? 1) + 1) {
        const p = await freePort();
        if (!c.#metricsPorts.includes(p)) c.#metricsPorts.push(p);
      }
      const threads = o.threads ?? Math.max(1, Math.floor(availableParallelism() / nWorkers));
      // Credentials go in the environment (readable by this user only), never on a command line.
      const keys = o.signTerms ?? true ? writeTermKeys(join(dataDir, 'keys')) : null;
      const common = ['--log-level', o.logLevel ?? 'warn'];
      const verify = keys ? ['--term-public-key-file', keys.publicKey] : [];
      let token: string[] = [];
      if (o.transferToken ?? true) {
        mkdirSync(join(dataDir, 'keys'), { recursive: true, mode: 0o700 });
        writeFileSync(join(dataDir, 'keys', 'transfer.token'), secret(), { mode: 0o600 });
        token = ['--transfer-token-file', join(dataDir, 'keys', 'transfer.token')];
      }
      let links: string[] = [];
      if (o.stageLinks ?? !o.faultLinks) {
        mkdirSync(join(dataDir, 'links'), { recursive: true, mode: 0o700 });
        links = ['--stage-link-dir', join(dataDir, 'links')];
      }
      const coordinatorIds = Array.from({ length: o.coordinators ?? 1 }, (_, i) => (i === 0 ? 'coordinator' : `coordinator-${i + 1}`));
      const workerIds = splits.flatMap((split, p) => split.map((_, s) => `p${p}-s${s}`));
      if (o.faultLinks) await c.#makeLinks(coordinatorIds, workerIds);
      const env = (role: NatsRole, id: string): Record<string, string> => {
        const link = c.#links.get(id);
        const via = (url: string, proxy: FaultProxy | null | undefined) => (proxy ? url.replace(/:\d+(\/?)$/, `:${proxy.port}$1`) : url);
        return { STRATA_NATS_URL: via(c.natsUrls[role], link?.nats), ...(role === 'coordinator' ? { STRATA_REDIS_URL: via(c.redisUrl, link?.redis) } : {}) };
      };
      for (const [i, id] of coordinatorIds.entries()) {
        c.#spawn('coordinator', id, ['coordinator', ...common, '--id', id, ...(keys ? ['--term-key-file', keys.privateKey] : []), ...(o.coordinatorFlags ?? [])], env('coordinator', id));
        // The first one up takes the lease: start the standbys after it.
        if (i === 0 && coordinatorIds.length > 1) await c.#leaderUp();
      }
      splits.forEach((split, p) => split.forEach((layers, s) => {
        const id = `p${p}-s${s}`;
        c.#spawn('worker', id, ['worker', ...common, ...verify, ...token, ...links, '--id', id, '--group', `p${p}`, '--model', models[p]!, '--layers', formatRange(layers), '--threads', String(threads),
          '--ctx-size', String(o.ctxSize ?? 4096), ...(o.kvStreams ? ['--kv-streams', 'true', '--n-seq-max', String(o.kvStreams)] : []), '--kv-type', o.kvTypes?.[p] ?? o.kvType ?? 'f16', '--role', o.roles?.[p] ?? 'both', '--device', o.devices?.[p] ?? 'CPU', ...c.#grpcFlags(id), ...(o.workerFlags ?? [])], env('worker', id), layers);
      }));
      c.#spawn('gateway', 'gateway', ['gateway', ...common, ...verify, '--model', [...new Set(models)].join(','), '--port', String(port), ...(o.gatewayFlags ?? [])], env('gateway', 'gateway'));
      await c.#ready(splits.length, o.readyTimeoutMs ?? 180_000, o.port === 0);
      return c;
    } catch (err) {
      await c.stop();
      throw err;
    }
  }

  /**
   * A fault proxy for each service's NATS link, each coordinator's Redis link and each worker's
   * KvTransfer server (on a port chosen here, distinct from every other worker's).
   */
  async #makeLinks(coordinators: string[], workers: string[]): Promise<void> {
    if (this.natsCluster || this.redisSet) throw new Error('faultLinks needs one NATS server and one Redis');
    for (const id of [...coordinators, ...workers, 'gateway']) {
      const nats = await FaultProxy.start(this.nats.port);
      const redis = coordinators.includes(id) ? await FaultProxy.start(this.redis.port) : null;
      let grpcPort = 0;
      while (workers.includes(id) && (grpcPort === 0 || [...this.#links.values()].some((l) => l.grpcPort === grpcPort))) grpcPort = await freePort();
      this.#links.set(id, { nats, redis, grpc: grpcPort > 0 ? await FaultProxy.start(grpcPort) : null, grpcPort });
    }
  }

  /** A worker's KvTransfer flags when its link is proxied: it listens on its port and tells peers the proxy's. */
  #grpcFlags(id: string): string[] {
    const link = this.#links.get(id);
    return link?.grpc ? ['--grpc-port', String(link.grpcPort), '--grpc-advertise', `127.0.0.1:${link.grpc.port}`] : [];
  }

  /**
   * The fault proxy of a service's link to NATS, of a coordinator's to Redis, or in front of a
   * worker's KvTransfer server ('grpc': every push into that worker passes it) (option faultLinks).
   */
  link(id: string, to: 'nats' | 'redis' | 'grpc'): FaultProxy {
    const proxy = this.#links.get(id)?.[to];
    if (!proxy) throw new Error(`${id} has no fault link to ${to} (faultLinks is off, or no such service)`);
    return proxy;
  }

  /** Resolves when a coordinator leads (answers cluster queries). */
  async #leaderUp(timeoutMs = 60_000): Promise<void> {
    const t0 = Date.now();
    for (;;) {
      try {
        await requestOnce(this.natsUrl, 'strata-up', subjects.coordinatorCluster(), ClusterRequestSchema, {}, ClusterStateSchema, 1000);
        return;
      } catch (err) {
        if (Date.now() - t0 > timeoutMs) throw new Error(`no coordinator led within ${timeoutMs} ms: ${(err as Error).message}`);
        await sleep(100);
      }
    }
  }

  #spawn(role: ServiceProcess['role'], id: string, args: string[], env: Record<string, string>, layers?: LayerRange): ServiceProcess {
    // A new service takes a metrics port of the pool; a restart keeps its command line, port included.
    if (this.#o.metrics && !args.includes('--metrics-port')) args = [...args, '--metrics-port', String(this.#metricsPorts.shift() ?? 0)];
    const mi = args.indexOf('--metrics-port');
    // (STRATA_EXIT_WITH_PARENT: a service stops by itself when this process is gone, even killed)
    const proc = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env, STRATA_EXIT_WITH_PARENT: '1' } });
    const sink = this.#o.logSink ?? ((line: string) => process.stderr.write(`[${id}] ${line}\n`));
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('utf8');
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        sink(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    };
    proc.stderr!.on('data', onData);
    proc.stdout!.on('data', () => {});
    const service: ServiceProcess = { role, id, layers, proc, args, env, metricsPort: mi >= 0 ? Number(args[mi + 1]) : 0 };
    proc.on('exit', (code, signal) => {
      if (!this.#stopping && this.services.includes(service)) sink(`${role} ${id} exited unexpectedly (${signal ?? `code ${code}`})`);
    });
    this.services.push(service);
    return service;
  }

  /** Stops a service (SIGTERM, or `signal`) and starts it again with the same command line. */
  async restart(id: string, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const old = this.service(id);
    this.services.splice(this.services.indexOf(old), 1);
    if (old.proc.exitCode === null && old.proc.signalCode === null) {
      const gone = new Promise<void>((resolve) => old.proc.once('exit', () => resolve()));
      old.proc.kill(signal);
      await gone;
    }
    this.#spawn(old.role, old.id, old.args, old.env, old.layers);
  }

  /**
   * Waits for the gateway to serve `pipelines` pipelines. `freePortChosen`: the gateway's port was
   * picked free here and is bound only when the gateway starts, so another socket may take it
   * meanwhile (EADDRINUSE): a gateway that exits on start then gets another free port, twice at most.
   */
  async #ready(pipelines: number, timeoutMs: number, freePortChosen: boolean): Promise<void> {
    const t0 = Date.now();
    let last = '', retries = 0;
    while (Date.now() - t0 < timeoutMs) {
      const dead = this.services.find((s) => s.proc.exitCode !== null || s.proc.signalCode !== null);
      if (dead?.role === 'gateway' && freePortChosen && dead.proc.exitCode === 1 && retries++ < 2) {
        const port = await freePort();
        this.services.splice(this.services.indexOf(dead), 1);
        const args = [...dead.args];
        args[args.indexOf('--port') + 1] = String(port);
        this.#url = `http://127.0.0.1:${port}`;
        this.#spawn('gateway', dead.id, args, dead.env);
        continue;
      }
      if (dead) throw new Error(`${dead.role} ${dead.id} exited (${dead.proc.exitCode ?? dead.proc.signalCode}) while the cluster started`);
      try {
        const r = await fetch(`${this.url}/readyz`);
        const body = (await r.json()) as { pipelines?: number; error?: { message: string } };
        if (r.status === 200 && (body.pipelines ?? 0) >= pipelines) return;
        last = body.error?.message ?? `${body.pipelines ?? 0} of ${pipelines} pipelines`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(200);
    }
    throw new Error(`the local cluster was not ready after ${timeoutMs} ms: ${last}`);
  }

  /** the gateway's URL */
  get url(): string {
    return this.#url;
  }

  /** The process of a service by id. */
  service(id: string): ServiceProcess {
    const s = this.services.find((x) => x.id === id);
    if (!s) throw new Error(`no service ${id}`);
    return s;
  }

  /** Stops the gateway, then the coordinator and workers, then Redis and NATS. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      const order: ServiceProcess['role'][] = ['gateway', 'coordinator', 'worker'];
      for (const role of order) await Promise.all(this.services.filter((s) => s.role === role).map((s) => stopProcess(s.proc)));
      for (const l of this.#links.values()) await Promise.all([l.nats.stop(), l.redis?.stop(), l.grpc?.stop()]);
      await (this.redisSet?.stop() ?? this.redis.stop());
      await (this.natsCluster?.stop() ?? this.nats.stop());
      if (this.#dataDir) rmSync(this.#dataDir, { recursive: true, force: true });
    })();
    return this.#stopping;
  }
}

/** SIGTERM, then SIGKILL after 10 s; resolves when the process is gone. */
export async function stopProcess(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => p.once('exit', () => resolve()));
  p.kill('SIGTERM');
  const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await gone;
  clearTimeout(t);
}

/**
 * Writes an Ed25519 key pair for signing terms into `dir` (made private): `term.key` (PKCS#8 PEM,
 * the coordinators') and `term.pub` (SPKI PEM, workers' and gateways'). Returns their paths.
 */
export function writeTermKeys(dir: string): { privateKey: string; publicKey: string } {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const pair = generateKeyPairSync('ed25519');
  const privateKey = join(dir, 'term.key'), publicKey = join(dir, 'term.pub');
  writeFileSync(privateKey, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  writeFileSync(publicKey, pair.publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 });
  return { privateKey, publicKey };
}
