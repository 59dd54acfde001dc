// A stage: layers [l0, l1) of one model on one backend, with the KV cache for those layers.
// It takes token ids (first stage) or hidden states and returns hidden states or logits.
import { Backend, GgmlType, Scheduler, getTensor, setTensor } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { KvCells, KvStorage, MAX_SEQ, attendedCells, buildMask, hadamardMatrix, type DecodedState, type SlotPlan } from '@strata/kv-cache';
import { exportStageState, importStageState, type ExportOptions, type ImportOptions } from './stage-state.ts';
import { KvCacheFullError, ModelError } from './errors.ts';
import { nEmbdKvGqa, readHParams, type HParams } from './hparams.ts';
import { formatRange, type LayerRange } from './layer-range.ts';
import { GRAPH_NODES, buildStageGraph, type GraphShape, type StageGraph } from './graph.ts';
import { buildShiftGraph, type ShiftGraph } from './k-shift.ts';
import { StageWeights } from './weights.ts';

/** Options for {@link Stage.open}. */
export interface StageOptions {
  /** GGUF file */
  model: string;
  /** layers this stage holds; default: all */
  range?: LayerRange;
  /** KV cells per stream (default 4096, capped at the training context) */
  ctxSize?: number;
  /** CPU threads */
  threads?: number;
  /** ggml device name (default CPU) */
  device?: string;
  /** K/V type (f16 default) */
  kvType?: number;
  /** repack mat-mul weights for the CPU's fastest kernels (default true, as llama.cpp) */
  repack?: boolean;
  /** model layers whose K/V stay in host memory instead of the device's */
  kvHostLayers?: number[];
  /**
   * 1 (default): one stream that every sequence shares (a shared prefix is held once); n: one
   * stream of ctxSize cells per sequence 0..n-1, copies between them copying data
   * (llama.cpp's kv_unified = false)
   */
  kvStreams?: number;
  /** receives a picture of the cells after every batch (what STRATA_KV_DEBUG=1 switches on) */
  kvDebug?: (dump: string) => void;
  /**
   * tokens of the largest micro-batch to reserve compute memory for at load (default 512, as
   * llama.cpp's n_ubatch): memory is known, and short of it fails, before serving starts
   */
  maxBatch?: number;
}

/** One micro-batch through a stage: every token belongs to one sequence. */
export interface StageBatch {
  /** token ids // [n] (first stage) */
  tokens?: Int32Array;
  /** hidden states // [n * n_embd] (later stages) */
  hidden?: Float32Array;
  /** position of each token // [n] */
  pos: Int32Array;
  /** sequence of each token // [n] */
  seq: Int32Array;
  /** indices of the tokens whose logits the last stage returns; default: all */
  outputs?: Int32Array;
}

/** Bytes per buffer type, by what the memory holds. */
export interface StageMemory {
  weights: Record<string, number>;
  kv: Record<string, number>;
  compute: Record<string, number>;
}

/** Counters a stage keeps for observability. */
export interface StageCounters {
  batches: number;
  tokens: number;
  /** batches that reused the previous batch's graph */
  graphReuses: number;
  /** K-shift graphs run */
  shifts: number;
  /** defragmentations done */
  defrags: number;
  /** cells freed because they fell out of every sequence's sliding window */
  swaPruned: number;
}

/** A batch whose cells are taken and whose inputs are set, ready to compute. */
interface PreparedBatch {
  plan: SlotPlan;
  n: number;
  graph: StageGraph;
  nOutputs: number;
}

function isIdentity(outputs: Int32Array, n: number): boolean {
  if (outputs.length !== n) return false;
  for (let i = 0; i < n; i++) if (outputs[i] !== i) return false;
  return true;
}

/** A stage and its KV cache. dispose() frees everything and is idempotent. */
export class Stage {
  readonly hp: HParams;
  readonly range: LayerRange;
  readonly isFirst: boolean;
  readonly isLast: boolean;
  readonly cells: KvCells;
  readonly counters: StageCounters = { batches: 0, tokens: 0, graphReuses: 0, shifts: 0, defrags: 0, swaPruned: 0 };
  readonly backend: Backend;
  readonly weights: StageWeights;
  readonly kv: KvStorage;
  readonly #sched: Scheduler;
  /** the CPU backend the scheduler falls back to when the stage runs on another device */
  readonly #cpu: Backend | null;
  #maskBuf = new Uint16Array(0);
  #kvDebug: ((dump: string) => void) | undefined;
  readonly #rotations = new Map<number, Float32Array>();
  /** every layer of the stage attends through a sliding window */
  readonly #windowedOnly: boolean;
  #graph: { shape: GraphShape; graph: StageGraph } | null = null;
  /** the K-shift graph, with a scheduler of its own so the step graph stays allocated */
  #shift: { graph: ShiftGraph; sched: Scheduler } | null = null;
  /** cells the batch in evalAsync writes; null when none computes */
  #computing: Int32Array | null = null;
  #disposed = false;

  private constructor(hp: HParams, range: LayerRange, backend: Backend, cpu: Backend | null, weights: StageWeights, kv: KvStorage, sched: Scheduler, streams: number) {
    this.hp = hp;
    this.range = range;
    this.isFirst = range.l0 === 0;
    this.isLast = range.l1 === hp.nLayer;
    this.backend = backend;
    this.#cpu = cpu;
    this.weights = weights;
    this.kv = kv;
    this.cells = new KvCells(kv.size, streams);
    this.#windowedOnly = hp.nSwa > 0 && hp.swaLayers.slice(range.l0, range.l1).every((x) => x);
    this.#sched = sched;
  }

  /** Loads a stage from a GGUF: reads the header and only this range's tensors. */
  static open(options: StageOptions): Stage {
    const file = GgufFile.open(options.model);
    try {
      return Stage.load(file, readHParams(file), options);
    } finally {
      file.close();
    }
  }

  /** Loads a stage from an open GGUF whose header was read (a pipeline opens the file once). */
  static load(file: GgufFile, hp: HParams, options: StageOptions): Stage {
    const range = options.range ?? { l0: 0, l1: hp.nLayer };
    if (range.l0 < 0 || range.l1 > hp.nLayer || range.l0 >= range.l1) {
      throw new ModelError('bad_split', `layer range ${formatRange(range)} is outside the model's 0:${hp.nLayer}`);
    }
    for (const l of options.kvHostLayers ?? []) {
      if (!(Number.isInteger(l) && l >= 0 && l < hp.nLayer)) throw new ModelError('bad_split', `host layer ${l} is not a layer of the model (0:${hp.nLayer})`);
    }
    const streams = options.kvStreams ?? 1;
    if (!Number.isInteger(streams) || streams < 1 || streams > MAX_SEQ) throw new ModelError('bad_input', `kvStreams must be 1..${MAX_SEQ}, got ${streams}`);
    // ctxSize cells per stream (llama.cpp gives each stream n_ctx / n_seq_max)
    const size = Math.min(options.ctxSize ?? 4096, hp.nCtxTrain) * streams;
    const backend = Backend.open({ device: options.device, threads: options.threads });
    let weights: StageWeights | null = null, kv: KvStorage | null = null, cpu: Backend | null = null, sched: Scheduler | null = null;
    try {
      weights = StageWeights.load(file, hp, range, backend, { repack: options.repack });
      const layers = Array.from({ length: range.l1 - range.l0 }, (_, i) => range.l0 + i);
      kv = KvStorage.create(backend, {
        layers, size, nEmbdKv: nEmbdKvGqa(hp), type: options.kvType ?? GgmlType.F16, headDim: hp.headDim,
        hostLayers: options.kvHostLayers?.filter((l) => l >= range.l0 && l < range.l1),
      });
      // Off the CPU, the CPU backend comes last so the scheduler can run what the device cannot.
      if (!backend.isCpu) cpu = Backend.open({ threads: options.threads });
      sched = Scheduler.create({ backends: cpu ? [backend, cpu] : [backend], graphSize: GRAPH_NODES });
      // reserve the compute buffers of the largest batch, every token an output, all cells attended
      const maxBatch = options.maxBatch ?? 512;
      if (maxBatch > 0) {
        const worst = buildStageGraph(hp, weights, kv, { nTokens: maxBatch, nKv: kv.size, nOutputs: maxBatch, selectOutputs: false });
        try {
          sched.reserve(worst.graph);
        } finally {
          worst.ctx.dispose();
        }
      }
      const stage = new Stage(hp, range, backend, cpu, weights, kv, sched, streams);
      stage.#kvDebug = options.kvDebug;
      return stage;
    } catch (err) {
      sched?.dispose();
      kv?.dispose();
      weights?.dispose();
      cpu?.dispose();
      backend.dispose();
      throw err;
    }
  }

  /** Runs one micro-batch; returns hidden states [n * n_embd] or logits [n_outputs * n_vocab]. */
  eval(batch: StageBatch): Float32Array {
    const b = this.#begin(batch);
    try {
      this.#sched.run(b.graph.graph);
    } catch (err) {
      this.cells.release(b.plan);
      throw err;
    }
    return this.#end(b);
  }

  /**
   * eval() with the graph computed on a native pool thread: the calling thread's event loop is
   * free until the result comes. Meanwhile the stage takes no other batch and no operation that
   * changes cells; reading (exporting a sequence the batch does not write) is allowed.
   */
  async evalAsync(batch: StageBatch): Promise<Float32Array> {
    const b = this.#begin(batch);
    this.#computing = b.plan.cells;
    try {
      await this.#sched.runAsync(b.graph.graph);
    } catch (err) {
      this.cells.release(b.plan);
      throw err;
    } finally {
      this.#computing = null;
    }
    return this.#end(b);
  }

  /** Cells the batch computing now writes (evalAsync), or null when no batch computes. // [n] */
  get computing(): Int32Array | null {
    return this.#computing;
  }

  /** Checks a batch, takes its cells and sets the graph's inputs: everything before compute. */
  #begin(batch: StageBatch): PreparedBatch {
    if (this.#disposed) throw new ModelError('bad_input', 'stage was disposed');
    if (this.#computing) throw new ModelError('busy', 'a batch is computing on this stage');
    const n = batch.pos.length;
    this.#checkBatch(batch, n);
    this.applyShift();
    const plan = this.cells.findSlotFor(batch.seq);
    if (!plan) throw new KvCacheFullError(n, this.cells.size - this.cells.used);
    this.cells.apply(plan, batch.pos, batch.seq);
    try {
      return { plan, n, ...this.#setInputs(batch, plan.cells, n) };
    } catch (err) {
      this.cells.release(plan);
      throw err;
    }
  }

  /** Reads the output of a computed batch and does the bookkeeping after it. */
  #end(b: PreparedBatch): Float32Array {
    const width = this.isLast ? this.hp.nVocab : this.hp.nEmbd;
    const out = new Float32Array(width * b.nOutputs);
    getTensor(b.graph.out, out);
    this.counters.batches++;
    this.counters.tokens += b.n;
    // a shard whose layers all attend through the window keeps only what the window still sees
    if (this.#windowedOnly) this.counters.swaPruned += this.cells.pruneSwa(this.hp.nSwa);
    this.#kvDebug?.(`stage ${formatRange(this.range)} after a batch of ${b.n}: ${this.cells.debugDump()}`);
    return out;
  }

  #setInputs(batch: StageBatch, cells: Int32Array, n: number): { graph: StageGraph; nOutputs: number } {
    const nKv = attendedCells(this.cells);
    // every token in order needs no row selection (llama.cpp skips it too)
    const outputs = this.isLast && batch.outputs && !isIdentity(batch.outputs, n) ? batch.outputs : null;
    const nOutputs = outputs?.length ?? n;
    const sg = this.#graphFor({ nTokens: n, nKv, nOutputs, selectOutputs: outputs !== null });
    if (sg.tokens) setTensor(sg.tokens, batch.tokens!);
    if (sg.hidden) setTensor(sg.hidden, batch.hidden!);
    setTensor(sg.pos, batch.pos);
    const idx = new BigInt64Array(n);
    for (let t = 0; t < n; t++) idx[t] = BigInt(cells[t]!);
    setTensor(sg.kvIdxs, idx);
    if (this.#maskBuf.length < n * nKv) this.#maskBuf = new Uint16Array(n * nKv);
    const mask = this.#maskBuf.subarray(0, n * nKv);
    if (sg.mask) {
      buildMask(this.cells, nKv, batch.pos, batch.seq, mask);
      setTensor(sg.mask, mask);
    }
    if (sg.maskSwa) {
      buildMask(this.cells, nKv, batch.pos, batch.seq, mask, this.hp.nSwa);
      setTensor(sg.maskSwa, mask);
    }
    if (sg.outIds) setTensor(sg.outIds, outputs!);
    if (sg.rotK) setTensor(sg.rotK, this.#rotation(this.kv.rot.k));
    if (sg.rotV) setTensor(sg.rotV, this.#rotation(this.kv.rot.v));
    return { graph: sg, nOutputs };
  }

  /**
   * The graph for a batch shape, allocated. Consecutive batches of one shape (every decode step
   * until the attended cells grow by 256) reuse the built and allocated graph, as llama.cpp does:
   * only the inputs change.
   */
  #graphFor(shape: GraphShape): StageGraph {
    const c = this.#graph;
    if (c && c.shape.nTokens === shape.nTokens && c.shape.nKv === shape.nKv && c.shape.nOutputs === shape.nOutputs
      && c.shape.selectOutputs === shape.selectOutputs) {
      this.counters.graphReuses++;
      return c.graph;
    }
    this.#dropGraph();
    const graph = buildStageGraph(this.hp, this.weights, this.kv, shape);
    try {
      this.#sched.alloc(graph.graph);
    } catch (err) {
      graph.ctx.dispose();
      throw err;
    }
    this.#graph = { shape, graph };
    return graph;
  }

  /** Re-rotates the keys of cells that seqAdd/seqDivide moved, then marks the shifts applied. */
  applyShift(): void {
    if (!this.cells.hasShift) return;
    this.#idle();
    this.#shift ??= {
      graph: buildShiftGraph(this.hp, this.weights, this.kv),
      sched: Scheduler.create({ backends: this.#cpu ? [this.backend, this.#cpu] : [this.backend], graphSize: GRAPH_NODES }),
    };
    const { graph, sched } = this.#shift;
    sched.alloc(graph.graph);
    setTensor(graph.shift, this.cells.pendingShifts());
    if (graph.rot) setTensor(graph.rot, this.#rotation(this.kv.rot.k));
    sched.run(graph.graph);
    this.cells.resetShift();
    this.counters.shifts++;
  }

  /** Cells change only between batches: an operation that changes them throws while one computes. */
  #idle(): void {
    if (this.#computing) throw new ModelError('busy', 'a batch is computing on this stage: cells change only between batches');
  }

  /** The n×n Hadamard matrix, built once. */
  #rotation(n: number): Float32Array {
    let m = this.#rotations.get(n);
    if (!m) this.#rotations.set(n, (m = hadamardMatrix(n)));
    return m;
  }

  #dropGraph(): void {
    this.#graph?.graph.ctx.dispose();
    this.#graph = null;
  }

  #checkBatch(b: StageBatch, n: number): void {
    if (n === 0) throw new ModelError('bad_input', 'empty batch');
    if (b.seq.length !== n) throw new ModelError('bad_input', `batch has ${n} positions but ${b.seq.length} seq ids`);
    if (this.isFirst) {
      if (!b.tokens || b.tokens.length !== n) throw new ModelError('bad_input', `first stage needs ${n} token ids`);
      for (const t of b.tokens) {
        if (t < 0 || t >= this.hp.nVocab) throw new ModelError('bad_input', `token id ${t} outside the vocabulary of ${this.hp.nVocab}`);
      }
    } else if (!b.hidden || b.hidden.length !== n * this.hp.nEmbd) {
      throw new ModelError('bad_input', `stage ${formatRange(this.range)} needs ${n}x${this.hp.nEmbd} hidden values`);
    }
    for (const p of b.pos) if (!(p >= 0)) throw new ModelError('bad_input', `position ${p} is negative`);
    const maxSeq = this.cells.streams > 1 ? this.cells.streams : MAX_SEQ;
    for (const s of b.seq) if (!(s >= 0 && s < maxSeq)) throw new ModelError('bad_input', `seq id ${s} outside 0..${maxSeq - 1}`);
    // llama.cpp's rule: a sequence's positions continue right after what the cache holds
    const first = new Map<number, number>();
    for (let t = 0; t < n; t++) first.set(b.seq[t]!, Math.min(first.get(b.seq[t]!) ?? Infinity, b.pos[t]!));
    for (const [s, p] of first) {
      const max = this.cells.seqPosMax(s);
      if (max >= 0 && p !== max + 1) {
        throw new ModelError('bad_input', `sequence ${s}: the cache holds positions up to ${max}, so the batch must start at ${max + 1}, not ${p}`);
      }
    }
    if (b.outputs) {
      if (b.outputs.length === 0) throw new ModelError('bad_input', 'a batch must output at least one token');
      for (const o of b.outputs) if (o < 0 || o >= n) throw new ModelError('bad_input', `output index ${o} outside the batch of ${n}`);
    }
  }

  /** Bytes of memory per use and buffer type: weights, KV cache, compute scratch. */
  memory(): StageMemory {
    return {
      weights: this.weights.memoryByBufferType(),
      kv: this.kv.memoryByBufferType(),
      compute: { [this.backend.deviceName]: this.#sched.bufferSize(this.backend) },
    };
  }

  /** Drops a sequence's cells in [p0, p1) (negative bounds are open). */
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
    if (moved && moved.from.length > 0) this.kv.moveRows(moved.from, moved.to);
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

  /**
   * Exports `seq`'s cells with p0 <= pos < p1 (negative: open) and their K/V rows for `layers`
   * (default: every layer of the stage), in the checksummed state format.
   */
  exportState(seq: number, options: ExportOptions = {}): Uint8Array {
    return exportStageState(this, seq, options);
  }

  /**
   * Imports the part of a state blob that falls in this stage's layers into sequence `seq`
   * (see stage-state.ts); a corrupt, truncated or mismatched blob leaves the cache as it was.
   */
  importState(blob: Uint8Array | DecodedState, seq: number, options: ImportOptions = {}): { layers: LayerRange; cells: number } {
    this.#idle();
    return importStageState(this, blob, seq, options);
  }

  /**
   * Moves used cells down into the holes before them, K/V rows included, keeping their order:
   * no result changes, and later batches attend over fewer cells. Returns the cells moved.
   */
  defrag(): number {
    this.#idle();
    const plan = this.cells.defragPlan();
    if (!plan) return 0;
    this.kv.moveRows(plan.from, plan.to);
    this.cells.applyDefrag(plan);
    this.counters.defrags++;
    return plan.from.length;
  }

  /** Context shift of a full sequence (see KvCells.contextShift); returns the positions dropped. */
  contextShift(seq: number, nKeep: number, nDiscard?: number): number {
    this.#idle();
    return this.cells.contextShift(seq, nKeep, nDiscard);
  }

  /** Smallest cached position of `seq`, -1 when none. */
  seqPosMin(seq: number): number {
    return this.cells.seqPosMin(seq);
  }

  /** Largest cached position of `seq`, -1 when none. */
  seqPosMax(seq: number): number {
    return this.cells.seqPosMax(seq);
  }

  /** Frees the scheduler, KV cache, weights and backend. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#dropGraph();
    this.#shift?.sched.dispose();
    this.#shift?.graph.ctx.dispose();
    this.#sched.dispose();
    this.kv.dispose();
    this.weights.dispose();
    this.#cpu?.dispose();
    this.backend.dispose();
  }
}
