// Per-sequence samplers of a last stage, and the log-probabilities OpenAI clients ask for.
import { LlamaError, Sampler, type SamplingOptions, type Vocab } from '@strata/ggml';
import type { Sampling, SampledToken, TokenLogprob } from '@strata/wire';

/** Sampling settings from the wire, with the wire's zero values meaning "off". */
export function samplingOptions(s: Sampling): SamplingOptions {
  return {
    temperature: s.temperature,
    topK: s.topK,
    topP: s.topP > 0 && s.topP < 1 ? s.topP : 1,
    minP: s.minP,
    repeatPenalty: s.repeatPenalty > 0 ? s.repeatPenalty : 1,
    frequencyPenalty: s.frequencyPenalty,
    presencePenalty: s.presencePenalty,
    seed: s.seed,
    grammar: s.grammar || undefined,
    logitBias: Object.keys(s.logitBias).length > 0 ? new Map(Object.entries(s.logitBias).map(([k, v]) => [Number(k), v])) : undefined,
  };
}

interface SeqSampler {
  /** null: libllama refused the settings (`refused` says why) */
  sampler: Sampler | null;
  refused: string;
  logprobs: boolean;
  topLogprobs: number;
  ignoreEos: boolean;
}

/** The samplers of the sequences a last stage serves, by seq id. dispose() is idempotent. */
export class SamplerSet {
  readonly #bySeq = new Map<number, SeqSampler>();
  readonly #nVocab: number;
  readonly #vocab: Vocab | null;

  constructor(nVocab: number, vocab: Vocab | null) {
    this.#nVocab = nVocab;
    this.#vocab = vocab;
  }

  /**
   * Starts a fresh sampler for `seq` (a new request on it), replaying what it already sampled
   * elsewhere. Settings libllama refuses (an invalid grammar) fail only this sequence: its samples
   * carry the error, and the step's other sequences go on.
   */
  reset(seq: number, s: Sampling, replay: readonly number[] = []): void {
    this.drop(seq);
    let sampler: Sampler | null = null, refused = '';
    try {
      sampler = Sampler.create(this.#nVocab, samplingOptions(s), this.#vocab ?? undefined);
    } catch (err) {
      if (!(err instanceof LlamaError)) throw err;
      refused = err.message;
    }
    if (sampler && replay.length > 0) sampler.replay(replay);
    this.#bySeq.set(seq, { sampler, refused, logprobs: s.logprobs, topLogprobs: Math.min(s.topLogprobs, 20), ignoreEos: s.ignoreEos });
  }

  /** whether `seq` has a sampler */
  has(seq: number): boolean {
    return this.#bySeq.has(seq);
  }

  /** Samples `seq`'s next token from one row of logits. */
  sample(seq: number, row: Float32Array): SampledToken {
    const s = this.#bySeq.get(seq);
    if (!s) throw new Error(`sequence ${seq} has no sampler`);
    if (!s.sampler) {
      const code = /grammar/.test(s.refused) ? 'invalid_grammar' : 'bad_request';
      return { $typeName: 'strata.v1.SampledToken', seq, token: 0, eog: false, logprob: 0, top: [], embedding: [], error: { $typeName: 'strata.v1.Error', code, message: `sequence ${seq}: ${s.refused}`, workerId: '' } };
    }
    const token = s.sampler.sample(row);
    const eog = this.#vocab?.isEog(token) ?? false;
    if (!s.logprobs) return { $typeName: 'strata.v1.SampledToken', seq, token, eog, logprob: 0, top: [], embedding: [] };
    const lse = logSumExp(row);
    const top: TokenLogprob[] = s.topLogprobs > 0
      ? largest(row, s.topLogprobs).map((t) => ({ $typeName: 'strata.v1.TokenLogprob', token: t, logprob: row[t]! - lse }))
      : [];
    return { $typeName: 'strata.v1.SampledToken', seq, token, eog, logprob: row[token]! - lse, top, embedding: [] };
  }

  /** Whether sample `t` ends its sequence's choice: a failure, or an end of generation it does not ignore. */
  ends(t: SampledToken): boolean {
    return t.error !== undefined || (t.eog && !this.#bySeq.get(t.seq)?.ignoreEos);
  }

  /** Frees `seq`'s sampler, if any. */
  drop(seq: number): void {
    this.#bySeq.get(seq)?.sampler?.dispose();
    this.#bySeq.delete(seq);
  }

  /** Frees every sampler. */
  dispose(): void {
    for (const s of this.#bySeq.values()) s.sampler?.dispose();
    this.#bySeq.clear();
  }
}

/** log Σ exp(row) without overflow. */
export function logSumExp(row: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
  return max + Math.log(sum);
}

/** indices of the k largest values, largest first */
export function largest(row: Float32Array, k: number): number[] {
  const best: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (best.length === k && row[i]! <= row[best[k - 1]!]!) continue;
    let j = Math.min(best.length, k - 1);
    if (best.length < k) best.push(i);
    while (j > 0 && row[best[j - 1]!]! < row[i]!) {
      best[j] = best[j - 1]!;
      j--;
    }
    best[j] = i;
  }
  return best;
}
