// Builds ggml and libllama natively from the llama.cpp snapshot node-llama-cpp ships
// (llama/gitRelease.bundle), into the per-machine cache keyed by version, GPU kind and CPU, and
// extracts the tokenizer vocabularies that synthetic models use. Run by the root postinstall and
// by `npm run build:native`. Without cmake, a C++ compiler and git it leaves the prebuilt binaries
// in charge and says so.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import {
  cpuKey, llamaPackageDir, llamaPackageVersion, nativeBuildDir, readNativeManifest, strataCacheDir,
  type NativeManifest,
} from './native-libs.ts';

/** Vocabulary files of the shipped snapshot that `strata model synth` uses. */
export const VOCAB_FILES = ['ggml-vocab-llama-spm.gguf', 'ggml-vocab-qwen2.gguf', 'ggml-vocab-llama-bpe.gguf'];

/** Directory holding the extracted vocabularies for a node-llama-cpp version. */
export function vocabDir(version = llamaPackageVersion(), cacheRoot?: string): string {
  return join(strataCacheDir(cacheRoot), 'vocab', version);
}

function log(msg: string): void {
  process.stderr.write(`strata native: ${msg}\n`);
}

function has(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Where the pinned llama.cpp sources are: `STRATA_LLAMA_SRC` when set (a device check carries
 * them unpacked, without the git bundle), else a clone of the shipped snapshot in the cache.
 */
function sourceDir(version: string): string {
  return process.env.STRATA_LLAMA_SRC || join(strataCacheDir(), 'llama', `src-${version}`);
}

/** `-DCMAKE_CUDA_ARCHITECTURES=…` when `STRATA_CUDA_ARCHS` names them (e.g. 90: only sm_90, minutes instead of an hour). */
function cudaArchArgs(gpu: 'cpu' | 'cuda'): string[] {
  const archs = process.env.STRATA_CUDA_ARCHS;
  return gpu === 'cuda' && archs ? [`-DCMAKE_CUDA_ARCHITECTURES=${archs}`] : [];
}

/** Clones the shipped snapshot into `dir` (once). */
function ensureSource(dir: string): void {
  if (existsSync(join(dir, 'CMakeLists.txt'))) return;
  rmSync(dir, { recursive: true, force: true });
  const bundle = join(llamaPackageDir(), 'llama', 'gitRelease.bundle');
  log(`cloning the llama.cpp snapshot from ${bundle}`);
  execFileSync('git', ['clone', '--quiet', bundle, dir], { stdio: 'inherit' });
}

/** Copies the vocabularies out of the snapshot into the cache (once). */
export function ensureVocab(srcDir: string, version: string, cacheRoot?: string): string {
  const out = vocabDir(version, cacheRoot);
  if (VOCAB_FILES.every((f) => existsSync(join(out, f)))) return out;
  ensureSource(srcDir);
  mkdirSync(out, { recursive: true });
  for (const f of VOCAB_FILES) cpSync(join(srcDir, 'models', f), join(out, f));
  return out;
}

function withLock<T>(lock: string, fn: () => T): T {
  try {
    if (existsSync(lock) && Date.now() - statSync(lock).mtimeMs > 2 * 3600_000) rmSync(lock, { recursive: true, force: true });
    mkdirSync(dirname(lock), { recursive: true });
    mkdirSync(lock);
  } catch {
    throw new Error(`another build holds ${lock}; wait for it or remove the folder`);
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * Whether AMX tile instructions really run here. Some virtual machines advertise AMX in CPUID
 * but do not enable its register state, and ggml's AMX kernels then die with SIGILL; a native
 * build must only use what executes.
 */
export function amxUsable(workDir: string): boolean {
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
  if (!/\bamx_tile\b/.test(cpuinfo)) return false;
  mkdirSync(workDir, { recursive: true });
  const src = join(workDir, 'amx-probe.c'), bin = join(workDir, 'amx-probe');
  writeFileSync(src, [
    '#include <immintrin.h>',
    '#include <sys/syscall.h>',
    '#include <unistd.h>',
    'int main(void) {',
    '  if (syscall(SYS_arch_prctl, 0x1023, 18)) return 2;',
    '  unsigned char cfg[64] = {0}; cfg[0] = 1; cfg[16] = 64; cfg[48] = 16;',
    '  _tile_loadconfig(cfg); _tile_zero(0); _tile_release();',
    '  return 0;',
    '}',
  ].join('\n'));
  const cc = spawnSync('cc', ['-O1', '-mamx-tile', src, '-o', bin], { stdio: 'ignore' });
  if (cc.status !== 0) return false;
  return spawnSync(bin, [], { stdio: 'ignore' }).status === 0;
}

/** Configures and builds the `llama` target (and its ggml) natively; returns the manifest. */
function build(srcDir: string, outDir: string, gpu: 'cpu' | 'cuda', version: string, portable: boolean): NativeManifest {
  const buildDir = `${outDir}.build`;
  const started = Date.now();
  const cmakeArgs = [
    '-S', srcDir, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release', '-DBUILD_SHARED_LIBS=ON',
    '-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON', `-DGGML_NATIVE=${portable ? 'OFF' : 'ON'}`, '-DGGML_BACKEND_DL=OFF',
    '-DLLAMA_BUILD_TESTS=OFF', '-DLLAMA_BUILD_EXAMPLES=OFF', '-DLLAMA_BUILD_TOOLS=OFF',
    '-DLLAMA_BUILD_SERVER=OFF', '-DLLAMA_BUILD_COMMON=OFF', '-DLLAMA_CURL=OFF', '-DLLAMA_OPENSSL=OFF',
    `-DGGML_CUDA=${gpu === 'cuda' ? 'ON' : 'OFF'}`, ...cudaArchArgs(gpu),
  ];
  if (has('ninja')) cmakeArgs.push('-G', 'Ninja');
  const amx = amxUsable(buildDir);
  if (!amx) {
    // -march=native would turn AMX on where CPUID claims it; explicit -mno-* flags win over -march.
    const noAmx = '-mno-amx-tile -mno-amx-int8 -mno-amx-bf16';
    cmakeArgs.push(`-DCMAKE_C_FLAGS=${noAmx}`, `-DCMAKE_CXX_FLAGS=${noAmx}`);
  }
  log(`configuring (${gpu}${portable ? ', portable' : ''}, AMX ${amx ? 'on' : 'off'}) in ${buildDir}`);
  execFileSync('cmake', cmakeArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
  log(`building libllama and ggml with ${availableParallelism()} jobs (minutes; once per machine)`);
  execFileSync('cmake', ['--build', buildDir, '--target', 'llama', '-j', String(availableParallelism())], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const binDir = [join(buildDir, 'bin'), join(buildDir, 'src'), join(buildDir, 'ggml', 'src')].find(
    (d) => existsSync(d) && readdirSync(d).some((f) => f.startsWith('libllama')),
  ) ?? join(buildDir, 'bin');
  mkdirSync(outDir, { recursive: true });
  const libs: string[] = [];
  for (const f of readdirSync(binDir)) {
    if (/^lib(ggml|llama).*\.so/.test(f)) {
      cpSync(join(binDir, f), join(outDir, f), { verbatimSymlinks: true });
      libs.push(f);
    }
  }
  const manifest: NativeManifest = {
    version, gpu, cpuKey: cpuKey(), amx, builtAt: new Date().toISOString(), seconds: (Date.now() - started) / 1000, libs,
  };
  writeFileSync(join(outDir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  rmSync(buildDir, { recursive: true, force: true });
  return manifest;
}

/**
 * Builds one of llama.cpp's own tools (`llama-server`, `llama-bench`; statically linked, this
 * machine's CPU, with CUDA for `gpu` 'cuda') from the pinned snapshot, once, into `outDir`;
 * returns the binary's path.
 */
function ensureTool(tool: 'llama-server' | 'llama-bench', gpu: 'cpu' | 'cuda', outDir: string, version: string): string {
  const bin = join(outDir, tool);
  if (existsSync(bin)) return bin;
  const srcDir = sourceDir(version);
  const missing = ['cmake', 'c++', ...(existsSync(join(srcDir, 'CMakeLists.txt')) ? [] : ['git'])].filter((c) => !has(c));
  if (missing.length > 0) throw new Error(`building ${tool} needs ${missing.join(', ')}`);
  return withLock(`${outDir}.lock`, () => {
    ensureSource(srcDir);
    const buildDir = `${outDir}.build`;
    const cmakeArgs = [
      '-S', srcDir, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release', '-DBUILD_SHARED_LIBS=OFF', '-DGGML_NATIVE=ON',
      '-DGGML_BACKEND_DL=OFF', '-DLLAMA_BUILD_TESTS=OFF', '-DLLAMA_BUILD_EXAMPLES=OFF', '-DLLAMA_BUILD_TOOLS=ON',
      `-DLLAMA_BUILD_SERVER=${tool === 'llama-server' ? 'ON' : 'OFF'}`, '-DLLAMA_BUILD_COMMON=ON', '-DLLAMA_CURL=OFF', '-DLLAMA_OPENSSL=OFF',
      `-DGGML_CUDA=${gpu === 'cuda' ? 'ON' : 'OFF'}`, ...cudaArchArgs(gpu),
    ];
    if (has('ninja')) cmakeArgs.push('-G', 'Ninja');
    if (!amxUsable(buildDir)) {
      const noAmx = '-mno-amx-tile -mno-amx-int8 -mno-amx-bf16';
      cmakeArgs.push(`-DCMAKE_C_FLAGS=${noAmx}`, `-DCMAKE_CXX_FLAGS=${noAmx}`);
    }
    log(`building ${tool} (${gpu}) from the pinned snapshot in ${buildDir} (many minutes; once per machine)`);
    execFileSync('cmake', cmakeArgs, { stdio: ['ignore', 'ignore', 'inherit'] });
    execFileSync('cmake', ['--build', buildDir, '--target', tool, '-j', String(availableParallelism())], { stdio: ['ignore', 'ignore', 'inherit'] });
    mkdirSync(outDir, { recursive: true });
    cpSync(join(buildDir, 'bin', tool), bin);
    rmSync(buildDir, { recursive: true, force: true });
    return bin;
  });
}

/**
 * llama.cpp's own `llama-server` (CPU) from the same pinned snapshot, built once into
 * `<native build dir>-server/llama-server`. The serving benchmark runs it beside Strata as the
 * reference a user would otherwise pick.
 */
export function ensureLlamaServer(version = llamaPackageVersion()): string {
  return ensureTool('llama-server', 'cpu', `${nativeBuildDir(version, 'cpu')}-server`, version);
}

/** Where llama-bench of `gpu`'s kind is built: `<native build dir>-bench`. */
const benchDir = (gpu: 'cpu' | 'cuda', version: string) => `${nativeBuildDir(version, gpu)}-bench`;

/** Where {@link ensureLlamaBench} puts llama-bench for `gpu` ('' when it is not built). */
export function llamaBenchPath(gpu: 'cpu' | 'cuda', version = llamaPackageVersion()): string {
  const bin = join(benchDir(gpu, version), 'llama-bench');
  return existsSync(bin) ? bin : '';
}

/** llama.cpp's `llama-bench` of `gpu`'s kind (the device check), built once into `<native build dir>-bench/llama-bench`. */
export function ensureLlamaBench(gpu: 'cpu' | 'cuda', version = llamaPackageVersion()): string {
  return ensureTool('llama-bench', gpu, benchDir(gpu, version), version);
}

/**
 * Entry point: `native-build.ts [--gpu auto|cpu|cuda] [--force] [--strict] [--llama-bench]`
 * (`--llama-bench`: llama-bench of the same GPU kind too, for the device check).
 * `STRATA_LLAMA_SRC` names the sources (default: the shipped snapshot, cloned once) and
 * `STRATA_CUDA_ARCHS` the CUDA architectures to compile for (default: this machine's GPUs, or
 * ggml's list when portable). 'auto' (the default)
 * builds with CUDA where nvcc and an NVIDIA driver exist; a CUDA build holds the CPU backend too.
 * For container images, where `npm ci` runs the build with no flags and no GPU: STRATA_GGML_CUDA=1
 * means --gpu cuda, and STRATA_GGML_PORTABLE=1 builds for any x86-64 CPU with AVX2 and for ggml's
 * default list of CUDA architectures instead of this machine's CPU and GPUs (-DGGML_NATIVE=OFF).
 */
export function main(argv: string[]): number {
  const version = llamaPackageVersion();
  const gpuAt = argv.indexOf('--gpu');
  const gpuArg = gpuAt >= 0 ? argv[gpuAt + 1] : process.env.STRATA_GGML_CUDA === '1' ? 'cuda' : 'auto';
  const portable = process.env.STRATA_GGML_PORTABLE === '1';
  const gpu: 'cpu' | 'cuda' = gpuArg === 'cuda' || (gpuArg === 'auto' && has('nvcc') && has('nvidia-smi')) ? 'cuda' : 'cpu';
  const force = argv.includes('--force');
  const srcDir = sourceDir(version);
  if (!has('git') && !process.env.STRATA_LLAMA_SRC) {
    log('git not found: cannot read the shipped llama.cpp snapshot; using prebuilt binaries, and synthetic models need `apt-get install git`');
    return 1;
  }
  ensureVocab(srcDir, version);
  if (process.env.STRATA_NATIVE_BUILD === '0') {
    log('STRATA_NATIVE_BUILD=0: skipping the native build; the prebuilt binaries will be used');
    return 0;
  }
  const outDir = nativeBuildDir(version, gpu);
  const bench = () => {
    if (!argv.includes('--llama-bench')) return 0;
    try {
      log(`llama-bench ready at ${ensureLlamaBench(gpu, version)}`);
      return 0;
    } catch (err) {
      log(`llama-bench could not be built (${(err as Error).message})`);
      return 1;
    }
  };
  if (!force && readNativeManifest(outDir)) {
    log(`native ${gpu} build cached at ${outDir}`);
    return bench();
  }
  const missing = ['cmake', 'c++'].filter((c) => !has(c));
  if (gpu === 'cuda' && !has('nvcc')) missing.push('nvcc');
  if (missing.length > 0) {
    log(`no ${missing.join(', ')}: using node-llama-cpp's prebuilt portable binaries (about 2x slower on prompts)`);
    return 1;
  }
  try {
    const manifest = withLock(`${outDir}.lock`, () => {
      ensureSource(srcDir);
      if (force) rmSync(outDir, { recursive: true, force: true });
      return build(srcDir, outDir, gpu, version, portable);
    });
    log(`native ${gpu} build ready in ${outDir} (${manifest.seconds.toFixed(0)} s)`);
    return bench();
  } catch (err) {
    log(`native build failed (${(err as Error).message}); the prebuilt binaries will be used`);
    return 1;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = main(process.argv.slice(2));
