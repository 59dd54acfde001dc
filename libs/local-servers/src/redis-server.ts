// A private redis-server on a loopback port, its data in the caller's directory; ACL users with
// passwords when asked for (the default user then is off, so a client must log in).
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalServerError } from './errors.ts';
import { launchServer, type LocalServer } from './managed-server.ts';
import { checkInteger, resolveServerOptions, type ServerOptions } from './server-options.ts';
import { tcpExchange } from './tcp-probe.ts';

/** Options of {@link startRedis}. */
export interface RedisOptions extends ServerOptions {
  /**
   * keep an append-only file (fsync every second) in `dir`, so data survives restart(); true by
   * default. RDB snapshots are off either way, so false means no persistence at all.
   */
  appendonly?: boolean;
  /** ACL users; none: the default user, without a password (loopback only) */
  users?: RedisUser[];
  /** a replica of the primary on this loopback port, logging in as `user` (one of `users`) when given */
  replicaOf?: { port: number; user?: RedisUser };
}

/** A Redis ACL user: clients connect with redis://user:password@host:port. */
export interface RedisUser {
  user: string;
  password: string;
  /** what it may do, in ACL SETUSER's terms, e.g. '~app:* &* +@all -@dangerous +info' */
  rules: string;
}

const CREDENTIAL = /^[A-Za-z0-9_.-]{1,128}$/;
/** ACL rules: key, channel and command selectors, nothing that could end the line or add a password */
const RULES = /^([~&%][A-Za-z0-9_:*.?-]*|[+-][@A-Za-z0-9_|-]+|allkeys|allchannels|allcommands|nocommands|resetkeys|resetchannels)( +([~&%][A-Za-z0-9_:*.?-]*|[+-][@A-Za-z0-9_|-]+|allkeys|allchannels|allcommands|nocommands|resetkeys|resetchannels))*$/;

/** A redis.conf string value: double-quoted, backslash and quote escaped. */
function quote(value: string): string {
  const control = [...value].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
  if (control) throw new LocalServerError('invalid_options', `redis-server: control character in ${JSON.stringify(value)}`, { server: 'redis-server' });
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** The redis.conf that startRedis writes: loopback only, foreground, data in `dir`. */
export function redisConfig(port: number, dir: string, appendonly: boolean, users: readonly RedisUser[] = [], replicaOf?: RedisOptions['replicaOf']): string {
  const acl = redisUsers(users);
  const replica = replicaOf ? [`replicaof 127.0.0.1 ${replicaOf.port}`, ...(replicaOf.user ? [`masteruser ${replicaOf.user.user}`, `masterauth ${replicaOf.user.password}`] : [])] : [];
  return [
    '# Written by @strata/local-servers; rewritten on every start.',
    'bind 127.0.0.1',
    `port ${port}`,
    'protected-mode yes',
    'daemonize no',
    'logfile ""',
    `dir ${quote(dir)}`,
    'save ""',
    `appendonly ${appendonly ? 'yes' : 'no'}`,
    'appendfsync everysec',
    ...replica,
    ...acl,
  ].join('\n') + '\n';
}

/** redis.conf lines that turn the default user off and make `users` (none: no lines), after checking them. */
export function redisUsers(users: readonly RedisUser[]): string[] {
  for (const u of users) {
    if (!CREDENTIAL.test(u.user) || !CREDENTIAL.test(u.password)) throw new LocalServerError('invalid_options', 'redis-server users and passwords are 1-128 of A-Z a-z 0-9 _ . -', { server: 'redis-server' });
    if (!RULES.test(u.rules)) throw new LocalServerError('invalid_options', `'${u.rules}' are not ACL rules of keys, channels and commands`, { server: 'redis-server' });
  }
  // The default user is off (a client must log in) but keeps every permission: Redis 7.0 replays
  // MULTI/EXEC from the append-only file as the default user, and refuses it without them.
  return users.length === 0 ? [] : ['user default off ~* &* +@all', ...users.map((u) => `user ${u.user} on >${u.password} ${u.rules}`)];
}

/** Ready once `PING` gets `+PONG` (a server still loading its data answers `-LOADING`), logged in as `login` when given. */
async function redisReady(port: number, timeoutMs: number, login?: RedisUser): Promise<boolean> {
  const text = await redisCommand(port, 'PING', login, timeoutMs).catch(() => null);
  return text !== null && text.split('\r\n')[login ? 1 : 0]!.startsWith('+PONG');
}

/** Starts redis-server on 127.0.0.1 with `dir/redis.conf` and resolves once it answers PING. */
export async function startRedis(options: RedisOptions): Promise<LocalServer> {
  const resolved = await resolveServerOptions('redis-server', options);
  const users = options.users ?? [];
  const config = join(resolved.dir, 'redis.conf');
  // passwords inside: the owner's only
  await writeFile(config, redisConfig(resolved.port, resolved.dir, options.appendonly ?? true, users, options.replicaOf), { mode: 0o600 });
  return launchServer({
    name: 'redis-server',
    binary: resolved.binary,
    args: [config],
    cwd: resolved.dir,
    url: `redis://127.0.0.1:${resolved.port}`,
    port: resolved.port,
    probe: (port, timeoutMs) => redisReady(port, timeoutMs, users[0]),
    startTimeoutMs: resolved.startTimeoutMs,
    stopTimeoutMs: resolved.stopTimeoutMs,
  });
}

/** Options of {@link startRedisSentinels}. */
export interface ReplicatedRedisOptions {
  /** parent directory: `primary`, `replica-<i>` and `sentinel-<i>` folders go in it */
  dir: string;
  /** replicas of the primary (default 1) */
  replicas?: number;
  /** sentinels watching them (default 3; a majority must agree that the primary is down) */
  sentinels?: number;
  /** ACL users of every server (the replication and sentinel logins are added) */
  users?: RedisUser[];
  /** the primary's name for the sentinels (default 'strata') */
  name?: string;
  /** ms without an answer before a sentinel thinks the primary down (default 1000) */
  downAfterMs?: number;
}

/** A primary, its replicas and the sentinels that fail it over. */
export interface ReplicatedRedis {
  primary: LocalServer;
  replicas: LocalServer[];
  sentinels: LocalServer[];
  /** redis-sentinel://[user:password@]127.0.0.1:p,…/<name>, with the first of `users` */
  url: string;
  /** the address the sentinels give for the primary now (after a failover: a former replica) */
  primaryPort(): Promise<number>;
  stop(): Promise<void>;
}

/** The logins replication and sentinels use when the servers have ACL users. */
function serviceUsers(): { replication: RedisUser; sentinel: RedisUser } {
  const pw = () => randomBytes(18).toString('hex');
  return {
    replication: { user: 'strata-replication', password: pw(), rules: '+psync +replconf +ping' },
    sentinel: {
      user: 'strata-sentinel', password: pw(),
      rules: 'allchannels +multi +slaveof +replicaof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill',
    },
  };
}

/** The sentinel.conf of one sentinel watching the primary on `primaryPort`. */
export function sentinelConfig(port: number, dir: string, name: string, primaryPort: number, quorum: number, downAfterMs: number, login?: RedisUser): string {
  if (!CREDENTIAL.test(name)) throw new LocalServerError('invalid_options', 'a sentinel primary name is 1-128 of A-Z a-z 0-9 _ . -', { server: 'redis-server' });
  return [
    '# Written by @strata/local-servers; the sentinel rewrites it as it learns.',
    'bind 127.0.0.1', `port ${port}`, 'daemonize no', 'logfile ""', `dir ${quote(dir)}`,
    `sentinel monitor ${name} 127.0.0.1 ${primaryPort} ${quorum}`,
    `sentinel down-after-milliseconds ${name} ${downAfterMs}`,
    `sentinel failover-timeout ${name} ${Math.max(3000, downAfterMs * 3)}`,
    `sentinel parallel-syncs ${name} 1`,
    ...(login ? [`sentinel auth-user ${name} ${login.user}`, `sentinel auth-pass ${name} ${login.password}`] : []),
  ].join('\n') + '\n';
}

/** Starts a primary, its replicas (in sync before this resolves) and sentinels watching them. */
export async function startRedisSentinels(options: ReplicatedRedisOptions): Promise<ReplicatedRedis> {
  const name = options.name ?? 'strata';
  const nReplicas = checkInteger('redis-server', 'replicas', options.replicas ?? 1, 1, 8);
  const nSentinels = checkInteger('redis-server', 'sentinels', options.sentinels ?? 3, 1, 9);
  const downAfterMs = checkInteger('redis-server', 'downAfterMs', options.downAfterMs ?? 1000, 100, 600_000);
  const given = options.users ?? [];
  const svc = given.length > 0 ? serviceUsers() : null;
  const users = svc ? [...given, svc.replication, svc.sentinel] : [];
  const started: LocalServer[] = [];
  try {
    const primary = await startRedis({ dir: join(options.dir, 'primary'), users });
    started.push(primary);
    const replicas: LocalServer[] = [];
    for (let i = 0; i < nReplicas; i++) {
      const r = await startRedis({ dir: join(options.dir, `replica-${i}`), users, replicaOf: { port: primary.port, user: svc?.replication } });
      started.push(r);
      replicas.push(r);
    }
    await waitFor(async () => (await redisCommand(primary.port, 'INFO replication', svc?.sentinel)).includes(`connected_slaves:${nReplicas}`), 10_000, 'replicas in sync');
    const sentinels: LocalServer[] = [];
    for (let i = 0; i < nSentinels; i++) {
      const resolved = await resolveServerOptions('redis-server', { dir: join(options.dir, `sentinel-${i}`) });
      const config = join(resolved.dir, 'sentinel.conf');
      await writeFile(config, sentinelConfig(resolved.port, resolved.dir, name, primary.port, Math.floor(nSentinels / 2) + 1, downAfterMs, svc?.sentinel), { mode: 0o600 });
      const s = await launchServer({
        name: 'redis-sentinel', binary: resolved.binary, args: [config, '--sentinel'], cwd: resolved.dir,
        url: `redis://127.0.0.1:${resolved.port}`, port: resolved.port, probe: (port, t) => redisReady(port, t),
        startTimeoutMs: resolved.startTimeoutMs, stopTimeoutMs: resolved.stopTimeoutMs,
      });
      started.push(s);
      sentinels.push(s);
    }
    const login = given[0];
    const auth = login ? `${login.user}:${login.password}@` : '';
    const primaryPort = async (): Promise<number> => {
      for (const s of sentinels) {
        const text = await redisCommand(s.port, `SENTINEL get-master-addr-by-name ${name}`).catch(() => '');
        const port = /\r\n(\d+)\r\n$/.exec(text)?.[1];
        if (port) return Number(port);
      }
      throw new LocalServerError('exited', 'no sentinel knows the primary', { server: 'redis-sentinel' });
    };
    // Every sentinel has found the replicas and the other sentinels before a failover may be needed.
    await waitFor(async () => {
      const counts = await Promise.all(sentinels.map((s) => redisCommand(s.port, `SENTINEL master ${name}`).catch(() => '')));
      return counts.every((t) => fieldOf(t, 'num-slaves') === String(nReplicas) && fieldOf(t, 'num-other-sentinels') === String(nSentinels - 1));
    }, 15_000, 'sentinels that know each other and the replicas');
    return {
      primary, replicas, sentinels, primaryPort,
      url: `redis-sentinel://${auth}${sentinels.map((s) => `127.0.0.1:${s.port}`).join(',')}/${name}`,
      stop: async () => {
        await Promise.all(started.map((s) => s.stop()));
      },
    };
  } catch (err) {
    await Promise.all(started.map((s) => s.stop()));
    throw err;
  }
}

/** A field of a flat RESP array reply (SENTINEL master's name/value pairs). */
function fieldOf(resp: string, field: string): string | undefined {
  const parts = resp.split('\r\n').filter((x) => !/^[*$]/.test(x));
  const i = parts.indexOf(field);
  return i >= 0 ? parts[i + 1] : undefined;
}

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new LocalServerError('start_timeout', `waited ${ms} ms for ${what}`, { server: 'redis-server' });
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One inline command's raw RESP answer (logged in as `login` first when given). */
async function redisCommand(port: number, command: string, login?: RedisUser, timeoutMs = 2000): Promise<string> {
  const auth = login ? `AUTH ${login.user} ${login.password}\r\n` : '';
  const replies = login ? 2 : 1;
  const text = await tcpExchange(port, `${auth}${command}\r\n`, (t) => respEnd(t, replies) >= 0, timeoutMs);
  if (text === null) throw new LocalServerError('exited', `no answer on port ${port}`, { server: 'redis-server' });
  return text;
}

/**
 * Where `count` whole RESP values (simple strings, errors, integers, bulk strings, arrays of
 * them) end in `t`, or -1 while they are incomplete.
 */
export function respEnd(t: string, count: number, at = 0): number {
  for (let n = 0; n < count; n++) {
    const eol = t.indexOf('\r\n', at);
    if (eol < 0) return -1;
    const head = t[at]!, num = Number(t.slice(at + 1, eol));
    at = eol + 2;
    if (head === '$' && num >= 0) {
      // bulk strings count bytes; these replies are ASCII
      if (t.length < at + num + 2) return -1;
      at += num + 2;
    } else if (head === '*' && num > 0) {
      at = respEnd(t, num, at);
      if (at < 0) return -1;
    }
  }
  return at;
}
