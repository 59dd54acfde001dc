// A private redis-server on a loopback port, its data in the caller's directory; ACL users with
// passwords when asked for (the default user then is off, so a client must log in).
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LocalServerError } from './errors.ts';
import { launchServer, type LocalServer } from './managed-server.ts';
import { resolveServerOptions, type ServerOptions } from './server-options.ts';
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
export function redisConfig(port: number, dir: string, appendonly: boolean, users: readonly RedisUser[] = []): string {
  const acl = redisUsers(users);
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
  const auth = login ? `AUTH ${login.user} ${login.password}\r\n` : '';
  const text = await tcpExchange(port, `${auth}PING\r\n`, (t) => t.split('\r\n').length > (login ? 2 : 1), timeoutMs);
  return text !== null && text.split('\r\n')[login ? 1 : 0]!.startsWith('+PONG');
}

/** Starts redis-server on 127.0.0.1 with `dir/redis.conf` and resolves once it answers PING. */
export async function startRedis(options: RedisOptions): Promise<LocalServer> {
  const resolved = await resolveServerOptions('redis-server', options);
  const users = options.users ?? [];
  const config = join(resolved.dir, 'redis.conf');
  // passwords inside: the owner's only
  await writeFile(config, redisConfig(resolved.port, resolved.dir, options.appendonly ?? true, users), { mode: 0o600 });
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
