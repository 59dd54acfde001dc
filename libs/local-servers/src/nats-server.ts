// A private nats-server on a loopback port: plain core NATS, no JetStream; users with passwords
// when asked for (clients then connect with nats://user:password@host:port), each with the
// subjects it may publish and subscribe to when given.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { launchServer, type LocalServer } from './managed-server.ts';
import { freePorts } from './free-port.ts';
import { checkInteger, resolveServerOptions, type ServerOptions } from './server-options.ts';
import { tcpExchange } from './tcp-probe.ts';
import { LocalServerError } from './errors.ts';

/** Options of {@link startNats}. */
export interface NatsOptions extends ServerOptions {
  /** largest message payload the server accepts, bytes; nats-server's 1 MiB when absent */
  maxPayload?: number;
  /** accounts clients must log in with; none: anyone connects */
  users?: NatsUser[];
  /** a member of a NATS cluster: its route port and its peers' route ports (all on loopback) */
  cluster?: NatsClusterMember;
  /** loopback port of the HTTP monitoring endpoint (/connz, /routez); none when absent */
  monitorPort?: number;
}

/** One server's place in a cluster. */
export interface NatsClusterMember {
  name: string;
  /** the port routes from other servers come in on */
  routePort: number;
  /** the other servers' route ports */
  peers: readonly number[];
}

/** A NATS login, with what it may do (everything when `permissions` is absent). */
export interface NatsUser {
  user: string;
  password: string;
  permissions?: {
    publish: { allow: readonly string[]; deny: readonly string[] };
    subscribe: { allow: readonly string[]; deny: readonly string[] };
    /** may answer requests it receives */
    allowResponses: boolean;
  };
}

/** A subject pattern in a permission: tokens of subject characters and the wildcards * and >. */
const PATTERN = /^[A-Za-z0-9_*>-]+(\.[A-Za-z0-9_*>-]+)*$/;

const CREDENTIAL = /^[A-Za-z0-9_.-]{1,128}$/;

/** nats-server refuses a max_payload above its max_pending, 64 MiB by default. */
const MAX_PAYLOAD_LIMIT = 64 * 1024 * 1024; // bytes

/** The nats.conf that startNats writes: listen on 127.0.0.1 only. */
export function natsConfig(port: number, maxPayload?: number, users: readonly NatsUser[] = [], cluster?: NatsClusterMember, monitorPort?: number): string {
  const lines = ['# Written by @strata/local-servers; rewritten on every start.', `listen: "127.0.0.1:${port}"`];
  if (maxPayload !== undefined) lines.push(`max_payload: ${maxPayload}`);
  if (monitorPort !== undefined) lines.push(`http: "127.0.0.1:${monitorPort}"`);
  if (cluster) {
    if (!CREDENTIAL.test(cluster.name)) throw new LocalServerError('invalid_options', 'a NATS cluster name is 1-128 of A-Z a-z 0-9 _ . -', { server: 'nats-server' });
    lines.push('cluster {', `  name: "${cluster.name}"`, `  listen: "127.0.0.1:${cluster.routePort}"`, `  routes: [${cluster.peers.map((p) => `"nats-route://127.0.0.1:${p}"`).join(', ')}]`, '}');
  }
  return [...lines, ...natsAuthorization(users)].join('\n') + '\n';
}

/** nats.conf lines that make clients log in as one of `users` (none: no lines), after checking them. */
export function natsAuthorization(users: readonly NatsUser[]): string[] {
  if (users.length === 0) return [];
  checkUsers(users);
  const lines = ['authorization {', '  users = ['];
  const list = (xs: readonly string[]) => `[${xs.map((x) => `"${x}"`).join(', ')}]`;
  for (const u of users) {
    const p = u.permissions;
    const perms = p
      ? `, permissions: { publish: { allow: ${list(p.publish.allow)}, deny: ${list(p.publish.deny)} }, subscribe: { allow: ${list(p.subscribe.allow)}, deny: ${list(p.subscribe.deny)} }${p.allowResponses ? ', allow_responses: true' : ''} }`
      : '';
    lines.push(`    { user: "${u.user}", password: "${u.password}"${perms} }`);
  }
  lines.push('  ]', '}');
  return lines;
}

function checkUsers(users: readonly NatsUser[]): void {
  for (const u of users) {
    if (!CREDENTIAL.test(u.user) || !CREDENTIAL.test(u.password)) throw new LocalServerError('invalid_options', 'nats-server users and passwords are 1-128 of A-Z a-z 0-9 _ . -', { server: 'nats-server' });
    const patterns = u.permissions ? [...u.permissions.publish.allow, ...u.permissions.publish.deny, ...u.permissions.subscribe.allow, ...u.permissions.subscribe.deny] : [];
    const bad = patterns.find((x) => !PATTERN.test(x));
    if (bad !== undefined) throw new LocalServerError('invalid_options', `'${bad}' is not a NATS subject pattern`, { server: 'nats-server' });
  }
}

/** Ready once a client connecting on `port` receives the server's `INFO {...}` line. */
async function natsReady(port: number, timeoutMs: number): Promise<boolean> {
  const text = await tcpExchange(port, undefined, (t) => t.includes('\r\n'), timeoutMs);
  return text !== null && text.startsWith('INFO ');
}

/** Starts nats-server on 127.0.0.1 with `dir/nats.conf` and resolves once it greets clients. */
export async function startNats(options: NatsOptions): Promise<LocalServer> {
  const resolved = await resolveServerOptions('nats-server', options);
  const maxPayload = options.maxPayload === undefined ? undefined : checkInteger('nats-server', 'maxPayload', options.maxPayload, 1, MAX_PAYLOAD_LIMIT);
  checkUsers(options.users ?? []);
  const config = join(resolved.dir, 'nats.conf');
  await writeFile(config, natsConfig(resolved.port, maxPayload, options.users, options.cluster, options.monitorPort), { mode: 0o600 });
  return launchServer({
    name: 'nats-server',
    binary: resolved.binary,
    args: ['-c', config],
    cwd: resolved.dir,
    url: `nats://127.0.0.1:${resolved.port}`,
    port: resolved.port,
    probe: natsReady,
    startTimeoutMs: resolved.startTimeoutMs,
    stopTimeoutMs: resolved.stopTimeoutMs,
  });
}

/** A NATS cluster of servers on loopback, each routed to all others. */
export interface LocalNatsCluster {
  servers: LocalServer[];
  /** the servers' client URLs, comma-separated, as Strata's services take them */
  url: string;
  /** each server's monitoring port, in the order of `servers` */
  monitorPorts: number[];
  /** Stops every server. */
  stop(): Promise<void>;
}

/**
 * Starts `size` nats-servers in one cluster (full mesh of routes, directories `<dir>/<i>`) and
 * resolves once every one greets clients and routes to the others.
 */
export async function startNatsCluster(size: number, options: NatsOptions): Promise<LocalNatsCluster> {
  checkInteger('nats-server', 'cluster size', size, 1, 16);
  // Every port of the cluster at once, all distinct (picked one by one, a later pick may repeat an
  // earlier one that no server has bound yet).
  const ports = await freePorts(3 * size);
  const [clients, routes, monitors] = [ports.slice(0, size), ports.slice(size, 2 * size), ports.slice(2 * size)];
  const servers: LocalServer[] = [];
  try {
    for (let i = 0; i < size; i++) {
      servers.push(await startNats({
        ...options, dir: join(options.dir, String(i)), port: clients[i], monitorPort: monitors[i],
        cluster: { name: 'strata', routePort: routes[i]!, peers: routes.filter((_, k) => k !== i) },
      }));
    }
    // Every server sees the others before clients rely on the cluster.
    const deadline = Date.now() + (options.startTimeoutMs ?? 10_000);
    for (const port of monitors) {
      for (;;) {
        const n = await routeCount(port);
        if (n >= size - 1) break;
        if (Date.now() > deadline) throw new LocalServerError('start_timeout', `nats-server on monitor port ${port} routes to ${n} of ${size - 1} peers`, { server: 'nats-server' });
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.stop()));
    throw err;
  }
  return {
    servers, monitorPorts: monitors, url: servers.map((s) => s.url).join(','),
    stop: async () => {
      await Promise.all(servers.map((s) => s.stop()));
    },
  };
}

/** Routes a server has now (its /routez), 0 when it does not answer. */
async function routeCount(monitorPort: number): Promise<number> {
  try {
    const r = await fetch(`http://127.0.0.1:${monitorPort}/routez`);
    return ((await r.json()) as { num_routes?: number }).num_routes ?? 0;
  } catch {
    return 0;
  }
}

/** Names of the clients connected to a server now (its /connz), by its monitoring port. */
export async function natsClientNames(monitorPort: number): Promise<string[]> {
  const r = await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`);
  return ((await r.json()) as { connections?: { name?: string }[] }).connections?.map((c) => c.name ?? '') ?? [];
}
