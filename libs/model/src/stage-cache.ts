// The KV memory of a stage, as llama.cpp's llama_memory_i is to its context: which cells hold
// which sequence's positions (KvCells), their K/V rows (KvStorage), and every operation that
// changes them between batches: seq_rm/cp/keep/add/div, the K-shift that re-rotates moved keys,
// defragmentation, context shift, and a sequence's state out and in. The stage's graph writes the
// rows of a batch's cells; while it computes (lock) nothing here changes a cell.
//
// A stage that holds both windowed and full layers keeps, unless told to keep one full-size set
// (`swaSize` unset: llama.cpp's swa_full), two groups of cells as llama.cpp's iSWA cache does:
// the full layers' and, much smaller, the windowed layers', whose cells no window sees any more
// a batch may take over. Every sequence operation applies to both; a batch takes cells in each.
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
  /**
   * cells of the windowed layers' group (llama.cpp's iSWA cache with swa_full off): a separate
   * group when the range also holds full layers, the one group when it holds none; unset or 0:
   * one group of `size` cells for all
   */
  swaSize?: number;
}

/** One cell set and the K/V rows of the layers that attend through it. */
export interface KvGroup {
  /** model layers whose rows it holds: storage slot i is layers[i] */
  readonly layers: readonly number[];
  readonly cells: KvCells;
  readonly storage: KvStorage;
  /** every layer of the group attends through the sliding window: a batch may take over what no window sees (KvCells.window) */
  readonly windowed: boolean;
}

/** Cells a batch takes: one plan per group of the cache (StageCache.groups). */
export interface StagePlan {
  readonly plans: readonly SlotPlan[];
}

/** Counters of what the cache did, for observability. */
export interface CacheCounters {
  /** K-shift graphs run */
  shifts: number;
  /** defragmentations done */
  defrags: number;
  /** windowed cells a batch took over from positions no window saw any more */
  swaPruned: number;
}

/** The KV cache of a stage's layers. dispose() frees it and is idempotent. */
export class StageCache {
  readonly hp: HParams;
  readonly range: LayerRange;
  /** cells of a full-size group: the positions every sequence together may hold */
  readonly size: number;
  /**
   * the cell groups: one for every layer of the range, or the full layers' first and the
   * windowed layers' second (see swaSize)
   */
  readonly groups: readonly KvGroup[];
  readonly #counters = { shifts: 0, defrags: 0 };
  readonly #backends: Backend[];
  readonly #ropeFreqs: TensorPtr | null;
  /** Hadamard matrices by size, built once // n -> [n * n] */
  readonly #rotations = new Map<number, Float32Array>();
  /** per layer of the range: its group and its slot in that group's storage */
  readonly #where: { group: number; slot: number }[];
  /** each group's K-shift graph, with a scheduler of its own so the stage's step graph stays allocated */
  #shift: ({ graph: ShiftGraph; sched: Scheduler } | null)[];
  #disposed = false;

  private constructor(o: StageCacheOptions, groups: KvGroup[]) {
    this.hp = o.hp;
    this.range = o.range;
    this.size = o.size;
    this.groups = groups;
    this.#backends = o.cpu ? [o.backend, o.cpu] : [o.backend];
    this.#ropeFreqs = o.ropeFreqs ?? null;
    this.#shift = groups.map(() => null);
    this.#where = [];
    groups.forEach((g, group) => g.layers.forEach((l, slot) => (this.#where[l - o.range.l0] = { group, slot })));
  }

  /**
   * Allocates zeroed K/V tensors for the range's layers on `backend` (host layers in host
   * memory): one group, or two when `swaSize` asks for a separate windowed one and the range
   * holds both kinds of layer.
   */
  static create(o: StageCacheOptions): StageCache {
    const { hp, range } = o;
    const layers = Array.from({ length: range.l1 - range.l0 }, (_, i) => range.l0 + i);
    const isSwa = (l: number) => hp.nSwa > 0 && hp.swaLayers[l]!;
    const allWindowed = layers.every(isSwa);
    const swaSize = (o.swaSize ?? 0) > 0 ? Math.min(o.size, o.swaSize!) : 0;
    const parts = swaSize > 0 && !allWindowed && layers.some(isSwa)
      ? [{ layers: layers.filter((l) => !isSwa(l)), size: o.size, windowed: false }, { layers: layers.filter(isSwa), size: swaSize, windowed: true }]
      : [{ layers, size: allWindowed && swaSize > 0 ? swaSize : o.size, windowed: allWindowed }];
    const groups: KvGroup[] = [];
    try {
      for (const part of parts) {
        const storage = KvStorage.create(o.backend, {
          layers: part.layers, size: part.size, nEmbdKv: nEmbdKvGqa(hp), type: o.type ?? GgmlType.F16, headDim: hp.headDim,
          hostLayers: o.hostLayers?.filter((l) => part.layers.includes(l)),
        });
        groups.push({ layers: part.layers, storage, windowed: part.windowed, cells: new KvCells(part.size, o.streams ?? 1, part.windowed ? hp.nSwa : 0) });
      }
      return new StageCache(o, groups);
    } catch (err) {
      for (const g of groups) g.storage.dispose();
      throw err;
    }
  }

  /** What the cache did. */
  get counters(): CacheCounters {
    return { ...this.#counters, swaPruned: this.groups.reduce((n, g) => n + g.cells.windowReused, 0) };
  }

  /** The first group's cells (the only group's, or the full layers'): which cell holds which positions of which sequences. */
  get cells(): KvCells {
    return this.groups[0]!.cells;
  }

  /** The first group's K/V rows. */
  get storage(): KvStorage {
    return this.groups[0]!.storage;
  }

  /** The group of a model layer of the range and its slot in that group's storage. */
  layerGroup(layer: number): { group: number; slot: number } {
    const w = this.#where[layer - this.range.l0];
    if (!w) throw new ModelError('bad_split', `layer ${layer} is not in stage ${this.range.l0}:${this.range.l1}`);
    return w;
  }

  /** Cells in every group for a batch's tokens (`seqs` // [n]), or null when they do not fit. Changes nothing. */
  findSlot(seqs: ArrayLike<number>): StagePlan | null {
    const plans: SlotPlan[] = [];
    for (const g of this.groups) {
      const p = g.cells.findSlotFor(seqs);
      if (!p) return null;
      plans.push(p);
    }
    return { plans };
  }

  /** Cells a batch may take (empty, or windowed ones no window sees) in the group that has fewest. */
  get free(): number {
    return Math.min(...this.groups.map((g) => g.cells.takeable()));
  }

  /** Gives a plan's cells their positions and sequences (`pos`, `seq` // [n]). */
  apply(plan: StagePlan, pos: ArrayLike<number>, seq: ArrayLike<number>): void {
    this.#alive();
    this.groups.forEach((g, i) => g.cells.apply(plan.plans[i]!, pos, seq));
  }

  /** Frees the cells of an applied plan whose batch failed (also while it is locked). */
  release(plan: StagePlan): void {
    this.groups.forEach((g, i) => g.cells.release(plan.plans[i]!));
  }

  /** The n×n Hadamard matrix that rotates quantized K/V, built once. // [n * n] */
  rotation(n: number): Float32Array {
    let m = this.#rotations.get(n);
    if (!m) this.#rotations.set(n, (m = hadamardMatrix(n)));
    return m;
  }

  /** Re-rotates the keys of cells that seqAdd/seqDivide moved, then marks the shifts applied. */
  applyShift(): void {
    if (!this.groups.some((g) => g.cells.hasShift)) return;
    this.#alive();
    this.groups.forEach((g, i) => {
      if (!g.cells.hasShift) return;
      const s = this.#shift[i] ??= {
        graph: buildShiftGraph(this.hp, (slot) => ropeParams(this.hp, { ropeFreqs: this.#ropeFreqs }, g.layers[slot]!), g.storage),
        sched: Scheduler.create({ backends: this.#backends, graphSize: GRAPH_NODES }),
      };
      s.sched.alloc(s.graph.graph);
      setTensor(s.graph.shift, g.cells.pendingShifts());
      if (s.graph.rot) setTensor(s.graph.rot, this.rotation(g.storage.rot.k));
      s.sched.run(s.graph.graph);
      g.cells.resetShift();
    });
    this.#counters.shifts++;
  }

  /**
   * Drops a sequence's cells in [p0, p1) (negative bounds are open; seq < 0: every sequence).
   * Always true on this cache (llama.cpp's false is for caches that cannot cut a sequence).
   */
  seqRemove(seq: number, p0 = -1, p1 = -1): boolean {
    this.#alive();
    for (const g of this.groups) g.cells.seqRemove(seq, p0, p1);
    return true;
  }

  /**
   * Gives `dst` `src`'s cells in [p0, p1): shared within one stream (no data copied), copied with
   * their K/V rows across per-sequence streams.
   */
  seqCopy(src: number, dst: number, p0 = -1, p1 = -1): void {
    this.#alive();
    for (const g of this.groups) {
      const moved = g.cells.seqCopy(src, dst, p0, p1);
      if (moved && moved.from.length > 0) g.storage.moveRows(moved.from, moved.to);
    }
  }

  /** Drops every sequence but `seq`. */
  seqKeep(seq: number): void {
    this.#alive();
    for (const g of this.groups) g.cells.seqKeep(seq);
  }

  /** Moves `seq`'s positions in [p0, p1) by `delta`; keys are re-rotated before the next batch. */
  seqAdd(seq: number, p0: number, p1: number, delta: number): void {
    this.#alive();
    for (const g of this.groups) g.cells.seqAdd(seq, p0, p1, delta);
  }

  /** Divides `seq`'s positions in [p0, p1) by `d`; keys are re-rotated before the next batch. */
  seqDivide(seq: number, p0: number, p1: number, d: number): void {
    this.#alive();
    for (const g of this.groups) g.cells.seqDivide(seq, p0, p1, d);
  }

  /**
   * Smallest cached position of `seq` that every group holds, -1 when none (as llama.cpp's iSWA
   * cache: a windowed group that dropped old positions raises it).
   */
  seqPosMin(seq: number): number {
    return Math.max(...this.groups.map((g) => g.cells.seqPosMin(seq)));
  }

  /** Largest cached position of `seq`, -1 when none. */
  seqPosMax(seq: number): number {
    return this.cells.seqPosMax(seq);
  }

  /** Context shift of a full sequence (see KvCells.contextShift); returns the positions dropped. */
  contextShift(seq: number, nKeep: number, nDiscard?: number): number {
    this.#alive();
    // a windowed group (holding the newest positions only) drops the span the full group dropped
    const dropped = this.cells.contextShift(seq, nKeep, nDiscard);
    if (dropped > 0) for (const g of this.groups.slice(1)) g.cells.contextShift(seq, nKeep, dropped);
    return dropped;
  }

  /**
   * Moves used cells down into the holes before them, K/V rows included, keeping their order:
   * no result changes, and later batches attend over fewer cells. Returns the cells moved.
   */
  defrag(): number {
    this.#alive();
    let moved = 0;
    for (const g of this.groups) {
      const plan = g.cells.defragPlan();
      if (!plan) continue;
      g.storage.moveRows(plan.from, plan.to);
      g.cells.applyDefrag(plan);
      moved += plan.from.length;
    }
    if (moved > 0) this.#counters.defrags++;
    return moved;
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
    this.#alive();
    return importSeqState(this, blob, seq, options);
  }

  /** Bytes of K/V memory per buffer type ('CPU', 'CUDA0', 'CUDA_Host', ...), every group together. */
  memory(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const g of this.groups) for (const [k, v] of Object.entries(g.storage.memoryByBufferType())) out[k] = (out[k] ?? 0) + v;
    return out;
  }

  #alive(): void {
    if (this.#disposed) throw new ModelError('bad_input', 'KV cache was disposed');
  }

  /** Frees the K-shift graph and scheduler and the K/V tensors. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const s of this.#shift) {
      s?.sched.dispose();
      s?.graph.ctx.dispose();
    }
    this.#shift = [];
    for (const g of this.groups) g.storage.dispose();
  }
}
