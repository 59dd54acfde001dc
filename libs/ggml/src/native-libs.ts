// Where the ggml/libllama shared libraries live: a native build in the per-machine cache, or
// node-llama-cpp's portable prebuilt binaries as the fallback.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { NativeLibraryError } from './errors.ts';

/** The exact node-llama-cpp release whose llama.cpp snapshot Strata binds (package.json pins it). */
export const LLAMA_PACKAGE = 'node-llama-cpp';

/** A directory of shared libraries and how it came to be. */
export interface NativeLibs {
  /** directory holding libggml-base, libggml, libllama (and the CPU backend variants) */
  dir: string;
  /** 'native': built here from the shipped source; 'prebuilt': node-llama-cpp's portable binaries */
  kind: 'native' | 'prebuilt';
  /** 'cpu' or 'cuda' */
  gpu: 'cpu' | 'cuda';
  /** node-llama-cpp version the libraries come from */
  version: string;
  /** AMX kernels may be used (a native build that probed them) */
  amx: boolean;
}

/** Manifest written next to a native build in the cache. */
export interface NativeManifest {
  version: string;
  gpu: 'cpu' | 'cuda';
  cpuKey: string;
  /** whether AMX kernels were compiled in (only where they really execute) */
  amx: boolean;
  builtAt: string;
  seconds: number;
  libs: string[];
}

const require = createRequire(import.meta.url);

/** Root of node-llama-cpp's installed package. */
export function llamaPackageDir(): string {
  // The package's exports hide package.json: walk up from its entry point instead (to its own
  // package.json: a device check's pack carries that and the entry, not the rest).
  let dir = dirname(require.resolve(LLAMA_PACKAGE));
  const isRoot = (d: string) => existsSync(join(d, 'package.json')) && (JSON.parse(readFileSync(join(d, 'package.json'), 'utf8')) as { name?: string }).name === LLAMA_PACKAGE;
  while (!isRoot(dir)) {
    const up = dirname(dir);
    if (up === dir) throw new NativeLibraryError(`cannot find the ${LLAMA_PACKAGE} package directory`);
    dir = up;
  }
  return dir;
}

/** Installed node-llama-cpp version. */
export function llamaPackageVersion(): string {
  const pkg = JSON.parse(readFileSync(join(llamaPackageDir(), 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

/** Strata's per-user cache root (native builds, vocabularies, synthetic models). */
export function strataCacheDir(override?: string): string {
  if (override) return override;
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), '.cache'), 'strata');
}

/** A short key for this processor: a native build is only valid on the CPU it was tuned for. */
export function cpuKey(): string {
  let text = `${process.arch}`;
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const first = info.split('\n\n')[0] ?? '';
    const pick = (field: string) => first.split('\n').find((l) => l.startsWith(field))?.split(':')[1]?.trim() ?? '';
    text += `|${pick('model name')}|${pick('flags')}`;
  } catch {
    // not Linux: the architecture alone keys the build
  }
  return createHash('sha256').update(text).digest('hex').slice(0, 12);
}

/** Cache directory of the native build for this version, GPU kind and CPU. */
export function nativeBuildDir(version: string, gpu: 'cpu' | 'cuda', cacheRoot?: string): string {
  return join(strataCacheDir(cacheRoot), 'llama', `${version}-${gpu}-${cpuKey()}`);
}

/** Reads a native build's manifest, or null when there is no complete build. */
export function readNativeManifest(dir: string): NativeManifest | null {
  const file = join(dir, 'manifest.json');
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as NativeManifest;
  } catch {
    return null;
  }
}

/** Directory of node-llama-cpp's prebuilt CPU binaries for this platform. */
export function prebuiltDir(gpu: 'cpu' | 'cuda' = 'cpu'): string {
  const platform = `${process.platform}-${process.arch}${gpu === 'cuda' ? '-cuda' : ''}`;
  const candidates = [join(llamaPackageDir(), 'node_modules'), join(llamaPackageDir(), '..')];
  for (const nm of candidates) {
    const dir = join(nm, '@node-llama-cpp', platform, 'bins', platform);
    if (existsSync(dir)) return dir;
  }
  throw new NativeLibraryError(`prebuilt binaries @node-llama-cpp/${platform} are not installed`);
}

/** Options for {@link locateNativeLibs}. */
export interface LocateOptions {
  /** explicit library directory (wins over everything) */
  dir?: string;
  /** 'auto' (default): native build if cached, else prebuilt */
  prefer?: 'auto' | 'native' | 'prebuilt';
  /** 'auto' (default: a CUDA build when one exists, else CPU), 'cpu' or 'cuda' */
  gpu?: 'auto' | 'cpu' | 'cuda';
  /** cache root override */
  cacheRoot?: string;
}

/** Finds the libraries to load, preferring a native build. */
export function locateNativeLibs(options: LocateOptions = {}): NativeLibs {
  const version = llamaPackageVersion();
  const want = options.gpu ?? 'auto';
  const gpu: 'cpu' | 'cuda' = want === 'auto'
    ? (readNativeManifest(nativeBuildDir(version, 'cuda', options.cacheRoot)) ? 'cuda' : 'cpu')
    : want;
  if (options.dir) {
    if (!existsSync(options.dir)) throw new NativeLibraryError(`library directory ${options.dir} does not exist`);
    const m = readNativeManifest(options.dir);
    return { dir: options.dir, kind: m ? 'native' : 'prebuilt', gpu, version, amx: m?.amx ?? false };
  }
  const prefer = options.prefer ?? 'auto';
  if (prefer !== 'prebuilt') {
    const dir = nativeBuildDir(version, gpu, options.cacheRoot);
    const m = readNativeManifest(dir);
    if (m) return { dir, kind: 'native', gpu, version, amx: m.amx ?? false };
    if (prefer === 'native') {
      throw new NativeLibraryError(`no native build in ${dir}: run \`npm run build:native\` (or npm install) first`);
    }
  }
  const dir = prebuiltDir(gpu);
  if (!existsSync(dir)) throw new NativeLibraryError(`prebuilt binaries not found at ${dir}`);
  return { dir, kind: 'prebuilt', gpu, version, amx: false };
}

/** The file in `dir` whose name matches, e.g. libggml-base*.so. */
export function findLibrary(dir: string, test: (name: string) => boolean, what: string): string {
  const hit = readdirSync(dir).filter(test).sort((a, b) => a.length - b.length)[0];
  if (!hit) throw new NativeLibraryError(`${what} not found in ${dir}`);
  return join(dir, hit);
}
