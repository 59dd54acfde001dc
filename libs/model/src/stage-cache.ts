// The KV memory of a stage, as llama.cpp's llama_memory_i is to its context: which cells hold
// which sequence's positions (KvCells), their K/V rows (KvStorage), and every operation that
// changes them between batches: seq_rm/cp/keep/add/div, the K-shift that re-rotates moved keys,
// defragmentation, context shift, and a sequence's state out and in. The stage's graph writes the
// rows of a batch's cells; while it computes (lock) nothing here changes a cell.
import { Backend, GgmlType, Scheduler, setTensor, type TensorPtr } from '@strata/ggml';
import { KvCells, KvStorage, hadamardMatrix, type DecodedState, type SlotPlan } from '@strata/kv-cache';
import { ModelError } from './errors.ts';
import { GRAPH_NODES, ropeParams } from './graph.ts';
import { nEmbdKvGqa, type HParams } from './hparams.ts';
import { buildShiftGraph, type ShiftGraph } from './k-shift.ts';
import type { LayerRange } from './layer-range.ts';
import { exportSeqState, importSeqState, type ExportOptions, type ImportOptions } from './stage-state.ts';

/** Options for {@link StageCache.create}. */
export interface StageCacheOptions {
  hp: HParams;
  /** the stage's layers: one K and one V tensor each */
  range: LayerRange;
  /** where the K/V tensors live and the K-shift runs */
  backend: Backend;
  /** the CPU backend the K-shift's scheduler falls back to off the CPU; null on the CPU */
  cpu?: Backend | null;
  /** cells, every stream together */
  size: number;
  /** 1 (default): one stream every sequence shares; n: one of size / n cells per sequence */
  streams?: number;
  /** ggml type of K and V (f16 default) */
  type?: number;
  /** model layers of the range whose K/V stay in host memory */
  hostLayers?: number[];
  /** the model's RoPE frequency factors (rope_freqs.weight), which the K-shift applies too */
  ropeFreqs?: TensorPtr | null;
}

/** Counters of what the cache did, for observability. */
export interface CacheCounters {
  /** K-shift graphs run */
  shifts: number;
  /** defragmentations done */
  defrags: number;
  /** cells freed because they fell out of every sequence's sliding window */
  swaPruned: number;
}

/** The KV cache of a stage's layers. dispose() frees it and is idempotent. */
export class StageCache {
  readonly hp: HParams;
  readonly range: LayerRange;
  /** which cell holds which positions of which sequences */
  readonly cells: KvCells;
  /** the K/V rows of every cell, per layer of the range */
  readonly storage: KvStorage;
  readonly counters: CacheCounters = { shifts: 0, defrags: 0, swaPruned: 0 };
  readonly #backends: Backend[];
  readonly #ropeFreqs: TensorPtr | null;
  /** Hadamard matrices by size, built once // n -> [n * n] */
  readonly #rotations = new Map<number, Float32Array>();
  /** every layer of the range attends through a sliding window */
  readonly #windowedOnly: boolean;
  /** the K-shift graph, with a scheduler of its own so the stage's step graph stays allocated */
  #shift: { graph: ShiftGraph; sched: Scheduler } | null = null;
  /** cells the batch computing now writes; null when none computes */
  #locked: Int32Array | null = null;
  #disposed = false;

  private constructor(o: StageCacheOptions, storage: KvStorage) {
    this.hp = o.hp;
    this.range = o.range;
    this.storage = storage;
    this.cells = new KvCells(storage.size, o.streams ?? 1);
    this.#backends = o.cpu ? [o.backend, o.cpu] : [o.backend];
    this.#ropeFreqs = o.ropeFreqs ?? null;
    this.#windowedOnly = o.hp.nSwa > 0 && o.hp.swaLayers.slice(o.range.l0, o.range.l1).every((x) => x);
  }

  /** Allocates zeroed K/V tensors for the range's layers on `backend` (host layers in host memory). */
  static create(o: StageCacheOptions): StageCache {
    const { hp, range } = o;
    const layers = Array.from({ length: range.l1 - range.l0 }, (_, i) => range.l0 + i);
    const storage = KvStorage.create(o.backend, {
      layers, size: o.size, nEmbdKv: nEmbdKvGqa(hp), type: o.type ?? GgmlType.F16, headDim: hp.headDim,
      hostLayers: o.hostLayers?.filter((l) => l >= range.l0 && l < range.l1),
    });
    try {
      return new StageCache(o, storage);
    } catch (err) {
      storage.dispose();
      throw err;
    }
  }

  /**
   * Marks `cells` as written by a batch that computes now (the stage's evalAsync): until
   * unlock(), every operation that changes cells throws ModelError('busy'), and an export of any
   * of those cells too (their rows are not final yet).
   */
  lock(cells: Int32Array): void {
    this.#idle();
    this.#locked = cells;
  }

  /** Ends lock(). */
  unlock(): void {
    this.#locked = null;
  }

  /** Cells the batch computing now writes, or null when none computes. // [n] */
  get locked(): Int32Array | null {
    return this.#locked;
  }

  /** Cells for a batch's tokens (`seqs` // [n]), or null when they do not fit. Changes nothing. */
  findSlot(seqs: ArrayLike<number>): SlotPlan | null {
    return this.cells.findSlotFor(seqs);
  }

  /** Gives a plan's cells their positions and sequences (`pos`, `seq` // [n]). */
  apply(plan: SlotPlan, pos: ArrayLike<number>, seq: ArrayLike<number>): void {
    this.#idle();
    this.cells.apply(plan, pos, seq);
  }

  /** Frees the cells of an applied plan whose batch failed (also while it is locked). */
  release(plan: SlotPlan): void {
    this.cells.release(plan);
  }

  /** The n×n Hadamard matrix that rotates quantized K/V, built once. // [n * n] */
  rotation(n: number): Float32Array {
    let m = this.#rotations.get(n);
    if (!m) this.#rotations.set(n, (m = hadamardMatrix(n)));
    return m;
  }

  /** Re-rotates the keys of cells that seqAdd/seqDivide moved, then marks the shifts applied. */
  applyShift(): void {
    if (!this.cells.hasShift) return;
    this.#idle();
    this.#shift ??= {
      graph: buildShiftGraph(this.hp, (slot) => ropeParams(this.hp, { ropeFreqs: this.#ropeFreqs }, this.range.l0 + slot), this.storage),
      sched: Scheduler.create({ backends: this.#backends, graphSize: GRAPH_NODES }),
    };
    const { graph, sched } = this.#shift;
    sched.alloc(graph.graph);
    setTensor(graph.shift, this.cells.pendingShifts());
    if (graph.rot) setTensor(graph.rot, this.rotation(this.storage.rot.k));
    sched.run(graph.graph);
    this.cells.resetShift();
    this.counters.shifts++;
  }

  /**
   * After a batch: when every layer of the range attends through a sliding window, frees the
   * cells that no sequence's window sees any more. Returns the cells freed.
   */
  pruneWindow(): number {
    if (!this.#windowedOnly) return 0;
    this.#idle();
    const n = this.cells.pruneSwa(this.hp.nSwa);
    this.counters.swaPruned += n;
    return n;
  }

  /**
   * Drops a sequence's cells in [p0, p1) (negative bounds are open; seq < 0: every sequence).
   * Always true on this cache (llama.cpp's false is for caches that cannot cut a sequence).
   */
  seqRemove(seq: number, p0 = -1, p1 = -1): boolean {
    this.#idle();
    return this.cells.seqRemove(seq, p0, p1);
  }

  /**
   * Gives `dst` `src`'s cells in [p0, p1): shared within one stream (no data copied), copied with
   * their K/V rows across per-sequence streams.
   */
  seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
    this.#idle();
    const moved = this.cells.seqCopy(src, dst, p0, p1);
    if (moved && moved.from.length > 0) this.storage.moveRows(moved.from, moved.to);
  }

  /** Drops every sequence but `seq`. */
  seqKeep(seq: number): void {
    this.#idle();
    this.cells.seqKeep(seq);
  }

  /** Moves `seq`'s positions in [p0, p1) by `delta`; keys are re-rotated before the next batch. */
  seqAdd(seq: number, p0: number, p1: number, delta: number): void {
    this.#idle();
    this.cells.seqAdd(seq, p0, p1, delta);
  }

  /** Divides `seq`'s positions in [p0, p1) by `d`; keys are re-rotated before the next batch. */
  seqDivide(seq: number, p0: number, p1: number, d: number): void {
    this.#idle();
    this.cells.seqDivide(seq, p0, p1, d);
  }

  /** Smallest cached position of `seq`, -1 when none. */
  seqPosMin(seq: number): number {
    return this.cells.seqPosMin(seq);
  }

  /** Largest cached position of `seq`, -1 when none. */
  seqPosMax(seq: number): number {
    return this.cells.seqPosMax(seq);
  }

  /** Context shift of a full sequence (see KvCells.contextShift); returns the positions dropped. */
  contextShift(seq: number, nKeep: number, nDiscard?: number): number {
    this.#idle();
    return this.cells.contextShift(seq, nKeep, nDiscard);
  }

  /**
   * Moves used cells down into the holes before them, K/V rows included, keeping their order:
   * no result changes, and later batches attend over fewer cells. Returns the cells moved.
   */
  defrag(): number {
    this.#idle();
    const plan = this.cells.defragPlan();
    if (!plan) return 0;
    this.storage.moveRows(plan.from, plan.to);
    this.cells.applyDefrag(plan);
    this.counters.defrags++;
    return plan.from.length;
  }

  /**
   * Exports `seq`'s cells with p0 <= pos < p1 (negative: open) and their K/V rows for `layers`
   * (default: every layer of the range), in the checksummed state format. Pending K-shifts are
   * applied first, so rows leave with their final rotation. Allowed while a batch computes, for
   * cells it does not write.
   */
  exportState(seq: number, options: ExportOptions = {}): Uint8Array {
    this.#alive();
    this.applyShift();
    return exportSeqState(this, seq, options);
  }

  /**
   * Imports the part of a state blob that falls in the range's layers into sequence `seq` (see
   * stage-state.ts); a corrupt, truncated or mismatched blob leaves the cache as it was.
   */
  importState(blob: Uint8Array | DecodedState, seq: number, options: ImportOptions = {}): { layers: LayerRange; cells: number } {
    this.#idle();
    return importSeqState(this, blob, seq, options);
  }

  /** Bytes of K/V memory per buffer type ('CPU', 'CUDA0', 'CUDA_Host', ...). */
  memory(): Record<string, number> {
    return this.storage.memoryByBufferType();
  }

  /** Cells change only between batches: an operation that changes them throws while one computes. */
  #idle(): void {
    this.#alive();
    if (this.#locked) throw new ModelError('busy', 'a batch is computing on this stage: cells change only between batches');
  }

  #alive(): void {
    if (this.#disposed) throw new ModelError('bad_input', 'KV cache was disposed');
  }

  /** Frees the K-shift graph and scheduler and the K/V tensors. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#shift?.sched.dispose();
    this.#shift?.graph.ctx.dispose();
    this.#shift = null;
    this.storage.dispose();
  }
}
