// A stage: layers [l0, l1) of one model on one backend, with the KV cache for those layers
// (stage.cache, a StageCache). It takes token ids (first stage) or hidden states and returns
// hidden states or logits.
import { Backend, Scheduler, getTensor, setTensor, type TensorPtr } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { MAX_SEQ, attendedCells, attendedWindow, buildMask, type KvCells, type KvWindow } from '@strata/kv-cache';
import { KvCacheFullError, ModelError } from './errors.ts';
import { readHParams, type HParams } from './hparams.ts';
import { formatRange, type LayerRange } from './layer-range.ts';
import { GRAPH_NODES, buildStageGraph, type AttnGroup, type GraphShape, type StageGraph } from './graph.ts';
import { StageCache, type CacheCounters, type StagePlan } from './stage-cache.ts';
import { attnOf, groupStreams, splitEqual, type Attn, type GroupedPart } from './ubatch.ts';
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
  /** map the CPU weights from the GGUF instead of reading them (default true, as llama.cpp) */
  mmap?: boolean;
  /** model layers whose K/V stay in host memory instead of the device's */
  kvHostLayers?: number[];
  /**
   * 1 (default): one stream that every sequence shares (a shared prefix is held once); n: one
   * stream of ctxSize cells per sequence 0..n-1, copies between them copying data
   * (llama.cpp's kv_unified = false)
   */
  kvStreams?: number;
  /**
   * With kvStreams: a batch computes as one graph whatever sequences it holds (groupStreams: its
   * tokens in sequence order, one attention op per run of consecutive sequences with the same
   * number of tokens). Default false: split into micro-batches as llama.cpp does (splitEqual),
   * which libllama's results match to the bit.
   */
  groupStreams?: boolean;
  /**
   * true (default, as libllama's own default): windowed layers keep a full-size cell set, shared
   * with the full layers. false: a stage holding both kinds keeps the windowed layers' K/V in a
   * group of their own, sized for what the window sees (llama.cpp's iSWA cache with swa_full off,
   * llama-server's default): pad256(min(cells, n_swa · kvSwaSeqs + maxBatch)) cells (per stream
   * with kvStreams, each sized for one sequence)
   */
  kvSwaFull?: boolean;
  /** sequences the windowed group is sized for when kvSwaFull is false (llama.cpp's n_seq_max; default 1) */
  kvSwaSeqs?: number;
  /** receives a picture of the cells after every batch (what STRATA_KV_DEBUG=1 switches on) */
  kvDebug?: (dump: string) => void;
  /**
   * tokens of the largest micro-batch to reserve compute memory for at load (default 512, as
   * llama.cpp's n_ubatch): memory is known, and short of it fails, before serving starts
   */
  maxBatch?: number;
  /**
   * a last stage's logits go into one buffer the stage keeps, each eval's result valid only until
   * the next one (default false: a fresh array each time). For a caller that reads them at once
   * (a worker samples them): no allocation, zero-fill and page faults of megabytes per step.
   */
  reuseLogits?: boolean;
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
  /** indices of the tokens whose logits the last stage returns; default: all (none when `embed` is given) */
  outputs?: Int32Array;
  /**
   * indices of the tokens whose final normalized hidden states (embeddings) the last stage keeps
   * in {@link Stage.embeddings} // [n_embed]
   */
  embed?: Int32Array;
}

/** Bytes per buffer type, by what the memory holds. */
export interface StageMemory {
  weights: Record<string, number>;
  kv: Record<string, number>;
  compute: Record<string, number>;
}

/** Counters a stage keeps for observability: its batches' and its cache's. */
export interface StageCounters extends CacheCounters {
  batches: number;
  tokens: number;
  /** batches that reused the previous batch's graph */
  graphReuses: number;
  /**
   * cells outside what batches' attention read, of those that reading from cell 0 up to the used
   * cells would have read (full and windowed layers' added up): masked columns not paid for
   */
  skippedCells: number;
}

/** A batch whose cells are taken and whose inputs are set, ready to compute. */
interface PreparedBatch {
  plan: StagePlan;
  n: number;
  graph: StageGraph;
  nOutputs: number;
  nEmbed: number;
}

/** A batch split into equal parts (one KV stream per sequence), and where each part's rows go. */
interface SplitBatch {
  /** floats per result row: the vocabulary on the last stage, the hidden size before */
  width: number;
  /** result rows: the logit rows asked for on the last stage, every token before */
  nOutputs: number;
  parts: {
    attn: Attn[];
    batch: StageBatch;
    /** the batch's token of each of the part's rows */
    tokens: Int32Array;
    /** the result row of each of the part's logit rows (last stage) */
    outRows: number[];
    /** the embedding row of each of the part's embedding rows (last stage) */
    embedRows: number[];
  }[];
  /** the batch's embedding rows, gathered */
  embeddings: Float32Array<ArrayBuffer>;
}

/** Whether two shapes' attention groups are the same. */
function sameGroups(a: readonly AttnGroup[] | undefined, b: readonly AttnGroup[] | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((g, i) => {
    const h = b[i]!;
    return g.first === h.first && g.streams === h.streams && g.per === h.per && g.nKv === h.nKv && g.nKvSwa === h.nKvSwa && g.kvLo === h.kvLo && g.kvLoSwa === h.kvLoSwa;
  });
}

/** Rows `tokens` of `src` (rows of `width`), in that order. */
function pickRows(src: Float32Array, tokens: Int32Array, width: number): Float32Array {
  const out = new Float32Array(tokens.length * width);
  tokens.forEach((t, j) => out.set(src.subarray(t * width, (t + 1) * width), j * width));
  return out;
}

/** Puts row j of `src` at row tokens[j] of `dst` (rows of `width`); returns `dst`. */
function putRows(dst: Float32Array, src: Float32Array, tokens: Int32Array, width: number): Float32Array {
  tokens.forEach((t, j) => dst.set(src.subarray(j * width, (j + 1) * width), t * width));
  return dst;
}

function isIdentity(outputs: Int32Array, n: number): boolean {
  if (outputs.length !== n) return false;
  for (let i = 0; i < n; i++) if (outputs[i] !== i) return false;
  return true;
}

/** A stage: weights, graph and evaluation; its KV cache is `cache`. dispose() frees everything and is idempotent. */
export class Stage {
  readonly hp: HParams;
  readonly range: LayerRange;
  readonly isFirst: boolean;
  readonly isLast: boolean;
  readonly backend: Backend;
  readonly weights: StageWeights;
  /** the KV cache of the stage's layers: cells, K/V rows and every sequence operation */
  readonly cache: StageCache;
  readonly #counters = { batches: 0, tokens: 0, graphReuses: 0, skippedCells: 0 };
  readonly #sched: Scheduler;
  /** the CPU backend the scheduler falls back to when the stage runs on another device */
  readonly #cpu: Backend | null;
  #maskBuf = new Uint16Array(0);
  /** the kept logits buffer (StageOptions.reuseLogits), or null */
  #logitsBuf: Float32Array | null = null;
  /** the same for a batch split into parts (one KV stream per sequence), or null */
  #gatherBuf: Float32Array | null = null;
  /** tokens of the largest micro-batch (StageOptions.maxBatch) */
  #maxBatch = 512;
  /** StageOptions.groupStreams */
  #groupStreams = false;
  /** attention groups one graph holds: a node budget per layer of the stage */
  #maxGroups = 16;
  #kvDebug: ((dump: string) => void) | undefined;
  #graph: { shape: GraphShape; graph: StageGraph } | null = null;
  #embeddings = new Float32Array(0);
  #disposed = false;

  private constructor(hp: HParams, range: LayerRange, backend: Backend, cpu: Backend | null, weights: StageWeights, cache: StageCache, sched: Scheduler) {
    this.hp = hp;
    this.range = range;
    this.isFirst = range.l0 === 0;
    this.isLast = range.l1 === hp.nLayer;
    this.backend = backend;
    this.#cpu = cpu;
    this.weights = weights;
    this.cache = cache;
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
    const maxBatch = options.maxBatch ?? 512;
    const swaSeqs = options.kvSwaSeqs ?? 1;
    if (!Number.isInteger(swaSeqs) || swaSeqs < 1 || swaSeqs > MAX_SEQ) throw new ModelError('bad_input', `kvSwaSeqs must be 1..${MAX_SEQ}, got ${swaSeqs}`);
    // llama.cpp's size per stream: GGML_PAD(min(cells, n_swa · (one stream ? n_seq_max : 1) + n_ubatch), 256), here never past the full group's
    const perStream = size / streams;
    const swaSize = options.kvSwaFull === false && hp.nSwa > 0
      ? streams * Math.min(perStream, Math.ceil(Math.min(perStream, hp.nSwa * (streams > 1 ? 1 : swaSeqs) + maxBatch) / 256) * 256)
      : 0;
    const backend = Backend.open({ device: options.device, threads: options.threads });
    let weights: StageWeights | null = null, cache: StageCache | null = null, cpu: Backend | null = null, sched: Scheduler | null = null;
    try {
      weights = StageWeights.load(file, hp, range, backend, { repack: options.repack, mmap: options.mmap });
      // Off the CPU, the CPU backend comes last so the scheduler can run what the device cannot.
      if (!backend.isCpu) cpu = Backend.open({ threads: options.threads });
      cache = StageCache.create({
        hp, range, backend, cpu, size, streams, type: options.kvType, hostLayers: options.kvHostLayers, ropeFreqs: weights.ropeFreqs, swaSize,
      });
      sched = Scheduler.create({ backends: cpu ? [backend, cpu] : [backend], graphSize: GRAPH_NODES });
      // reserve the compute buffers of the largest batch, every token an output, all cells attended
      if (maxBatch > 0) {
        const worst = buildStageGraph(hp, weights, cache, {
          nTokens: maxBatch, nKv: cache.groups[0]!.storage.size / streams, nKvSwa: (cache.groups[1] ?? cache.groups[0]!).storage.size / streams, kvLo: 0, kvLoSwa: 0, nOutputs: maxBatch, nEmbed: 0, selectOutputs: false,
        });
        try {
          sched.reserve(worst.graph);
        } finally {
          worst.ctx.dispose();
        }
      }
      const stage = new Stage(hp, range, backend, cpu, weights, cache, sched);
      stage.#kvDebug = options.kvDebug;
      if (options.reuseLogits) {
        stage.#logitsBuf = new Float32Array(0);
        stage.#gatherBuf = new Float32Array(0);
      }
      stage.#maxBatch = Math.max(1, maxBatch);
      stage.#groupStreams = options.groupStreams === true;
      // about a dozen nodes per group and layer, beside each layer's own
      stage.#maxGroups = Math.max(1, Math.min(16, Math.floor(GRAPH_NODES / (16 * (range.l1 - range.l0))) - 4));
      return stage;
    } catch (err) {
      sched?.dispose();
      cache?.dispose();
      weights?.dispose();
      cpu?.dispose();
      backend.dispose();
      throw err;
    }
  }

  /** Runs one micro-batch; returns hidden states [n * n_embd] or logits [n_outputs * n_vocab]. */
  eval(batch: StageBatch): Float32Array {
    const parts = this.#parts(batch);
    if (!parts) return this.#evalPart(batch, null);
    const grouped = this.#grouped(batch, parts);
    if (grouped) return grouped.finish(this.#evalPart(grouped.batch, grouped.attn));
    // one KV stream per sequence: the batch computes in parts
    const split = this.#split(batch, parts);
    if (!('parts' in split)) return this.#evalPart(batch, split);
    const out = this.#gatherTarget(split);
    split.parts.forEach((p, k) => {
      try {
        this.#gather(split, k, this.#evalPart(p.batch, p.attn), out);
      } catch (err) {
        this.#undo(batch, k);
        throw err;
      }
    });
    return out;
  }

  #evalPart(batch: StageBatch, attn: Attn[] | null): Float32Array {
    const b = this.#begin(batch, attn);
    try {
      this.#sched.run(b.graph.graph);
    } catch (err) {
      this.cache.release(b.plan);
      throw err;
    }
    return this.#end(b);
  }

  /**
   * The last batch's embedding rows (StageBatch.embed), final normalized hidden states in the
   * order asked // [n_embed * n_embd]; valid until the next batch.
   */
  get embeddings(): Float32Array {
    return this.#embeddings;
  }

  /** What the stage did: batches and tokens, graph reuses, and its cache's counters. */
  get counters(): StageCounters {
    return { ...this.#counters, ...this.cache.counters };
  }

  /**
   * With one KV stream per sequence, the batch (checked) in the parts it computes as: groupStreams'
   * (one part unless it has more groups than a graph holds) or llama.cpp's splitEqual. Null with
   * one stream for all, or an empty batch (which #begin refuses).
   */
  #parts(batch: StageBatch): GroupedPart[] | null {
    const n = batch.pos.length;
    if (this.cache.cells.streams === 1 || n === 0) return null;
    this.#checkBatch(batch, n);
    return this.#groupStreams ? groupStreams(batch.seq, this.#maxGroups) : splitEqual(batch.seq, this.#maxBatch).map((p) => ({ tokens: p.tokens, attn: attnOf(p) }));
  }

  /**
   * With groupStreams and one part: the batch in sequence order (its outputs and embedding rows
   * renumbered, asked for in the same order), its attention groups, and what puts a result back in
   * the batch's order (hidden rows by token; logit rows come as asked). Null otherwise.
   */
  #grouped(batch: StageBatch, parts: GroupedPart[]): { batch: StageBatch; attn: Attn[]; finish: (out: Float32Array) => Float32Array } | null {
    if (!this.#groupStreams || parts.length > 1) return null;
    const n = batch.pos.length;
    const { tokens: order, attn: groups } = parts[0]!;
    if (isIdentity(order, n)) return { batch, attn: groups, finish: (out) => out };
    const row = new Int32Array(n); // token -> row
    order.forEach((t, r) => (row[t] = r));
    const pick = (a: Int32Array) => Int32Array.from(order, (t) => a[t]!);
    const rows = (a: Int32Array) => Int32Array.from(a, (t) => row[t]!);
    const e = this.hp.nEmbd;
    // the last stage's logit rows, every token's when none are named (none with embeddings)
    const outputs = !this.isLast ? undefined : batch.outputs ? rows(batch.outputs) : batch.embed?.length ? undefined : row;
    const sorted: StageBatch = {
      tokens: batch.tokens && pick(batch.tokens), hidden: batch.hidden && pickRows(batch.hidden, order, e), pos: pick(batch.pos), seq: pick(batch.seq),
      outputs, embed: batch.embed && rows(batch.embed),
    };
    return {
      batch: sorted, attn: groups,
      finish: (out) => (this.isLast ? out : putRows(new Float32Array(out.length), out, order, e)),
    };
  }

  /**
   * The micro-batches of `parts` (one KV stream per sequence), or the attention of the one part
   * the batch is when that is in its own order. Each part gets the rows it outputs: logit rows
   * and embedding rows of its tokens, in the order asked (a part with none computes one logit
   * row, dropped, as a stage outputs at least one).
   */
  #split(batch: StageBatch, parts: GroupedPart[]): SplitBatch | Attn[] {
    const n = batch.pos.length;
    if (parts.length === 1 && isIdentity(parts[0]!.tokens, n)) return parts[0]!.attn;
    const embed = this.isLast && batch.embed && batch.embed.length > 0 ? batch.embed : null;
    const outputs = this.isLast ? batch.outputs ?? (embed ? new Int32Array(0) : Int32Array.from({ length: n }, (_, i) => i)) : null;
    const own = parts.map((p) => p.tokens);
    const where = new Int32Array(n * 2); // token -> part, index among the part's own
    own.forEach((tokens, k) => tokens.forEach((t, j) => {
      where[2 * t] = k;
      where[2 * t + 1] = j;
    }));
    const sub = (a: Int32Array, k: number) => Int32Array.from(own[k]!, (t) => a[t]!);
    const width = this.hp.nEmbd;
    return {
      width: this.isLast ? this.hp.nVocab : width,
      nOutputs: outputs ? outputs.length : n,
      parts: parts.map((p, k) => {
        const rowsOf = (asked: Int32Array | null) => {
          const rows: number[] = [], locals: number[] = [];
          asked?.forEach((t, r) => {
            if (where[2 * t] === k) {
              rows.push(r);
              locals.push(where[2 * t + 1]!);
            }
          });
          return { rows, locals };
        };
        const out = rowsOf(outputs), emb = rowsOf(embed);
        const hidden = batch.hidden && pickRows(batch.hidden, own[k]!, width);
        const dropOne = this.isLast && out.locals.length === 0 && emb.locals.length === 0;
        return {
          attn: p.attn,
          batch: {
            tokens: batch.tokens ? sub(batch.tokens, k) : undefined, hidden, pos: sub(batch.pos, k), seq: sub(batch.seq, k),
            outputs: this.isLast ? Int32Array.from(dropOne ? [own[k]!.length - 1] : out.locals) : undefined,
            embed: emb.locals.length > 0 ? Int32Array.from(emb.locals) : undefined,
          },
          tokens: p.tokens,
          outRows: dropOne ? [] : out.rows,
          embedRows: emb.rows,
        };
      }),
      embeddings: new Float32Array((embed?.length ?? 0) * width),
    };
  }

  /** The result of a split batch, filled part by part (#gather). */
  #gatherTarget(split: SplitBatch): Float32Array {
    const size = split.width * split.nOutputs;
    if (!(this.#gatherBuf && this.isLast)) return new Float32Array(size);
    if (this.#gatherBuf.length < size) this.#gatherBuf = new Float32Array(size);
    return this.#gatherBuf.subarray(0, size);
  }

  /**
   * Puts part k's result (`o`, and the embeddings its batch left) in the batch's order: hidden
   * rows by token, logit and embedding rows as the batch asked for them.
   */
  #gather(split: SplitBatch, k: number, o: Float32Array, out: Float32Array): void {
    const p = split.parts[k]!, w = split.width;
    if (!this.isLast) {
      putRows(out, o, p.tokens, w);
      return;
    }
    p.outRows.forEach((r, j) => out.set(o.subarray(j * w, (j + 1) * w), r * w));
    // (#end left the part's own embedding rows in #embeddings)
    const e = this.hp.nEmbd, mine = this.#embeddings;
    p.embedRows.forEach((r, j) => split.embeddings.set(mine.subarray(j * e, (j + 1) * e), r * e));
    this.#embeddings = split.embeddings;
  }

  /** Takes back what the first `done` parts of a failed batch put in the cache: its sequences' positions from the batch's first on. */
  #undo(batch: StageBatch, done: number): void {
    if (done === 0) return;
    const first = new Map<number, number>();
    batch.seq.forEach((s, t) => first.set(s, Math.min(first.get(s) ?? Infinity, batch.pos[t]!)));
    for (const [s, p] of first) this.cache.seqRemove(s, p, -1);
  }

  /** Checks a batch, takes its cells and sets the graph's inputs: everything before compute. */
  #begin(batch: StageBatch, attn: Attn[] | null): PreparedBatch {
    if (this.#disposed) throw new ModelError('bad_input', 'stage was disposed');
    const n = batch.pos.length;
    this.#checkBatch(batch, n);
    const { cache } = this;
    cache.applyShift();
    const plan = cache.findSlot(batch.seq);
    if (!plan) throw new KvCacheFullError(n, cache.free);
    cache.apply(plan, batch.pos, batch.seq);
    try {
      return { plan, n, ...this.#setInputs(batch, plan, n, attn) };
    } catch (err) {
      cache.release(plan);
      throw err;
    }
  }

  /** Reads the output of a computed batch and does the bookkeeping after it. */
  #end(b: PreparedBatch): Float32Array {
    const width = this.isLast ? this.hp.nVocab : this.hp.nEmbd;
    const size = width * b.nOutputs;
    let out: Float32Array;
    if (this.#logitsBuf && this.isLast) {
      if (this.#logitsBuf.length < size) this.#logitsBuf = new Float32Array(size);
      out = this.#logitsBuf.subarray(0, size);
    } else {
      out = new Float32Array(size);
    }
    if (size > 0) getTensor(b.graph.out, out);
    this.#embeddings = new Float32Array(b.nEmbed * this.hp.nEmbd);
    if (b.graph.embd) getTensor(b.graph.embd, this.#embeddings);
    this.#counters.batches++;
    this.#counters.tokens += b.n;
    if (this.#kvDebug) {
      const dumps = this.cache.groups.map((g, i) => (this.cache.groups.length > 1 ? `${i === 0 ? 'full' : 'windowed'} layers: ` : '') + g.cells.debugDump());
      this.#kvDebug(`stage ${formatRange(this.range)} after a batch of ${b.n}: ${dumps.join('\n')}`);
    }
    return out;
  }

  #setInputs(batch: StageBatch, plan: StagePlan, n: number, attn: Attn[] | null): { graph: StageGraph; nOutputs: number; nEmbed: number } {
    const { storage, groups: kv } = this.cache;
    // the windowed layers' cells: their own group's, else the full layers'
    const swaCells = kv[1]?.cells ?? kv[0]!.cells;
    // one KV stream per sequence: each attention group over the cells of its own streams
    const groups: AttnGroup[] | undefined = attn ? this.#groupWindows(batch, attn, swaCells) : undefined;
    const widest = (cells: number): KvWindow => ({ lo: 0, n: cells, all: cells });
    const { full, windowed } = groups ? { full: widest(Math.max(...groups.map((g) => g.nKv))), windowed: widest(Math.max(...groups.map((g) => g.nKvSwa))) }
      : this.#windows(batch, swaCells, 0, batch.pos.length);
    const embed = this.isLast && batch.embed && batch.embed.length > 0 ? batch.embed : null;
    const logitRows = batch.outputs ?? (embed ? new Int32Array(0) : null);
    // every token in order needs no row selection (llama.cpp skips it too)
    let outputs: Int32Array | null = null;
    if (embed) {
      outputs = new Int32Array(logitRows!.length + embed.length);
      outputs.set(logitRows!);
      outputs.set(embed, logitRows!.length);
    } else if (this.isLast && logitRows && !isIdentity(logitRows, n)) {
      outputs = logitRows;
    }
    const nEmbed = embed?.length ?? 0;
    const nOutputs = this.isLast && logitRows ? logitRows.length : n;
    const shape = { nKv: full.n, kvLo: full.lo, nKvSwa: windowed.n, kvLoSwa: windowed.lo };
    const sg = this.#graphFor({ nTokens: n, ...shape, nOutputs, nEmbed, selectOutputs: outputs !== null, groups });
    if (sg.tokens) setTensor(sg.tokens, batch.tokens!);
    if (sg.hidden) setTensor(sg.hidden, batch.hidden!);
    setTensor(sg.pos, batch.pos);
    const idx = new BigInt64Array(n);
    const setIdxs = (t: TensorPtr, cells: Int32Array) => {
      for (let i = 0; i < n; i++) idx[i] = BigInt(cells[i]!);
      setTensor(t, idx);
    };
    setIdxs(sg.kvIdxs, plan.plans[0]!.cells);
    if (sg.kvIdxsSwa) setIdxs(sg.kvIdxsSwa, plan.plans[1]!.cells);
    // each group's masks over its rows
    let row = 0;
    (groups ?? [{ first: 0, streams: 1, per: n, ...shape }]).forEach((g, i) => {
      const rows = g.streams * g.per, pos = batch.pos.subarray(row, row + rows), seq = batch.seq.subarray(row, row + rows);
      const masks = sg.masks[i]!;
      if (masks.full) this.#setMask(masks.full, kv[0]!.cells, g.nKv, g.kvLo, pos, seq, 0);
      if (masks.swa) this.#setMask(masks.swa, swaCells, g.nKvSwa, g.kvLoSwa, pos, seq, this.hp.nSwa);
      row += rows;
    });
    if (sg.outIds) setTensor(sg.outIds, outputs!);
    if (sg.rotK) setTensor(sg.rotK, this.cache.rotation(storage.rot.k));
    if (sg.rotV) setTensor(sg.rotV, this.cache.rotation(storage.rot.v));
    return { graph: sg, nOutputs, nEmbed };
  }

  /**
   * The cells that rows [row0, row1) of a batch attend to (in `streams`, with one stream per
   * sequence), for the full layers and the windowed ones: from the lowest to the highest cell any
   * of them sees (not the cached prefixes and idle sessions around their sequences' cells, nor
   * positions a window hides). One token reads every used cell as libllama does: there ggml's CPU
   * flash attention splits the cells among its threads, and other bounds would sum in another
   * order (other bits than libllama's); with two tokens or more a skipped cell was a masked
   * column, skipped the same way inside the op. Adds the cells left out to
   * StageCounters.skippedCells.
   */
  #windows(batch: StageBatch, swaCells: KvCells, row0: number, row1: number, streams?: number[]): { full: KvWindow; windowed: KvWindow } {
    const cells = this.cache.groups[0]!.cells;
    if (row1 - row0 === 1) {
      const [n, nSwa] = [attendedCells(cells, 256, streams), attendedCells(swaCells, 256, streams)];
      return { full: { lo: 0, n, all: n }, windowed: { lo: 0, n: nSwa, all: nSwa } };
    }
    const from = new Map<number, number>();
    for (let t = row0; t < row1; t++) from.set(batch.seq[t]!, Math.min(from.get(batch.seq[t]!) ?? Infinity, batch.pos[t]!));
    const full = attendedWindow(cells, from, 0, 256, streams);
    const windowed = this.hp.nSwa === 0 && swaCells === cells ? full : attendedWindow(swaCells, from, this.hp.nSwa, 256, streams);
    this.#counters.skippedCells += full.all - full.n + (this.hp.nSwa > 0 ? windowed.all - windowed.n : 0);
    return { full, windowed };
  }

  /**
   * With one KV stream per sequence, each attention group's window (#windows over its rows and
   * streams, one view for them all; a group of one token of one stream reads every used cell).
   */
  #groupWindows(batch: StageBatch, attn: readonly Attn[], swaCells: KvCells): AttnGroup[] {
    let row = 0;
    return attn.map((g) => {
      const streams = Array.from({ length: g.streams }, (_, i) => g.first + i);
      const rows = g.streams * g.per;
      const { full, windowed } = this.#windows(batch, swaCells, row, row + rows, streams);
      row += rows;
      return { ...g, nKv: full.n, kvLo: full.lo, nKvSwa: windowed.n, kvLoSwa: windowed.lo };
    });
  }

  #setMask(t: TensorPtr, cells: KvCells, nKv: number, lo: number, pos: Int32Array, seq: Int32Array, nSwa: number): void {
    const size = pos.length * nKv;
    if (this.#maskBuf.length < size) this.#maskBuf = new Uint16Array(size);
    const mask = this.#maskBuf.subarray(0, size);
    buildMask(cells, nKv, pos, seq, mask, nSwa, lo);
    setTensor(t, mask);
  }

  /**
   * The graph for a batch shape, allocated. Consecutive batches of one shape (every decode step
   * until the attended cells grow by 256) reuse the built and allocated graph, as llama.cpp does:
   * only the inputs change.
   */
  #graphFor(shape: GraphShape): StageGraph {
    const c = this.#graph;
    if (c && c.shape.nTokens === shape.nTokens && c.shape.nKv === shape.nKv && c.shape.nKvSwa === shape.nKvSwa && c.shape.kvLo === shape.kvLo
      && c.shape.kvLoSwa === shape.kvLoSwa && c.shape.nOutputs === shape.nOutputs
      && c.shape.nEmbed === shape.nEmbed && c.shape.selectOutputs === shape.selectOutputs && sameGroups(c.shape.groups, shape.groups)) {
      this.#counters.graphReuses++;
      return c.graph;
    }
    this.#dropGraph();
    const graph = buildStageGraph(this.hp, this.weights, this.cache, shape);
    try {
      this.#sched.alloc(graph.graph);
    } catch (err) {
      graph.ctx.dispose();
      throw err;
    }
    this.#graph = { shape, graph };
    return graph;
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
    const { cells } = this.cache;
    const maxSeq = cells.streams > 1 ? cells.streams : MAX_SEQ;
    for (const s of b.seq) if (!(s >= 0 && s < maxSeq)) throw new ModelError('bad_input', `seq id ${s} outside 0..${maxSeq - 1}`);
    // llama.cpp's rule: a sequence's positions continue right after what the cache holds
    const first = new Map<number, number>();
    for (let t = 0; t < n; t++) first.set(b.seq[t]!, Math.min(first.get(b.seq[t]!) ?? Infinity, b.pos[t]!));
    for (const [s, p] of first) {
      const max = cells.seqPosMax(s);
      if (max >= 0 && p !== max + 1) {
        throw new ModelError('bad_input', `sequence ${s}: the cache holds positions up to ${max}, so the batch must start at ${max + 1}, not ${p}`);
      }
    }
    const embed = b.embed?.length ?? 0;
    if (b.outputs) {
      if (b.outputs.length === 0 && embed === 0) throw new ModelError('bad_input', 'a batch must output at least one token');
      for (const o of b.outputs) if (o < 0 || o >= n) throw new ModelError('bad_input', `output index ${o} outside the batch of ${n}`);
    }
    if (b.embed) for (const o of b.embed) if (o < 0 || o >= n) throw new ModelError('bad_input', `embedding index ${o} outside the batch of ${n}`);
  }

  /** Bytes of memory per use and buffer type: weights, KV cache, compute scratch. */
  memory(): StageMemory {
    return {
      weights: this.weights.memoryByBufferType(),
      kv: this.cache.memory(),
      compute: { [this.backend.deviceName]: this.#sched.bufferSize(this.backend) },
    };
  }

  /** Frees the scheduler, KV cache, weights and backend. Idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#dropGraph();
    this.#sched.dispose();
    this.cache.dispose();
    this.weights.dispose();
    this.#cpu?.dispose();
    this.backend.dispose();
  }
}
