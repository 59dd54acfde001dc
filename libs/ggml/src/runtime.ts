// Loads the shared libraries once per process and binds every header module to them.
import koffi, { type LibraryHandle } from 'koffi';
import { bindGgml, type GgmlApi } from './ffi/ggml.ts';
import { bindGgmlAlloc, type GgmlAllocApi } from './ffi/ggml-alloc.ts';
import { bindGgmlBackend, type GgmlBackendApi } from './ffi/ggml-backend.ts';
import { bindLlama, type LlamaApi } from './ffi/llama.ts';
import { declareTypes } from './ffi/types.ts';
import { NativeLibraryError } from './errors.ts';
import { findLibrary, locateNativeLibs, type LocateOptions, type NativeLibs } from './native-libs.ts';

/** Every bound C API plus where it was loaded from. */
export interface Native {
  libs: NativeLibs;
  ggml: GgmlApi;
  backend: GgmlBackendApi;
  alloc: GgmlAllocApi;
  llama: LlamaApi;
}

let loaded: Native | null = null;
// Kept alive for the process: ggml and libllama hold the pointer.
let logCallback: unknown = null;

/** ggml log levels (enum ggml_log_level). */
export const LogLevel = { DEBUG: 1, INFO: 2, WARN: 3, ERROR: 4 } as const;

/** Options for {@link loadNative}. */
export interface LoadOptions extends LocateOptions {
  /** lowest ggml/libllama log level written to stderr (default WARN; 0 keeps libllama's own logger) */
  logLevel?: number;
  /** say on stderr when the slower prebuilt binaries are used (default true) */
  warnPrebuilt?: boolean;
}
let loadedWith: string | null = null;

/**
 * Loads ggml and libllama (once per process). Later calls return the same instance; asking for
 * a different directory after the first load is an error, since a process can hold one ggml.
 */
export function loadNative(options: LoadOptions = {}): Native {
  const libs = locateNativeLibs(options);
  if (loaded) {
    if (options.dir && loadedWith !== libs.dir) {
      throw new NativeLibraryError(`ggml already loaded from ${loadedWith}; cannot load ${libs.dir} too`);
    }
    return loaded;
  }
  declareTypes();
  const isSo = (prefix: string) => (n: string) => n.startsWith(prefix) && /\.so(\.\d+)*$/.test(n);
  let base: LibraryHandle, ggmlLib: LibraryHandle, llamaLib: LibraryHandle;
  try {
    base = koffi.load(findLibrary(libs.dir, isSo('libggml-base'), 'libggml-base'));
    ggmlLib = koffi.load(findLibrary(libs.dir, (n) => isSo('libggml')(n) && !n.startsWith('libggml-'), 'libggml'));
    llamaLib = koffi.load(findLibrary(libs.dir, (n) => isSo('libllama')(n) && !n.startsWith('libllama-'), 'libllama'));
  } catch (err) {
    if (err instanceof NativeLibraryError) throw err;
    throw new NativeLibraryError(`cannot load ggml from ${libs.dir}: ${(err as Error).message}`);
  }
  const llama = bindLlama(llamaLib);
  const ggml = bindGgml(base);
  const minLevel = options.logLevel ?? LogLevel.WARN;
  if (minLevel > 0) {
    // Continuation lines (level 5) follow the level of the line they continue.
    let last = LogLevel.INFO as number;
    logCallback = koffi.register((level: number, text: string) => {
      if (level !== 5) last = level;
      if (last >= minLevel) process.stderr.write(text);
    }, koffi.pointer('ggml_log_callback'));
    ggml.ggml_log_set(logCallback, null);
    llama.llama_log_set(logCallback, null);
  }
  const backend = bindGgmlBackend(base, ggmlLib);
  // A dynamic-backend build (the prebuilt one) registers its CPU variants from files.
  if (backend.ggml_backend_dev_count() === 0) backend.ggml_backend_load_all_from_path(libs.dir);
  if (backend.ggml_backend_dev_count() === 0) throw new NativeLibraryError(`no ggml backend device registered from ${libs.dir}`);
  llama.llama_backend_init();
  loaded = { libs, ggml, backend, alloc: bindGgmlAlloc(base), llama };
  loadedWith = libs.dir;
  if (libs.kind === 'prebuilt' && options.warnPrebuilt !== false) {
    process.stderr.write(`strata: using node-llama-cpp's prebuilt portable ggml (${libs.dir}); a native build is about 2x faster on prompts (npm run build:native)\n`);
  }
  return loaded;
}

/**
 * Load options from the environment: the native layer loads lazily under whichever library first
 * needs it, so its process-wide defaults are the one configuration read here, in one place.
 * STRATA_GGML: 'native' | 'prebuilt' | a library directory (default: native when built).
 * STRATA_GGML_LOG: debug | info | warn | error | none (default warn).
 */
export function loadOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): LoadOptions {
  const o: LoadOptions = {};
  const choice = env.STRATA_GGML;
  if (choice === 'native' || choice === 'prebuilt') o.prefer = choice;
  else if (choice) o.dir = choice;
  const levels: Record<string, number> = { debug: LogLevel.DEBUG, info: LogLevel.INFO, warn: LogLevel.WARN, error: LogLevel.ERROR, none: 99 };
  const log = env.STRATA_GGML_LOG?.toLowerCase();
  if (log && log in levels) o.logLevel = levels[log];
  return o;
}

/** The loaded native layer; loads it with the environment's defaults when nothing was loaded yet. */
export function native(): Native {
  return loaded ?? loadNative(loadOptionsFromEnv());
}
