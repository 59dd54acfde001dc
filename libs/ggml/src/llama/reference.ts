// libllama running a whole GGUF: the reference that parity tests and benchmarks compare Strata
// against. Batches go straight into llama_decode, as llama.cpp's own llama-bench does.
import koffi from 'koffi';
import { DisposedError, LlamaError } from '../errors.ts';
import { LLAMA_FLASH_ATTN_TYPE, type LlamaBatch } from '../ffi/llama.ts';
import type { LlamaContextPtr, LlamaMemoryPtr, LlamaModelPtr } from '../ffi/types.ts';
import { native } from '../runtime.ts';

/** Options for {@link LlamaReference.load}. */
export interface ReferenceOptions {
  /** KV cells (default 512) */
  nCtx?: number;
  /** largest batch passed to decode (default 512) */
  nBatch?: number;
  /** sequences (default 1) */
  nSeqMax?: number;
  /** CPU threads (default 2) */
  threads?: number;
  /** ggml type of K and V (default f16 = 1) */
  typeK?: number;
  typeV?: number;
  /** one KV stream shared by all sequences (default true); false: one stream per sequence */
  kvUnified?: boolean;
  /** full-size windowed cache (libllama's default, true); false: its iSWA cache sized for the window (llama-server's default) */
  swaFull?: boolean;
  /** flash attention (default on, as Strata's graph uses it) */
  flashAttn?: boolean;
  /**
   * let libllama repack weights for the CPU (llama.cpp's default). Default: true with a native
   * build; false with the prebuilt binaries, whose AMX kernels die with SIGILL on machines that
   * advertise AMX without enabling it (libllama offers no way to skip AMX alone).
   */
  extraBufts?: boolean;
  /** compute pooled embeddings instead of logits, with this llama_pooling_type (1 mean, 2 cls, 3 last) */
  pooling?: number;
  /** layers libllama offloads to the GPU of a CUDA build (default 0: all on the CPU; 999: every one) */
  gpuLayers?: number;
}

/** One token of a reference batch. */
export interface RefToken {
  token: number;
  pos: number;
  seq: number;
  /** return this token's logits */
  logits: boolean;
}

/** A libllama model and context. dispose() is idempotent. */
export class LlamaReference {
  #model: LlamaModelPtr | null;
  #ctx: LlamaContextPtr | null;
  readonly memory: LlamaMemoryPtr;
  readonly nVocab: number;
  readonly nEmbd: number;
  readonly nBatch: number;
  readonly #batch: LlamaBatch;
  readonly #tok: Int32Array;
  readonly #pos: Int32Array;
  readonly #nSeq: Int32Array;
  /** the one seq id slot of each batch token // [nBatch] */
  readonly #seqIds: Int32Array[];
  readonly #out: Int8Array;

  private constructor(model: LlamaModelPtr, ctx: LlamaContextPtr, nBatch: number) {
    const { llama: l } = native();
    this.#model = model;
    this.#ctx = ctx;
    this.memory = l.llama_get_memory(ctx);
    this.nVocab = l.llama_vocab_n_tokens(l.llama_model_get_vocab(model));
    this.nEmbd = l.llama_model_n_embd(model);
    this.nBatch = nBatch;
    this.#batch = l.llama_batch_init(nBatch, 0, 1);
    const b = this.#batch;
    this.#tok = new Int32Array(koffi.view(b.token!, nBatch * 4));
    this.#pos = new Int32Array(koffi.view(b.pos!, nBatch * 4));
    this.#nSeq = new Int32Array(koffi.view(b.n_seq_id!, nBatch * 4));
    const seqPtrs = new BigUint64Array(koffi.view(b.seq_id!, nBatch * 8));
    this.#seqIds = Array.from(seqPtrs, (p) => new Int32Array(koffi.view(p, 4)));
    this.#out = new Int8Array(koffi.view(b.logits!, nBatch));
  }

  /** Loads a GGUF on the CPU and creates a context. */
  static load(path: string, options: ReferenceOptions = {}): LlamaReference {
    const { llama: l } = native();
    const mp = l.llama_model_default_params();
    mp.n_gpu_layers = options.gpuLayers ?? 0;
    mp.use_extra_bufts = options.extraBufts ?? native().libs.kind === 'native';
    const model = l.llama_model_load_from_file(path, mp);
    if (!model) throw new LlamaError(`libllama could not load ${path}`);
    const cp = l.llama_context_default_params();
    const nBatch = options.nBatch ?? 512;
    cp.n_ctx = options.nCtx ?? 512;
    cp.n_batch = nBatch;
    cp.n_ubatch = nBatch;
    cp.n_seq_max = options.nSeqMax ?? 1;
    cp.n_threads = options.threads ?? 2;
    cp.n_threads_batch = options.threads ?? 2;
    cp.type_k = options.typeK ?? 1;
    cp.type_v = options.typeV ?? 1;
    cp.flash_attn_type = options.flashAttn === false ? LLAMA_FLASH_ATTN_TYPE.DISABLED : LLAMA_FLASH_ATTN_TYPE.ENABLED;
    cp.kv_unified = options.kvUnified ?? true;
    cp.swa_full = options.swaFull ?? true;
    cp.no_perf = true;
    if (options.pooling !== undefined) {
      cp.embeddings = true;
      cp.pooling_type = options.pooling;
    }
    const ctx = l.llama_init_from_model(model, cp);
    if (!ctx) {
      l.llama_model_free(model);
      throw new LlamaError(`libllama could not create a context for ${path}`);
    }
    return new LlamaReference(model, ctx, nBatch);
  }

  get #c(): LlamaContextPtr {
    if (this.#ctx === null) throw new DisposedError('LlamaReference');
    return this.#ctx;
  }

  /**
   * Decodes one batch (at most nBatch tokens). Returns the logits of the tokens marked `logits`,
   * in order, each a row of nVocab.
   */
  decode(tokens: readonly RefToken[]): Float32Array[] {
    const { llama: l } = native();
    const n = tokens.length;
    if (n === 0 || n > this.nBatch) throw new LlamaError(`batch of ${n} tokens (1..${this.nBatch} allowed)`);
    const outIdx: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = tokens[i]!;
      this.#tok[i] = t.token;
      this.#pos[i] = t.pos;
      this.#nSeq[i] = 1;
      this.#seqIds[i]![0] = t.seq;
      this.#out[i] = t.logits ? 1 : 0;
      if (t.logits) outIdx.push(i);
    }
    this.#batch.n_tokens = n;
    const rc = l.llama_decode(this.#c, this.#batch);
    if (rc !== 0) throw new LlamaError(`llama_decode returned ${rc}`);
    return outIdx.map((i) => {
      const p = l.llama_get_logits_ith(this.#c, i);
      if (!p) throw new LlamaError(`no logits for batch index ${i}`);
      return new Float32Array(koffi.view(p, this.nVocab * 4).slice(0));
    });
  }

  /**
   * The pooled embedding of a sequence after its last decode, as libllama gives it (not
   * normalized) // [n_embd]; needs ReferenceOptions.pooling.
   */
  embedding(seq: number): Float32Array {
    const p = native().llama.llama_get_embeddings_seq(this.#c, seq);
    if (!p) throw new LlamaError(`no embedding for seq ${seq} (was the reference loaded with pooling?)`);
    return new Float32Array(koffi.view(p, this.nEmbd * 4).slice(0));
  }

  /** Decodes without reading logits back (benchmarks): only the last token outputs. */
  decodeTokens(tokens: ArrayLike<number>, startPos: number, seq = 0): void {
    const { llama: l } = native();
    const n = tokens.length;
    for (let i = 0; i < n; i++) {
      this.#tok[i] = tokens[i]!;
      this.#pos[i] = startPos + i;
      this.#nSeq[i] = 1;
      this.#seqIds[i]![0] = seq;
      this.#out[i] = i === n - 1 ? 1 : 0;
    }
    this.#batch.n_tokens = n;
    const rc = l.llama_decode(this.#c, this.#batch);
    if (rc !== 0) throw new LlamaError(`llama_decode returned ${rc}`);
    l.llama_synchronize(this.#c);
  }

  /** libllama's own serialized state of one sequence (llama_state_seq_get_data). */
  stateGet(seq: number): Uint8Array {
    const { llama: l } = native();
    const size = l.llama_state_seq_get_size(this.#c, seq);
    const out = new Uint8Array(size);
    const n = l.llama_state_seq_get_data(this.#c, out, size, seq);
    if (n !== size) throw new LlamaError(`llama_state_seq_get_data wrote ${n} of ${size} bytes`);
    return out;
  }

  /** Loads a sequence state that stateGet produced (llama_state_seq_set_data). */
  stateSet(data: Uint8Array, seq: number): void {
    if (native().llama.llama_state_seq_set_data(this.#c, data, data.byteLength, seq) === 0) {
      throw new LlamaError('llama_state_seq_set_data refused the state');
    }
  }

  /** Clears the KV cache. */
  clear(): void {
    native().llama.llama_memory_clear(this.memory, true);
  }

  seqRemove(seq: number, p0: number, p1: number): boolean { return native().llama.llama_memory_seq_rm(this.memory, seq, p0, p1); }
  seqCopy(src: number, dst: number, p0: number, p1: number): void { native().llama.llama_memory_seq_cp(this.memory, src, dst, p0, p1); }
  seqKeep(seq: number): void { native().llama.llama_memory_seq_keep(this.memory, seq); }
  seqAdd(seq: number, p0: number, p1: number, delta: number): void { native().llama.llama_memory_seq_add(this.memory, seq, p0, p1, delta); }
  seqDivide(seq: number, p0: number, p1: number, d: number): void { native().llama.llama_memory_seq_div(this.memory, seq, p0, p1, d); }
  seqPosMax(seq: number): number { return native().llama.llama_memory_seq_pos_max(this.memory, seq); }
  seqPosMin(seq: number): number { return native().llama.llama_memory_seq_pos_min(this.memory, seq); }

  /** Frees the context and model. Idempotent. */
  dispose(): void {
    if (this.#ctx === null) return;
    const { llama: l } = native();
    l.llama_batch_free(this.#batch);
    l.llama_free(this.#ctx);
    if (this.#model) l.llama_model_free(this.#model);
    this.#ctx = null;
    this.#model = null;
  }
}
