// Cell bookkeeping of one KV stream, with llama.cpp's semantics (llama_kv_cells and the slot
// search of llama_kv_cache): each cell holds a position, a pending shift and the set of sequences
// that share it; each sequence knows its positions. Pure: no tensor in here.

/** Sequences a cache supports (seq ids 0..MAX_SEQ-1). */
export const MAX_SEQ = 256;
const WORDS = MAX_SEQ / 32;

/** Where a batch's tokens go: one cell index per token. */
export interface SlotPlan {
  /** cell index of each token // [n_tokens] */
  cells: Int32Array;
}

/**
 * The oldest position the next token of a sequence whose newest is `posMax` sees through a
 * window of `window` positions (llama.cpp's is_masked_swa against posMax + 1): older ones are masked.
 */
export function windowStart(posMax: number, window: number): number {
  return posMax + 2 - window;
}

/** Half-open position bounds with llama.cpp's rule: a negative bound is open. */
function bounds(p0: number, p1: number): [number, number] {
  return [p0 < 0 ? 0 : p0, p1 < 0 ? Number.MAX_SAFE_INTEGER : p1];
}

/**
 * The cells of a KV cache: one stream shared by every sequence (cells shared between sequences),
 * or one stream per sequence (seq s owns cells [s·streamSize, (s+1)·streamSize); copying between
 * streams copies cells, and the caller copies their K/V rows), as llama.cpp's kv_unified.
 */
export class KvCells {
  /** number of cells, all streams together */
  readonly size: number;
  /** 1: one stream shared by all sequences; n: sequence s has stream s */
  readonly streams: number;
  /** cells per stream */
  readonly streamSize: number;
  /** position of each cell, -1 when empty // [size] */
  readonly pos: Int32Array;
  /** shift accumulated since the keys were last re-rotated // [size] */
  readonly shift: Int32Array;
  /** bitset of the seq ids in each cell // [size * WORDS] */
  readonly #seq: Uint32Array;
  /** per sequence: position → number of cells holding it */
  readonly #seqPos: (Map<number, number> | undefined)[] = new Array(MAX_SEQ);
  #used = 0;
  /** per stream: cells in use */
  readonly #usedPer: Int32Array;
  /** per stream: where the next slot search starts (an absolute cell index) */
  readonly #heads: Int32Array;
  /**
   * a sliding window of this many positions (0: none): the cells of a group whose layers all
   * attend through it. As in llama.cpp's windowed cache, a cell that no sequence's next token
   * sees any more stays until a slot search takes it over (so a sequence cut back within what is
   * still held goes on exactly); taking it over drops that position and every older one of each
   * of its sequences.
   */
  readonly window: number;
  /** cells taken over from a position the window no longer saw */
  #reused = 0;
  #hasShift = false;

  constructor(size: number, streams = 1, window = 0) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`KV cache size must be a positive integer, got ${size}`);
    if (!Number.isInteger(streams) || streams < 1 || size % streams !== 0 || streams > MAX_SEQ) {
      throw new RangeError(`${streams} streams cannot split ${size} cells evenly`);
    }
    this.size = size;
    this.streams = streams;
    this.streamSize = size / streams;
    this.#usedPer = new Int32Array(streams);
    this.#heads = Int32Array.from({ length: streams }, (_, s) => s * this.streamSize);
    if (!Number.isInteger(window) || window < 0) throw new RangeError(`window must be a non-negative integer, got ${window}`);
    this.window = window;
    this.pos = new Int32Array(size).fill(-1);
    this.shift = new Int32Array(size);
    this.#seq = new Uint32Array(size * WORDS);
  }

  /** Cells in use. */
  get used(): number {
    return this.#used;
  }

  /** Cells a slot search took over from positions the window no longer saw. */
  get windowReused(): number {
    return this.#reused;
  }

  /** Whether some cell's keys still need re-rotating (after seqAdd/seqDivide). */
  get hasShift(): boolean {
    return this.#hasShift;
  }

  /**
   * One past the highest used cell (0 when empty); of one stream, counted from the stream's
   * first cell (llama.cpp's used_max_p1 of that stream's cells).
   */
  usedMaxP1(stream?: number): number {
    const lo = stream === undefined ? 0 : stream * this.streamSize;
    const hi = stream === undefined ? this.size : lo + this.streamSize;
    for (let i = hi - 1; i >= lo; i--) if (this.pos[i]! >= 0) return i + 1 - lo;
    return 0;
  }

  /**
   * The lowest and the highest cell that a token of a batch may see: cells holding a sequence of
   * `from` at a position not older than what that sequence's earliest token there sees (`from`:
   * seq → its lowest position in the batch; `window` > 0: a sliding window, so that position −
   * window and older are masked). null: none. Scans from each end towards the other and stops at
   * the first such cell (the caller reads the cells between them: every other cell is masked for
   * each of the batch's tokens). With `stream`, within that stream, counted from its first cell.
   */
  visibleSpan(from: ReadonlyMap<number, number>, window = 0, stream?: number): { first: number; last: number } | null {
    const words = new Uint32Array(WORDS);
    for (const s of from.keys()) {
      this.#checkSeq(s);
      words[s >>> 5]! |= 1 << (s & 31);
    }
    const used: number[] = [];
    words.forEach((w, i) => w !== 0 && used.push(i));
    const visible = (c: number): boolean => {
      if (this.pos[c]! < 0) return false;
      for (const w of used) {
        let bits = this.#seq[c * WORDS + w]! & words[w]!;
        while (bits !== 0) {
          const s = w * 32 + 31 - Math.clz32(bits & -bits);
          if (window === 0 || from.get(s)! - this.pos[c]! < window) return true;
          bits &= bits - 1;
        }
      }
      return false;
    };
    const base = stream === undefined ? 0 : stream * this.streamSize;
    const end = stream === undefined ? this.size : base + this.streamSize;
    let first = base;
    while (first < end && !visible(first)) first++;
    if (first === end) return null;
    let last = end - 1;
    while (!visible(last)) last--;
    return { first: first - base, last: last - base };
  }

  /** Whether cell `i` belongs to sequence `seq`. */
  hasSeq(i: number, seq: number): boolean {
    return (this.#seq[i * WORDS + (seq >>> 5)]! & (1 << (seq & 31))) !== 0;
  }

  /** The sequences of cell `i`. */
  seqsOf(i: number): number[] {
    const out: number[] = [];
    for (let w = 0; w < WORDS; w++) {
      let bits = this.#seq[i * WORDS + w]!;
      while (bits !== 0) {
        const b = 31 - Math.clz32(bits & -bits);
        out.push(w * 32 + b);
        bits &= bits - 1;
      }
    }
    return out;
  }

  #checkSeq(seq: number): void {
    const max = this.streams > 1 ? this.streams : MAX_SEQ;
    if (!Number.isInteger(seq) || seq < 0 || seq >= max) throw new RangeError(`seq id ${seq} outside 0..${max - 1}`);
  }

  /** The stream sequence `seq` lives in. */
  streamOf(seq: number): number {
    return this.streams === 1 ? 0 : seq;
  }

  #streamOfCell(i: number): number {
    return this.streams === 1 ? 0 : Math.floor(i / this.streamSize);
  }

  #posInc(seq: number, p: number): void {
    let m = this.#seqPos[seq];
    if (!m) m = this.#seqPos[seq] = new Map();
    m.set(p, (m.get(p) ?? 0) + 1);
  }

  #posDec(seq: number, p: number): void {
    const m = this.#seqPos[seq]!;
    const c = m.get(p)!;
    if (c <= 1) m.delete(p);
    else m.set(p, c - 1);
  }

  /** Adds `seq` to cell i (the cell must hold a position). */
  #seqAdd(i: number, seq: number): void {
    if (this.hasSeq(i, seq)) return;
    this.#seq[i * WORDS + (seq >>> 5)]! |= 1 << (seq & 31);
    this.#posInc(seq, this.pos[i]!);
  }

  /** Removes `seq` from cell i; frees the cell when no sequence is left. Returns whether it was freed. */
  #seqDrop(i: number, seq: number): boolean {
    this.#seq[i * WORDS + (seq >>> 5)]! &= ~(1 << (seq & 31));
    this.#posDec(seq, this.pos[i]!);
    for (let w = 0; w < WORDS; w++) if (this.#seq[i * WORDS + w] !== 0) return false;
    this.#clearCell(i);
    return true;
  }

  /** Empties cell i (its sequences' position counts must already be dropped). */
  #clearCell(i: number): void {
    this.pos[i] = -1;
    this.shift[i] = 0;
    this.#seq.fill(0, i * WORDS, (i + 1) * WORDS);
    this.#used--;
    this.#usedPer[this.#streamOfCell(i)]!--;
  }

  /** Frees cell i whatever it holds. */
  #freeCell(i: number): void {
    for (const s of this.seqsOf(i)) this.#posDec(s, this.pos[i]!);
    this.#clearCell(i);
  }

  /**
   * Finds free cells for `n` tokens in a stream as llama.cpp does: scanning from the head (reset
   * to the stream's start when it ran far past the used cells), wrapping around, taking the first
   * free cells, or with `contiguous` the first run of n free cells. Returns null when there is no
   * room. Mutates nothing.
   */
  findSlot(n: number, stream = 0, contiguous = false): SlotPlan | null {
    const lo = stream * this.streamSize, hi = lo + this.streamSize, used = this.#usedPer[stream]!;
    if (n < 1 || n > this.streamSize || (this.window === 0 && n > this.streamSize - used)) return null;
    let head = this.#heads[stream]! - lo > used + 2 * n ? lo : this.#heads[stream]!;
    const usable = this.#usable();
    if (contiguous) {
      // llama.cpp's `cont`: n usable cells in a row, tried from the head, wrapping once
      for (let tested = 0; tested < this.streamSize;) {
        if (head + n > hi) {
          tested += hi - head;
          head = lo;
          continue;
        }
        let run = 0;
        while (run < n && usable(head + run)) run++;
        if (run === n) return { cells: Int32Array.from({ length: n }, (_, k) => head + k) };
        tested += run + 1;
        head += run + 1;
      }
      return null;
    }
    const cells = new Int32Array(n);
    let k = 0;
    for (let tested = 0; tested < this.streamSize && k < n; tested++) {
      if (head >= hi) head = lo;
      if (usable(head)) cells[k++] = head;
      head++;
    }
    return k === n ? { cells } : null;
  }

  /**
   * Whether a slot search may take a cell: it is empty, or (with a window) the next token of no
   * sequence of it sees it any more (llama.cpp's is_masked_swa against seq_pos_max + 1).
   * llama.cpp takes over only cells of one sequence; a cell shared by several (a copied prefix)
   * is taken here too once every one of them is past it, so shared prefixes never pile up in a
   * windowed group sized for its sequences' windows.
   */
  #usable(): (i: number) => boolean {
    if (this.window === 0) return (i) => this.pos[i] === -1;
    const start = new Map<number, number>(); // seq -> the oldest position its next token sees
    const startOf = (seq: number): number => {
      let s = start.get(seq);
      if (s === undefined) start.set(seq, (s = windowStart(this.seqPosMax(seq), this.window)));
      return s;
    };
    return (i) => {
      const p = this.pos[i]!;
      return p === -1 || this.seqsOf(i).every((seq) => p < startOf(seq));
    };
  }

  /** Cells a slot search may take: the empty ones and, with a window, those no window sees. */
  takeable(): number {
    if (this.window === 0) return this.size - this.#used;
    const usable = this.#usable();
    let n = 0;
    for (let i = 0; i < this.size; i++) if (usable(i)) n++;
    return n;
  }

  /** Finds cells for a batch whose token t belongs to seqs[t], each in its sequence's stream. */
  findSlotFor(seqs: ArrayLike<number>): SlotPlan | null {
    if (this.streams === 1) return this.findSlot(seqs.length);
    const byStream = new Map<number, number[]>();
    for (let t = 0; t < seqs.length; t++) {
      this.#checkSeq(seqs[t]!);
      const s = this.streamOf(seqs[t]!);
      const list = byStream.get(s);
      if (list) list.push(t);
      else byStream.set(s, [t]);
    }
    const cells = new Int32Array(seqs.length);
    for (const [s, tokens] of byStream) {
      const plan = this.findSlot(tokens.length, s);
      if (!plan) return null;
      tokens.forEach((t, k) => { cells[t] = plan.cells[k]!; });
    }
    return { cells };
  }

  /**
   * Stamps a plan: token t gets position pos[t] in sequence seq[t]. A cell taken over from a
   * position the window no longer saw drops that position and, as llama.cpp keeps every
   * sequence's positions contiguous, every older one of its sequence.
   */
  apply(plan: SlotPlan, pos: ArrayLike<number>, seq: ArrayLike<number>): void {
    const n = plan.cells.length;
    for (let t = 0; t < n; t++) {
      this.#checkSeq(seq[t]!);
      if (this.pos[plan.cells[t]!] !== -1 && this.window === 0) throw new Error(`invariant: slot plan targets used cell ${plan.cells[t]}`);
      if (!(pos[t]! >= 0)) throw new RangeError(`position ${pos[t]} is negative`);
    }
    const dropped = new Map<number, number>(); // seq -> the newest position taken over
    for (let t = 0; t < n; t++) {
      const i = plan.cells[t]!;
      if (this.pos[i] !== -1) {
        for (const s of this.seqsOf(i)) dropped.set(s, Math.max(dropped.get(s) ?? -1, this.pos[i]!));
        this.#freeCell(i);
        this.#reused++;
      }
      this.pos[i] = pos[t]!;
      this.#used++;
      this.#usedPer[this.#streamOfCell(i)]!++;
      this.#seqAdd(i, seq[t]!);
    }
    for (const [s, p] of dropped) {
      const min = this.seqPosMin(s);
      if (min >= 0 && min <= p) this.seqRemove(s, min, p + 1);
    }
    // after that purge (whose seq_rm lowers the head), as llama.cpp: the head goes past the plan
    for (const i of plan.cells) this.#heads[this.#streamOfCell(i)] = i + 1;
  }

  /** Frees the cells of a plan that was applied but whose batch failed. */
  release(plan: SlotPlan): void {
    for (const i of plan.cells) if (this.pos[i]! >= 0) this.#freeCell(i);
  }

  #lowerHead(i: number): void {
    const s = this.#streamOfCell(i);
    if (i < this.#heads[s]!) this.#heads[s] = i;
  }

  /**
   * Removes sequence `seq` (every sequence when seq < 0) from the cells with p0 <= pos < p1
   * (negative bounds are open); cells left without a sequence are freed. Always succeeds on this
   * cache (llama.cpp's `false` is for caches that cannot cut a sequence, such as recurrent ones).
   */
  seqRemove(seq: number, p0: number, p1: number): boolean {
    if (seq >= 0) this.#checkSeq(seq);
    const [lo, hi] = bounds(p0, p1);
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p < 0 || p < lo || p >= hi) continue;
      if (seq < 0) {
        this.#freeCell(i);
        this.#lowerHead(i); // per stream: its head drops to its first freed cell
      } else if (this.hasSeq(i, seq) && this.#seqDrop(i, seq)) {
        this.#lowerHead(i);
      }
    }
    return true;
  }

  /**
   * Gives `dst` the cells of `src` with p0 <= pos < p1. In one stream the cells are shared and
   * no data moves (returns null). Across streams, a whole sequence (p0 and p1 open, as llama.cpp
   * copies) empties `dst`'s stream, which takes a copy of `src`'s cells at the same places; a
   * part of one (a cached prefix) first drops `dst`'s own positions in [p0, p1), then copies those
   * cells into the first free cells of `dst`'s stream, in order (RangeError when too few are
   * free). The returned moves tell the caller which K/V rows to copy.
   */
  seqCopy(src: number, dst: number, p0: number, p1: number): { from: Int32Array; to: Int32Array } | null {
    this.#checkSeq(src);
    this.#checkSeq(dst);
    if (src === dst) return null;
    const [lo, hi] = bounds(p0, p1);
    const s0 = this.streamOf(src), s1 = this.streamOf(dst);
    if (s0 === s1) {
      for (let i = 0; i < this.size; i++) {
        const p = this.pos[i]!;
        if (p >= lo && p < hi && this.hasSeq(i, src)) this.#seqAdd(i, dst);
      }
      return null;
    }
    if (p0 > 0 || (p1 >= 0 && p1 < Number.MAX_SAFE_INTEGER)) return this.#copyPart(src, dst, lo, hi);
    const base0 = s0 * this.streamSize, base1 = s1 * this.streamSize;
    for (let i = base1; i < base1 + this.streamSize; i++) if (this.pos[i]! >= 0) this.#freeCell(i);
    const from: number[] = [], to: number[] = [];
    for (let k = 0; k < this.streamSize; k++) {
      const i = base0 + k, j = base1 + k;
      if (this.pos[i]! < 0 || !this.hasSeq(i, src)) continue;
      this.pos[j] = this.pos[i]!;
      this.shift[j] = this.shift[i]!;
      this.#used++;
      this.#usedPer[s1]!++;
      this.#seqAdd(j, dst);
      from.push(i);
      to.push(j);
    }
    this.#heads[s1] = this.#heads[s0]! - base0 + base1;
    return { from: Int32Array.from(from), to: Int32Array.from(to) };
  }

  /** Copies `src`'s positions [lo, hi) into the free cells of `dst`'s stream (another stream). */
  #copyPart(src: number, dst: number, lo: number, hi: number): { from: Int32Array; to: Int32Array } {
    const s0 = this.streamOf(src), s1 = this.streamOf(dst);
    const base0 = s0 * this.streamSize, base1 = s1 * this.streamSize;
    const from: number[] = [];
    for (let i = base0; i < base0 + this.streamSize; i++) {
      const p = this.pos[i]!;
      if (p >= lo && p < hi && this.hasSeq(i, src)) from.push(i);
    }
    // (a stream's cells hold its own sequence only: dst's positions in the range free theirs)
    let free = 0;
    for (let j = base1; j < base1 + this.streamSize; j++) if (this.pos[j]! < 0 || (this.pos[j]! >= lo && this.pos[j]! < hi)) free++;
    if (free < from.length) throw new RangeError(`stream ${s1} has ${free} free cells for ${from.length} copied positions`);
    this.seqRemove(dst, lo, hi);
    const to: number[] = [];
    for (let j = base1; j < base1 + this.streamSize && to.length < from.length; j++) if (this.pos[j]! < 0) to.push(j);
    from.forEach((i, k) => {
      const j = to[k]!;
      this.pos[j] = this.pos[i]!;
      this.shift[j] = this.shift[i]!;
      this.#used++;
      this.#usedPer[s1]!++;
      this.#seqAdd(j, dst);
    });
    if (to.length > 0) this.#heads[s1] = Math.max(this.#heads[s1]!, to[to.length - 1]! + 1);
    return { from: Int32Array.from(from), to: Int32Array.from(to) };
  }

  /** Keeps only `seq` in its stream: other sequences leave its cells; cells without it are freed. */
  seqKeep(seq: number): void {
    this.#checkSeq(seq);
    let first = -1;
    const base = this.streamOf(seq) * this.streamSize;
    for (let i = base; i < base + this.streamSize; i++) {
      if (this.pos[i]! < 0) continue;
      if (this.hasSeq(i, seq)) {
        for (const s of this.seqsOf(i)) if (s !== seq) this.#seqDrop(i, s);
      } else {
        this.#freeCell(i);
        if (first < 0) first = i;
      }
    }
    if (first >= 0) this.#lowerHead(first);
  }

  /**
   * Moves the positions of `seq`'s cells in [p0, p1) by `delta` (the cells' other sequences move
   * with them, as in llama.cpp); cells pushed below position 0 are freed. Keys are re-rotated
   * before the next batch.
   */
  seqAdd(seq: number, p0: number, p1: number, delta: number): void {
    this.#checkSeq(seq);
    if (delta === 0) return;
    const [lo, hi] = bounds(p0, p1);
    if (lo === hi) return;
    let first = -1;
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p < 0 || p < lo || p >= hi || !this.hasSeq(i, seq)) continue;
      const seqs = this.seqsOf(i);
      for (const s of seqs) this.#posDec(s, p);
      this.pos[i] = p + delta;
      this.shift[i]! += delta;
      this.#hasShift = true;
      if (this.pos[i]! < 0) {
        this.#clearCell(i);
        if (first < 0) first = i;
      } else {
        for (const s of seqs) this.#posInc(s, this.pos[i]!);
      }
    }
    const base = this.streamOf(seq) * this.streamSize;
    this.#heads[this.streamOf(seq)] = first >= 0 ? first : base;
  }

  /** Divides the positions of `seq`'s cells in [p0, p1) by `d` (integer division). */
  seqDivide(seq: number, p0: number, p1: number, d: number): void {
    this.#checkSeq(seq);
    if (!Number.isInteger(d) || d < 1) throw new RangeError(`divisor ${d} must be a positive integer`);
    if (d === 1) return;
    const [lo, hi] = bounds(p0, p1);
    if (lo === hi) return;
    for (let i = 0; i < this.size; i++) {
      const p = this.pos[i]!;
      if (p < 0 || p < lo || p >= hi || !this.hasSeq(i, seq)) continue;
      const seqs = this.seqsOf(i);
      for (const s of seqs) this.#posDec(s, p);
      const np = Math.trunc(p / d);
      this.pos[i] = np;
      this.shift[i]! += p - np;
      this.#hasShift = true;
      for (const s of seqs) this.#posInc(s, np);
    }
  }

  /** The key rotation each cell still needs (0 for empty cells) // [size] */
  pendingShifts(): Int32Array {
    const out = new Int32Array(this.size);
    for (let i = 0; i < this.size; i++) out[i] = this.pos[i]! < 0 ? 0 : this.shift[i]!;
    return out;
  }

  /** Marks every pending shift as applied to the keys. */
  resetShift(): void {
    this.shift.fill(0);
    this.#hasShift = false;
  }

  /** Smallest position of `seq`, or -1 when it has none. */
  seqPosMin(seq: number): number {
    const m = this.#seqPos[seq];
    if (!m || m.size === 0) return -1;
    let v = Infinity;
    for (const p of m.keys()) if (p < v) v = p;
    return v;
  }

  /** Largest position of `seq`, or -1 when it has none. */
  seqPosMax(seq: number): number {
    const m = this.#seqPos[seq];
    if (!m || m.size === 0) return -1;
    let v = -1;
    for (const p of m.keys()) if (p > v) v = p;
    return v;
  }

  /** Number of cells holding `seq`. */
  seqCells(seq: number): number {
    const m = this.#seqPos[seq];
    let n = 0;
    if (m) for (const c of m.values()) n += c;
    return n;
  }

  /**
   * Frees room in a full context the way llama.cpp's examples do: keeps positions [0, nKeep),
   * drops the next nDiscard (default: half of what follows the kept prefix), and moves the rest
   * back by nDiscard (the keys are re-rotated before the next batch). Returns how many positions
   * were dropped.
   */
  contextShift(seq: number, nKeep: number, nDiscard?: number): number {
    const end = this.seqPosMax(seq) + 1;
    const n = nDiscard ?? Math.floor((end - nKeep) / 2);
    if (n <= 0 || nKeep < 0 || nKeep + n > end) return 0;
    this.seqRemove(seq, nKeep, nKeep + n);
    this.seqAdd(seq, nKeep + n, -1, -n);
    return n;
  }

  /**
   * Plans a defragmentation: used cells move down into the holes before them, keeping their
   * order (so attention visits them as before and no result changes). Returns the moves, lowest
   * first (to[i] < from[i], and a cell is never read after being written), or null when the used
   * cells are already packed. Mutates nothing.
   */
  defragPlan(): { from: Int32Array; to: Int32Array } | null {
    const from: number[] = [], to: number[] = [];
    for (let s = 0; s < this.streams; s++) {
      const base = s * this.streamSize;
      let next = base;
      for (let i = base; i < base + this.streamSize; i++) {
        if (this.pos[i]! < 0) continue;
        if (i !== next) {
          from.push(i);
          to.push(next);
        }
        next++;
      }
    }
    return from.length ? { from: Int32Array.from(from), to: Int32Array.from(to) } : null;
  }

  /** Applies a defragmentation plan to the bookkeeping (the caller moves the K/V rows). */
  applyDefrag(plan: { from: Int32Array; to: Int32Array }): void {
    for (let k = 0; k < plan.from.length; k++) {
      const f = plan.from[k]!, t = plan.to[k]!;
      if (this.pos[t] !== -1 || this.pos[f]! < 0) throw new Error(`invariant: defrag move ${f} -> ${t} onto a used cell or from an empty one`);
      this.pos[t] = this.pos[f]!;
      this.shift[t] = this.shift[f]!;
      this.#seq.copyWithin(t * WORDS, f * WORDS, (f + 1) * WORDS);
      this.pos[f] = -1;
      this.shift[f] = 0;
      this.#seq.fill(0, f * WORDS, (f + 1) * WORDS);
    }
    for (let st = 0; st < this.streams; st++) this.#heads[st] = st * this.streamSize + this.#usedPer[st]!;
  }

  /** Share of cells in use, for heartbeats. */
  occupancy(): { used: number; size: number; ratio: number } {
    return { used: this.#used, size: this.size, ratio: this.#used / this.size };
  }

  /**
   * A per-cell picture like llama.cpp's LLAMA_KV_CACHE_DEBUG: one character per cell ('.' empty,
   * the seq id 0-9 when one sequence holds it, 'M' when several do; other ids as '*'), 256 a line
   * up to the last used cell, then every sequence's position range.
   */
  debugDump(): string {
    const heads = this.streams === 1 ? `head ${this.#heads[0]}` : `${this.streams} streams, heads ${Array.from(this.#heads).join(' ')}`;
    const lines = [`kv cells: size ${this.size}, used ${this.#used}, ${heads}, used_max_p1 ${this.usedMaxP1()}`];
    let row = '';
    const shown = Math.min(this.size, Math.max(256, Math.ceil(this.usedMaxP1() / 256) * 256));
    for (let i = 0; i < shown; i++) {
      if (this.pos[i]! < 0) row += '.';
      else {
        const seqs = this.seqsOf(i);
        row += seqs.length > 1 ? 'M' : seqs[0]! < 10 ? String(seqs[0]) : '*';
      }
      if (i % 256 === 255 || i === shown - 1) {
        lines.push(row);
        row = '';
      }
    }
    if (shown < this.size) lines.push(`(${this.size - shown} more cells, all empty)`);
    for (let s = 0; s < MAX_SEQ; s++) {
      if (this.seqCells(s) > 0) lines.push(`seq ${s}: positions ${this.seqPosMin(s)}..${this.seqPosMax(s)} in ${this.seqCells(s)} cells`);
    }
    return lines.join('\n') + '\n';
  }

  /** Empties every cell. */
  clear(): void {
    this.pos.fill(-1);
    this.shift.fill(0);
    this.#seq.fill(0);
    this.#seqPos.fill(undefined);
    this.#used = 0;
    this.#usedPer.fill(0);
    this.#heads.forEach((_, st) => { this.#heads[st] = st * this.streamSize; });
    this.#hasShift = false;
  }
}
