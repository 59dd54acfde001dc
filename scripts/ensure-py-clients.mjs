#!/usr/bin/env node
// Installs the Python OpenAI clients the tests drive against a cluster (test/py-clients.test.ts):
// the official `openai` package and LangChain's `langchain-openai`, pinned, with their
// dependencies, from PyPI into a folder of the cache (once; a folder per pin set):
//   <cache>/pypi/clients-<hash>     (<cache>: $XDG_CACHE_HOME/strata or ~/.cache/strata)
// Needs python3 with pip. Prints {"path": …, "python": …} with --json (PYTHONPATH=path).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** The clients, pinned as issue 18 names them. */
export const CLIENTS = ['openai==3.57.0', 'langchain-openai==1.7.4'];

const cache = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'strata');
const dir = join(cache, 'pypi', `clients-${createHash('sha256').update(CLIENTS.join(' ')).digest('hex').slice(0, 12)}`);

function fail(msg) {
  process.stderr.write(`ensure-py-clients: ${msg}\n`);
  process.exit(1);
}

if (!existsSync(join(dir, '.complete'))) {
  if (spawnSync('python3', ['-m', 'pip', '--version'], { stdio: 'ignore' }).status !== 0) fail('python3 with pip is missing: install it (apt-get install python3-pip)');
  const scratch = `${dir}.${process.pid}`;
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  process.stderr.write(`ensure-py-clients: pip install ${CLIENTS.join(' ')}\n`);
  const r = spawnSync('python3', ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-warn-conflicts', '--no-compile', '--target', scratch, ...CLIENTS], {
    stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' },
  });
  if (r.error || r.status !== 0) fail(`pip install failed${r.error ? `: ${r.error.message}` : ` (exit ${r.status})`}`);
  spawnSync('touch', [join(scratch, '.complete')]);
  rmSync(dir, { recursive: true, force: true });
  renameSync(scratch, dir);
}
if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ path: dir, python: 'python3' })}\n`);
