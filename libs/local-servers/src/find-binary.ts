// Where a server binary lives: PATH, then the sbin directories Debian packages install into.
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, join, resolve } from 'node:path';
import { LocalServerError } from './errors.ts';

/** Directories searched after PATH: Debian puts nats-server in /usr/sbin, which a user's PATH often lacks. */
export const EXTRA_BINARY_DIRS: readonly string[] = ['/usr/sbin', '/usr/local/sbin', '/usr/bin'];

/** What to tell a user whose machine lacks a server binary. */
export const INSTALL_HINT = 'install it with: apt-get install nats-server redis-server';

/** Options of {@link findBinary}. */
export interface FindBinaryOptions {
  /** PATH-style list of directories; process.env.PATH when absent */
  pathEnv?: string;
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Absolute path of an executable: `name` itself when it contains a slash, else the first match in
 * PATH, /usr/sbin, /usr/local/sbin, /usr/bin. Throws LocalServerError `not_installed`.
 */
export function findBinary(name: string, options: FindBinaryOptions = {}): string {
  if (name.includes('/')) {
    if (isExecutableFile(name)) return resolve(name);
    throw new LocalServerError('not_installed', `${name} is not an executable file; ${INSTALL_HINT}`, { server: name });
  }
  const pathEnv = options.pathEnv ?? process.env.PATH ?? '';
  const dirs = [...new Set([...pathEnv.split(delimiter).filter((d) => d !== ''), ...EXTRA_BINARY_DIRS])];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    if (isExecutableFile(candidate)) return resolve(candidate);
  }
  throw new LocalServerError('not_installed', `${name} not found in PATH or ${EXTRA_BINARY_DIRS.join(', ')}; ${INSTALL_HINT}`, { server: name });
}
