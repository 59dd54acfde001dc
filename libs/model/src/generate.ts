// Generation and teacher-forced scoring on an in-process pipeline.
import { Sampler, type SamplingOptions, type Vocab } from '@strata/ggml';
import type { Pipeline } from './pipeline.ts';

/** Options for {@link generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** tokens to generate at most */
  nPredict: number;
  /** largest prefill chunk (default 512) */
  nBatch?: number;
  /** sequence id to use (default 0) */
  seq?: number;
  /** stop at an end-of-generation token (default true) */
  stopAtEog?: boolean;
  /** called with each new token */
  onToken?: (token: number) => void;
}

/** Result of {@link generate}. */
export interface GenerateResult {
  tokens: number[];
  /** milliseconds spent in prompt processing and in generation */
  promptMs: number;
  genMs: number;
}

/** Feeds `prompt` in chunks; returns the logits of its last token. */
export function prefill(p: Pipeline, prompt: ArrayLike<number>, seq: number, startPos = 0, nBatch = 512): Float32Array {
  let logits: Float32Array = new Float32Array(0);
  for (let i = 0; i < prompt.length; i += nBatch) {
    const n = Math.min(nBatch, prompt.length - i);
    const tokens = new Int32Array(n), pos = new Int32Array(n), seqs = new Int32Array(n).fill(seq);
    for (let t = 0; t < n; t++) {
      tokens[t] = prompt[i + t]!;
      pos[t] = startPos + i + t;
    }
    logits = p.forward({ tokens, pos, seq: seqs, outputs: Int32Array.of(n - 1) });
  }
  return logits;
}

/** Generates up to nPredict tokens after `prompt` on sequence `seq`. */
export function generate(p: Pipeline, vocab: Vocab | null, prompt: ArrayLike<number>, o: GenerateOptions): GenerateResult {
  const seq = o.seq ?? 0;
  const sampler = Sampler.create(p.hp.nVocab, o, vocab ?? undefined);
  try {
    const t0 = performance.now();
    let logits = prefill(p, prompt, seq, 0, o.nBatch ?? 512);
    const t1 = performance.now();
    const out: number[] = [];
    let pos = prompt.length;
    const tok = new Int32Array(1), posArr = new Int32Array(1), seqArr = Int32Array.of(seq);
    for (let i = 0; i < o.nPredict; i++) {
      const next = sampler.sample(logits);
      out.push(next);
      o.onToken?.(next);
      if ((o.stopAtEog ?? true) && vocab?.isEog(next)) break;
      if (i === o.nPredict - 1) break;
      tok[0] = next;
      posArr[0] = pos++;
      logits = p.forward({ tokens: tok, pos: posArr, seq: seqArr });
    }
    return { tokens: out, promptMs: t1 - t0, genMs: performance.now() - t1 };
  } finally {
    sampler.dispose();
  }
}

/** The k largest (token, logit) pairs of one row, largest first. */
export function topK(row: Float32Array, k: number): { token: number; logit: number }[] {
  const best: { token: number; logit: number }[] = [];
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!;
    if (best.length < k) {
      best.push({ token: i, logit: v });
      best.sort((a, b) => b.logit - a.logit);
    } else if (v > best[k - 1]!.logit) {
      best[k - 1] = { token: i, logit: v };
      best.sort((a, b) => b.logit - a.logit);
    }
  }
  return best;
}

/** Teacher-forced logits of every position of `tokens` (one row of n_vocab per position). */
export function scoreAll(p: Pipeline, tokens: ArrayLike<number>, seq = 0, nBatch = 512): Float32Array[] {
  const rows: Float32Array[] = [];
  const nVocab = p.hp.nVocab;
  for (let i = 0; i < tokens.length; i += nBatch) {
    const n = Math.min(nBatch, tokens.length - i);
    const tk = new Int32Array(n), pos = new Int32Array(n), seqs = new Int32Array(n).fill(seq);
    for (let t = 0; t < n; t++) {
      tk[t] = tokens[i + t]!;
      pos[t] = i + t;
    }
    const logits = p.forward({ tokens: tk, pos, seq: seqs });
    for (let t = 0; t < n; t++) rows.push(logits.subarray(t * nVocab, (t + 1) * nVocab));
  }
  return rows;
}
