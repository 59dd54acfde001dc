// Options every local server takes, and their resolution: user options → defaults → validated.
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { LocalServerError } from './errors.ts';
import { findBinary } from './find-binary.ts';
import { freePort } from './free-port.ts';

/** Options shared by startNats and startRedis. */
export interface ServerOptions {
  /** directory for the config file (and Redis's data); created if missing, never removed */
  dir: string;
  /** loopback port; a free one when absent */
  port?: number;
  /** executable name or path; the server's usual name looked up by findBinary when absent */
  binary?: string;
  /** ms until the server must answer; 10 000 by default */
  startTimeoutMs?: number;
  /** ms stop() waits after SIGTERM before SIGKILL; 5 000 by default */
  stopTimeoutMs?: number;
}

/** ServerOptions with defaults applied and checked. */
export interface ResolvedServerOptions {
  /** absolute */
  dir: string;
  port: number;
  /** absolute path of the executable */
  binary: string;
  startTimeoutMs: number;
  stopTimeoutMs: number;
}

/** Throws LocalServerError `invalid_options` unless `value` is an integer in [min, max]. */
export function checkInteger(server: string, field: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new LocalServerError('invalid_options', `${server}: ${field} must be an integer in ${min}..${max}, got ${value}`, { server });
  }
  return value;
}

/** Finds the binary, picks a port, creates the directory; throws LocalServerError. */
export async function resolveServerOptions(server: string, options: ServerOptions): Promise<ResolvedServerOptions> {
  if (typeof options.dir !== 'string' || options.dir === '') {
    throw new LocalServerError('invalid_options', `${server}: dir is required`, { server });
  }
  const binary = findBinary(options.binary ?? server);
  const startTimeoutMs = checkInteger(server, 'startTimeoutMs', options.startTimeoutMs ?? 10_000, 1, 3_600_000);
  const stopTimeoutMs = checkInteger(server, 'stopTimeoutMs', options.stopTimeoutMs ?? 5_000, 1, 3_600_000);
  const port = options.port === undefined ? await freePort() : checkInteger(server, 'port', options.port, 1, 65_535);
  const dir = resolve(options.dir);
  await mkdir(dir, { recursive: true });
  return { dir, port, binary, startTimeoutMs, stopTimeoutMs };
}
