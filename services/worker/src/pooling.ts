// Embeddings on a last stage: the final hidden states of an embedding request's tokens, pooled per
// sequence across the micro-batches its prompt comes in (mean, first or last token, as the model's
// pooling type says) and scaled to unit length, as OpenAI's embeddings are.
import type { HParams } from '@strata/model';

interface Pool {
  /** sum of the rows (mean), or the row kept (cls, last) // [n_embd] */
  acc: Float64Array;
  rows: number;
}

/** The embeddings being pooled on a last stage, by seq id. */
export class EmbeddingPools {
  readonly #nEmbd: number;
  readonly #pooling: HParams['pooling'];
  readonly #bySeq = new Map<number, Pool>();

  constructor(nEmbd: number, pooling: HParams['pooling']) {
    this.#nEmbd = nEmbd;
    this.#pooling = pooling;
  }

  /** Starts `seq` over (a new request on it). */
  reset(seq: number): void {
    this.#bySeq.set(seq, { acc: new Float64Array(this.#nEmbd), rows: 0 });
  }

  /** Adds `seq`'s next rows, in position order // rows: [k * n_embd] */
  add(seq: number, rows: Float32Array): void {
    let p = this.#bySeq.get(seq);
    if (!p) {
      this.reset(seq);
      p = this.#bySeq.get(seq)!;
    }
    const d = this.#nEmbd, k = rows.length / d;
    if (k === 0) return;
    if (this.#pooling === 'cls') {
      if (p.rows === 0) for (let i = 0; i < d; i++) p.acc[i] = rows[i]!;
    } else if (this.#pooling === 'last') {
      for (let i = 0; i < d; i++) p.acc[i] = rows[(k - 1) * d + i]!;
    } else {
      for (let r = 0; r < k; r++) for (let i = 0; i < d; i++) p.acc[i]! += rows[r * d + i]!;
    }
    p.rows += k;
  }

  /** `seq`'s embedding, unit length, and forgets it // [n_embd] */
  finish(seq: number): number[] {
    const p = this.#bySeq.get(seq);
    this.#bySeq.delete(seq);
    if (!p || p.rows === 0) throw new Error(`sequence ${seq} has no rows to pool`);
    // the mean's 1/rows cancels in the normalization
    let norm = 0;
    for (const v of p.acc) norm += v * v;
    norm = Math.sqrt(norm);
    return Array.from(p.acc, (v) => (norm > 0 ? v / norm : 0));
  }

  /** Forgets `seq`. */
  drop(seq: number): void {
    this.#bySeq.delete(seq);
  }
}
