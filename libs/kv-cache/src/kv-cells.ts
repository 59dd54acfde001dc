// Cell bookkeeping of a KV cache, with llama.cpp's semantics (llama_kv_cells): each cell holds a
// position and the set of sequences that share it. Pure: no tensor in here.

/** Sequences a cache supports (seq ids 0..MAX_SEQ-1). */
export const MAX_SEQ = 256;
const WORDS = MAX_SEQ / 32;

/** Where a batch's tokens go: one cell index per token. */
export interface SlotPlan {
  /** cell index of each token // [n_tokens] */
  cells: Int32Array;
  /** true when the cells are one contiguous run */
  contiguous: boolean;
}

/** The cells of one KV stream. */
export class KvCells {
  /** number of cells */
  readonly size: number;
  /** position of each cell, -1 when empty // [size] */
  readonly pos: Int32Array;
  /** bitset of the seq ids in each cell // [size * WORDS] */
  readonly #seq: Uint32Array;
  #used = 0;
  /** next cell to try when looking for a slot */
  #head = 0;

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`KV cache size must be a positive integer, got ${size}`);
    this.size = size;
    this.pos = new Int32Array(size).fill(-1);
    this.#seq = new Uint32Array(size * WORDS);
  }

  /** Cells in use. */
  get used(): number {
    return this.#used;
  }

  /** One past the highest used cell (0 when empty). */
  usedMaxP1(): number {
    for (let i = this.size - 1; i >= 0; i--) if (this.pos[i]! >= 0) return i + 1;
    return 0;
  }

  /** Whether cell `i` belongs to sequence `seq`. */
  hasSeq(i: number, seq: number): boolean {
    return (this.#seq[i * WORDS + (seq >>> 5)]! & (1 << (seq & 31))) !== 0;
  }

  #checkSeq(seq: number): void {
    if (!Number.isInteger(seq) || seq < 0 || seq >= MAX_SEQ) throw new RangeError(`seq id ${seq} outside 0..${MAX_SEQ - 1}`);
  }

  #isEmptySeqSet(i: number): boolean {
    const base = i * WORDS;
    for (let w = 0; w < WORDS; w++) if (this.#seq[base + w] !== 0) return false;
    return true;
  }

  #free(i: number): void {
    this.pos[i] = -1;
    this.#seq.fill(0, i * WORDS, (i + 1) * WORDS);
    this.#used--;
    if (i < this.#head) this.#head = i;
  }

  /**
   * Finds cells for `n` tokens: a contiguous run from the head if there is one, else any free
   * cells. Returns null when fewer than `n` cells are free. Mutates nothing.
   */
  findSlot(n: number): SlotPlan | null {
    if (n < 1 || n > this.size - this.#used) return null;
    const cells = new Int32Array(n);
    let run = 0;
    for (let i = this.#head; i < this.size; i++) {
      if (this.pos[i] === -1) {
        if (++run === n) {
          for (let k = 0; k < n; k++) cells[k] = i - n + 1 + k;
          return { cells, contiguous: true };
        }
      } else {
        run = 0;
      }
    }
    let k = 0;
    for (let i = 0; i < this.size && k < n; i++) if (this.pos[i] === -1) cells[k++] = i;
    return { cells, contiguous: false };
  }

  /** Stamps a plan: token t gets position pos[t] in sequence seq[t]. */
  apply(plan: SlotPlan, pos: ArrayLike<number>, seq: ArrayLike<number>): void {
    const n = plan.cells.length;
    for (let t = 0; t < n; t++) {
      this.#checkSeq(seq[t]!);
      if (this.pos[plan.cells[t]!] !== -1) throw new Error(`invariant: slot plan targets used cell ${plan.cells[t]}`);
    }
    for (let t = 0; t < n; t++) {
      const i = plan.cells[t]!;
      const s = seq[t]!;
      this.pos[i] = pos[t]!;
      this.#seq[i * WORDS + (s >>> 5)]! |= 1 << (s & 31);
      this.#used++;
    }
    this.#head = (plan.cells[n - 1]! + 1) % this.size;
  }

  /**
   * Removes sequence `seq` (or every sequence when seq < 0) from cells with p0 <= pos < p1
   * (negative bounds are open). Cells left with no sequence are freed.
   */
  seqRemove(seq: number, p0: number, p1: number): boolean {
    const lo = p0 < 0 ? -Infinity : p0, hi = p1 < 0 ? Infinity : p1;
    if (seq >= 0) this.#checkSeq(seq);
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p < 0 || p < lo || p >= hi) continue;
      if (seq < 0) {
        this.#free(i);
      } else if (this.hasSeq(i, seq)) {
        this.#seq[i * WORDS + (seq >>> 5)]! &= ~(1 << (seq & 31));
        if (this.#isEmptySeqSet(i)) this.#free(i);
      }
    }
    return true;
  }

  /** Frees the cells of a plan that was applied but whose batch failed. */
  release(plan: SlotPlan): void {
    for (const i of plan.cells) if (this.pos[i]! >= 0) this.#free(i);
  }

  /** Smallest position of `seq`, or -1 when it has none. */
  seqPosMin(seq: number): number {
    let m = -1;
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p >= 0 && this.hasSeq(i, seq) && (m < 0 || p < m)) m = p;
    }
    return m;
  }

  /** Largest position of `seq`, or -1 when it has none. */
  seqPosMax(seq: number): number {
    let m = -1;
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p > m && this.hasSeq(i, seq)) m = p;
    }
    return m;
  }

  /** Empties every cell. */
  clear(): void {
    this.pos.fill(-1);
    this.#seq.fill(0);
    this.#used = 0;
    this.#head = 0;
  }
}
