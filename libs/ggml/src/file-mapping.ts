// A file mapped read-only into memory (POSIX mmap through libc), as llama.cpp maps a GGUF: CPU
// weights then live in the page cache's pages instead of a copy, only the pages a stage's
// tensors occupy are ever read, and ggml computes on them where they are. On this project's CPUs
// a decode step over mapped f16 weights measured ~10 % faster than over the same weights read
// into an allocated buffer, for libllama and Strata alike (docs/engine.md).
import { closeSync, fstatSync, openSync } from 'node:fs';
import koffi from 'koffi';
import { GgmlError } from './errors.ts';
import type { RawPtr } from './ffi/types.ts';

const PROT_READ = 1;
const MAP_SHARED = 1;
const MADV_WILLNEED = 3;
const PAGE = 4096;

interface Libc {
  mmap(addr: null, length: number, prot: number, flags: number, fd: number, offset: number): number | bigint;
  munmap(addr: bigint, length: number): number;
  madvise(addr: bigint, length: number, advice: number): number;
}

let libc: Libc | null = null;

function bindLibc(): Libc {
  if (libc) return libc;
  let lib: ReturnType<typeof koffi.load>;
  try {
    lib = koffi.load(process.platform === 'darwin' ? 'libc.dylib' : 'libc.so.6');
  } catch (err) {
    // no C library to map with here: the caller reads the file instead
    throw new GgmlError('mmap_failed', `cannot load the C library for mmap: ${(err as Error).message}`);
  }
  libc = {
    mmap: lib.func('uintptr_t mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)') as Libc['mmap'],
    munmap: lib.func('int munmap(uintptr_t addr, size_t length)') as Libc['munmap'],
    madvise: lib.func('int madvise(uintptr_t addr, size_t length, int advice)') as Libc['madvise'],
  };
  return libc;
}

/** A whole file mapped read-only. dispose() unmaps it (after every buffer on it is freed); idempotent. */
export class FileMapping {
  #base: bigint;
  readonly size: number;
  readonly path: string;

  private constructor(base: bigint, size: number, path: string) {
    this.#base = base;
    this.size = size;
    this.path = path;
  }

  /** Maps `path`; throws GgmlError mmap_failed when the system refuses (the caller reads the file instead). */
  static open(path: string): FileMapping {
    const c = bindLibc();
    const fd = openSync(path, 'r');
    try {
      const size = fstatSync(fd).size;
      if (size === 0) throw new GgmlError('mmap_failed', `${path} is empty`);
      // (koffi gives a uintptr_t as a number where it fits)
      const base = BigInt(c.mmap(null, size, PROT_READ, MAP_SHARED, fd, 0));
      if (base === 0n || base === 0xffffffffffffffffn) throw new GgmlError('mmap_failed', `mmap of ${path} failed`);
      return new FileMapping(base, size, path);
    } finally {
      // the mapping holds the file; the descriptor is not needed any more
      closeSync(fd);
    }
  }

  /** The address of byte `offset` of the file. */
  at(offset: number): RawPtr {
    if (this.#base === 0n) throw new GgmlError('disposed', 'FileMapping used after dispose()');
    if (offset < 0 || offset > this.size) throw new GgmlError('bad_range', `offset ${offset} is outside ${this.path} (${this.size} bytes)`);
    return (this.#base + BigInt(offset)) as RawPtr;
  }

  /** Asks the system to read bytes [first, last) ahead, in the background (madvise WILLNEED). */
  prefetch(first: number, last: number): void {
    const start = Math.floor(first / PAGE) * PAGE;
    bindLibc().madvise(this.#base + BigInt(start), Math.max(0, Math.min(last, this.size) - start), MADV_WILLNEED);
  }

  dispose(): void {
    if (this.#base === 0n) return;
    bindLibc().munmap(this.#base, this.size);
    this.#base = 0n;
  }
}
