// Shared pieces of the benchmarks: the benchmark model and argument parsing.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { strataCacheDir } from '@strata/ggml';
import { synthesize } from '@strata/model';

/** The ~134M-parameter llama the benchmarks run (llama.cpp's own figures were measured on one). */
export const BENCH_SPEC = { arch: 'llama', nLayer: 12, nEmbd: 768, nHead: 12, nHeadKv: 12, nFf: 2048, nCtxTrain: 2048, seed: 7 } as const;

/** Path of the benchmark model of a weight type, synthesized into the cache once. */
export function benchModel(type: 'f16' | 'q8_0'): string {
  const dir = join(strataCacheDir(), 'models');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `bench-llama-134m-${type}.gguf`);
  if (!existsSync(file)) {
    process.stdout.write(`synthesizing ${file} ...\n`);
    const params = synthesize({ ...BENCH_SPEC, type, out: file });
    process.stdout.write(`  ${(params / 1e6).toFixed(1)}M parameters\n`);
  }
  return file;
}

/** Benchmark options from argv: --threads, --reps, --pp, --tg, --types f16,q8_0, --only engine,kv,cluster,migration. */
export function parseBenchArgs(argv: string[]) {
  const get = (name: string, fallback: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] ? argv[i + 1]! : fallback;
  };
  return {
    threads: Number(get('threads', '2')),
    reps: Number(get('reps', '7')),
    pp: Number(get('pp', '512')),
    tg: Number(get('tg', '128')),
    types: get('types', 'f16,q8_0').split(',') as ('f16' | 'q8_0')[],
    only: new Set(get('only', 'engine,kv,cluster,migration').split(',')),
  };
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
/** Median: robust to the odd slow repetition on a shared machine. */
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
export const std = (xs: number[]) => {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
};
