// A private redis-server on a loopback port, its data in the caller's directory.
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
}

/** A redis.conf string value: double-quoted, backslash and quote escaped. */
function quote(value: string): string {
  const control = [...value].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
  if (control) throw new LocalServerError('invalid_options', `redis-server: control character in ${JSON.stringify(value)}`, { server: 'redis-server' });
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** The redis.conf that startRedis writes: loopback only, foreground, data in `dir`. */
export function redisConfig(port: number, dir: string, appendonly: boolean): string {
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
  ].join('\n') + '\n';
}

/** Ready once `PING` gets `+PONG` (a server still loading its data answers `-LOADING`). */
async function redisReady(port: number, timeoutMs: number): Promise<boolean> {
  const text = await tcpExchange(port, 'PING\r\n', (t) => t.includes('\r\n'), timeoutMs);
  return text !== null && text.startsWith('+PONG');
}

/** Starts redis-server on 127.0.0.1 with `dir/redis.conf` and resolves once it answers PING. */
export async function startRedis(options: RedisOptions): Promise<LocalServer> {
  const resolved = await resolveServerOptions('redis-server', options);
  const config = join(resolved.dir, 'redis.conf');
  await writeFile(config, redisConfig(resolved.port, resolved.dir, options.appendonly ?? true));
  return launchServer({
    name: 'redis-server',
    binary: resolved.binary,
    args: [config],
    cwd: resolved.dir,
    url: `redis://127.0.0.1:${resolved.port}`,
    port: resolved.port,
    probe: redisReady,
    startTimeoutMs: resolved.startTimeoutMs,
    stopTimeoutMs: resolved.stopTimeoutMs,
  });
}
