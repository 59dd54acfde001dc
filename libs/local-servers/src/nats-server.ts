// A private nats-server on a loopback port: plain core NATS, no JetStream; users with passwords
// when asked for (clients then connect with nats://user:password@host:port), each with the
// subjects it may publish and subscribe to when given.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { launchServer, type LocalServer } from './managed-server.ts';
import { checkInteger, resolveServerOptions, type ServerOptions } from './server-options.ts';
import { tcpExchange } from './tcp-probe.ts';
import { LocalServerError } from './errors.ts';

/** Options of {@link startNats}. */
export interface NatsOptions extends ServerOptions {
  /** largest message payload the server accepts, bytes; nats-server's 1 MiB when absent */
  maxPayload?: number;
  /** accounts clients must log in with; none: anyone connects */
  users?: NatsUser[];
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
export function natsConfig(port: number, maxPayload?: number, users: readonly NatsUser[] = []): string {
  const lines = ['# Written by @strata/local-servers; rewritten on every start.', `listen: "127.0.0.1:${port}"`];
  if (maxPayload !== undefined) lines.push(`max_payload: ${maxPayload}`);
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
  await writeFile(config, natsConfig(resolved.port, maxPayload, options.users), { mode: 0o600 });
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
