// What a running `strata up` tells the strata commands of the same user: where its gateway and
// NATS are, with the operator's credentials. It lives in the user's runtime directory
// ($XDG_RUNTIME_DIR, else ~/.cache/strata), readable by that user only, and goes when `strata up`
// stops; a file whose process is gone is ignored.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** A running local cluster. */
export interface LocalRun {
  pid: number;
  /** the gateway, e.g. http://127.0.0.1:8080 */
  url: string;
  /** NATS, with the operator role's credentials */
  natsUrl: string;
}

/** Where the run file is. */
export function runFilePath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.XDG_RUNTIME_DIR ? join(env.XDG_RUNTIME_DIR, 'strata') : join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'strata');
  return join(dir, 'up.json');
}

/** Records the run (replacing another's: the newest `strata up` is the one commands find). */
export function writeRunFile(run: LocalRun, path = runFilePath()): void {
  mkdirSync(join(path, '..'), { recursive: true, mode: 0o700 });
  rmSync(path, { force: true }); // a fresh file: created 0600, whoever made the old one
  writeFileSync(path, JSON.stringify(run), { mode: 0o600 });
}

/** Removes the run file if it is still this run's. */
export function removeRunFile(pid = process.pid, path = runFilePath()): void {
  if (readRunFile(path)?.pid === pid) rmSync(path, { force: true });
}

/** The run recorded there, when its process still runs. */
export function readRunFile(path = runFilePath()): LocalRun | null {
  let run: LocalRun;
  try {
    run = JSON.parse(readFileSync(path, 'utf8')) as LocalRun;
  } catch {
    return null;
  }
  if (typeof run?.pid !== 'number' || typeof run.natsUrl !== 'string' || typeof run.url !== 'string') return null;
  try {
    process.kill(run.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return null;
  }
  return run;
}
