// A ggml context in no-alloc mode: tensor metadata and graphs live here, data lives in backend
// buffers. Op methods are 1:1 with ggml.h and cost one native call each.
import koffi from 'koffi';
import { DisposedError, GgmlError } from './errors.ts';
import type { GgmlApi } from './ffi/ggml.ts';
import type { ContextPtr, GraphPtr, RawPtr, TensorPtr } from './ffi/types.ts';
import { native } from './runtime.ts';

// Byte offsets inside struct ggml_tensor (ggml.h; checked against koffi's layout in tests).
const OFF_TYPE = 0;
const OFF_BUFFER = 8;
const OFF_NE = 16; // int64_t[4]
const OFF_NB = 48; // size_t[4]
const OFF_DATA = 248;

/** Shape and placement of a tensor, read from its struct. */
export interface TensorInfo {
  type: number;
  ne: [number, number, number, number];
  nb: [number, number, number, number];
  /** host address of the data, when the buffer is in host memory; 0n otherwise */
  data: bigint;
  hasBuffer: boolean;
}

/** Reads a tensor's type, shape, strides and data pointer. */
export function tensorInfo(t: TensorPtr): TensorInfo {
  const view = new DataView(koffi.view(t, 256));
  const i64 = (off: number) => Number(view.getBigInt64(off, true));
  return {
    type: view.getInt32(OFF_TYPE, true),
    ne: [i64(OFF_NE), i64(OFF_NE + 8), i64(OFF_NE + 16), i64(OFF_NE + 24)],
    nb: [i64(OFF_NB), i64(OFF_NB + 8), i64(OFF_NB + 16), i64(OFF_NB + 24)],
    data: view.getBigUint64(OFF_DATA, true),
    hasBuffer: view.getBigUint64(OFF_BUFFER, true) !== 0n,
  };
}

/** Options for {@link GgmlContext.create}. */
export interface ContextOptions {
  /** how many tensors (and graph nodes) the context must hold */
  maxTensors: number;
  /** also reserve room for one graph of this many nodes */
  graphNodes?: number;
}

/** A no-alloc ggml context. dispose() frees it and every tensor/graph it holds; idempotent. */
export class GgmlContext {
  #ptr: ContextPtr | null;
  readonly #g: GgmlApi;

  private constructor(ptr: ContextPtr) {
    this.#ptr = ptr;
    this.#g = native().ggml;
  }

  /** Creates a context sized for `maxTensors` tensor headers and an optional graph. */
  static create(options: ContextOptions): GgmlContext {
    const { ggml: g } = native();
    let size = options.maxTensors * g.ggml_tensor_overhead();
    if (options.graphNodes) size += g.ggml_graph_overhead_custom(options.graphNodes, false);
    const ptr = g.ggml_init({ mem_size: size, mem_buffer: null, no_alloc: true });
    if (!ptr) throw new GgmlError('ggml_init', `ggml_init failed for ${size} bytes`);
    return new GgmlContext(ptr);
  }

  /** The raw handle; throws after dispose(). */
  get ptr(): ContextPtr {
    if (this.#ptr === null) throw new DisposedError('GgmlContext');
    return this.#ptr;
  }

  /** Frees the context. Idempotent. */
  dispose(): void {
    if (this.#ptr === null) return;
    this.#g.ggml_free(this.#ptr);
    this.#ptr = null;
  }

  /** A new tensor of 1 to 4 dimensions (ne0 fastest). */
  tensor(type: number, ne: readonly number[], name?: string): TensorPtr {
    const g = this.#g, c = this.ptr;
    let t: TensorPtr;
    switch (ne.length) {
      case 1: t = g.ggml_new_tensor_1d(c, type, ne[0]!); break;
      case 2: t = g.ggml_new_tensor_2d(c, type, ne[0]!, ne[1]!); break;
      case 3: t = g.ggml_new_tensor_3d(c, type, ne[0]!, ne[1]!, ne[2]!); break;
      case 4: t = g.ggml_new_tensor_4d(c, type, ne[0]!, ne[1]!, ne[2]!, ne[3]!); break;
      default: throw new GgmlError('bad_shape', `tensors have 1 to 4 dimensions, got ${ne.length}`);
    }
    if (name) g.ggml_set_name(t, name);
    return t;
  }

  /** An input tensor of the graph (its data is set before compute). */
  input(type: number, ne: readonly number[], name: string): TensorPtr {
    const t = this.tensor(type, ne, name);
    this.#g.ggml_set_input(t);
    return t;
  }

  /** Every tensor in the context, in creation order. */
  *tensors(): Generator<TensorPtr> {
    const g = this.#g, c = this.ptr;
    for (let t = g.ggml_get_first_tensor(c); t; t = g.ggml_get_next_tensor(c, t)) yield t;
  }

  add(a: TensorPtr, b: TensorPtr): TensorPtr { return this.#g.ggml_add(this.ptr, a, b); }
  mul(a: TensorPtr, b: TensorPtr): TensorPtr { return this.#g.ggml_mul(this.ptr, a, b); }
  scale(a: TensorPtr, s: number): TensorPtr { return this.#g.ggml_scale(this.ptr, a, s); }
  silu(a: TensorPtr): TensorPtr { return this.#g.ggml_silu(this.ptr, a); }
  swigluSplit(gate: TensorPtr, up: TensorPtr): TensorPtr { return this.#g.ggml_swiglu_split(this.ptr, gate, up); }
  /** SiLU of a row's first half times its second half (phi3's fused gate and up) */
  swiglu(a: TensorPtr): TensorPtr { return this.#g.ggml_swiglu(this.ptr, a); }
  /** GELU(a) · b, GELU with the tanh approximation (gemma's gated FFN) */
  gegluSplit(gate: TensorPtr, up: TensorPtr): TensorPtr { return this.#g.ggml_geglu_split(this.ptr, gate, up); }
  tanh(a: TensorPtr): TensorPtr { return this.#g.ggml_tanh(this.ptr, a); }
  rmsNorm(a: TensorPtr, eps: number): TensorPtr { return this.#g.ggml_rms_norm(this.ptr, a, eps); }
  mulMat(a: TensorPtr, b: TensorPtr): TensorPtr { return this.#g.ggml_mul_mat(this.ptr, a, b); }
  /** Per token, the mat-mul of the experts `ids` picks: as [k, m, n_expert], b [k, n_used|1, n], ids I32 [n_used, n] → [m, n_used, n] */
  mulMatId(as: TensorPtr, b: TensorPtr, ids: TensorPtr): TensorPtr { return this.#g.ggml_mul_mat_id(this.ptr, as, b, ids); }
  /** a + the rows of `b` that `ids` pick: dst[i0, i1, i2] = a[i0, i1, i2] + b[i0, ids[i1, i2]] (experts' biases) */
  addId(a: TensorPtr, b: TensorPtr, ids: TensorPtr): TensorPtr { return this.#g.ggml_add_id(this.ptr, a, b, ids); }
  /** gpt-oss's SwiGLU: gate clamped above at `limit`, up to ±`limit`, (up + 1)·gate·σ(alpha·gate) */
  swigluOai(gate: TensorPtr, up: TensorPtr, alpha: number, limit: number): TensorPtr { return this.#g.ggml_swiglu_oai(this.ptr, gate, up, alpha, limit); }
  div(a: TensorPtr, b: TensorPtr): TensorPtr { return this.#g.ggml_div(this.ptr, a, b); }
  sumRows(a: TensorPtr): TensorPtr { return this.#g.ggml_sum_rows(this.ptr, a); }
  clamp(a: TensorPtr, min: number, max: number): TensorPtr { return this.#g.ggml_clamp(this.ptr, a, min, max); }
  softMax(a: TensorPtr): TensorPtr { return this.#g.ggml_soft_max(this.ptr, a); }
  /** I32 indices of each row's `k` largest elements, largest first */
  argsortTopK(a: TensorPtr, k: number): TensorPtr { return this.#g.ggml_argsort_top_k(this.ptr, a, k); }
  cpy(a: TensorPtr, b: TensorPtr): TensorPtr { return this.#g.ggml_cpy(this.ptr, a, b); }
  /** `a` and `b` one after the other along dimension `dim` (the other dimensions equal) */
  concat(a: TensorPtr, b: TensorPtr, dim: number): TensorPtr { return this.#g.ggml_concat(this.ptr, a, b, dim); }
  cast(a: TensorPtr, type: number): TensorPtr { return this.#g.ggml_cast(this.ptr, a, type); }
  cont(a: TensorPtr): TensorPtr { return this.#g.ggml_cont(this.ptr, a); }
  reshape2d(a: TensorPtr, ne0: number, ne1: number): TensorPtr { return this.#g.ggml_reshape_2d(this.ptr, a, ne0, ne1); }
  reshape3d(a: TensorPtr, ne0: number, ne1: number, ne2: number): TensorPtr { return this.#g.ggml_reshape_3d(this.ptr, a, ne0, ne1, ne2); }
  reshape4d(a: TensorPtr, ne0: number, ne1: number, ne2: number, ne3: number): TensorPtr { return this.#g.ggml_reshape_4d(this.ptr, a, ne0, ne1, ne2, ne3); }
  view1d(a: TensorPtr, ne0: number, offset: number): TensorPtr { return this.#g.ggml_view_1d(this.ptr, a, ne0, offset); }
  view2d(a: TensorPtr, ne0: number, ne1: number, nb1: number, offset: number): TensorPtr {
    return this.#g.ggml_view_2d(this.ptr, a, ne0, ne1, nb1, offset);
  }
  view3d(a: TensorPtr, ne0: number, ne1: number, ne2: number, nb1: number, nb2: number, offset: number): TensorPtr {
    return this.#g.ggml_view_3d(this.ptr, a, ne0, ne1, ne2, nb1, nb2, offset);
  }
  view4d(a: TensorPtr, ne: readonly [number, number, number, number], nb1: number, nb2: number, nb3: number, offset: number): TensorPtr {
    return this.#g.ggml_view_4d(this.ptr, a, ne[0], ne[1], ne[2], ne[3], nb1, nb2, nb3, offset);
  }
  permute(a: TensorPtr, a0: number, a1: number, a2: number, a3: number): TensorPtr {
    return this.#g.ggml_permute(this.ptr, a, a0, a1, a2, a3);
  }
  transpose(a: TensorPtr): TensorPtr { return this.#g.ggml_transpose(this.ptr, a); }
  getRows(a: TensorPtr, rows: TensorPtr): TensorPtr { return this.#g.ggml_get_rows(this.ptr, a, rows); }
  setRows(dst: TensorPtr, src: TensorPtr, rows: TensorPtr): TensorPtr { return this.#g.ggml_set_rows(this.ptr, dst, src, rows); }
  softMaxExt(a: TensorPtr, mask: TensorPtr | null, scale: number, maxBias: number): TensorPtr {
    return this.#g.ggml_soft_max_ext(this.ptr, a, mask, scale, maxBias);
  }
  /** RoPE with YaRN parameters (ggml_rope_ext). */
  ropeExt(a: TensorPtr, pos: TensorPtr, p: RopeParams): TensorPtr {
    return this.#g.ggml_rope_ext(this.ptr, a, pos, p.factors ?? null, p.nDims, p.mode, p.nCtxOrig, p.freqBase,
      p.freqScale, p.extFactor, p.attnFactor, p.betaFast, p.betaSlow);
  }
  /** RoPE written back into `a` (re-rotating cached keys). */
  ropeExtInplace(a: TensorPtr, pos: TensorPtr, p: RopeParams): TensorPtr {
    return this.#g.ggml_rope_ext_inplace(this.ptr, a, pos, p.factors ?? null, p.nDims, p.mode, p.nCtxOrig, p.freqBase,
      p.freqScale, p.extFactor, p.attnFactor, p.betaFast, p.betaSlow);
  }
  /** `softcap` > 0: attention logits become softcap·tanh(logits / softcap) (gemma2) */
  flashAttnExt(q: TensorPtr, k: TensorPtr, v: TensorPtr, mask: TensorPtr | null, scale: number, prec: number, softcap = 0, sinks: TensorPtr | null = null): TensorPtr {
    const t = this.#g.ggml_flash_attn_ext(this.ptr, q, k, v, mask, scale, 0, softcap);
    // attention sinks (gpt-oss): one logit per head that takes part in the softmax and adds nothing
    if (sinks) this.#g.ggml_flash_attn_ext_add_sinks(t, sinks);
    this.#g.ggml_flash_attn_ext_set_prec(t, prec);
    return t;
  }
  setMulMatPrec(t: TensorPtr, prec: number): void { this.#g.ggml_mul_mat_set_prec(t, prec); }
  /** GGML_HINT_SRC0_IS_HADAMARD (1): the mat-mul's first operand is a Hadamard matrix. */
  setMulMatHint(t: TensorPtr, hint: number): void { this.#g.ggml_mul_mat_set_hint(t, hint); }
  setName(t: TensorPtr, name: string): TensorPtr { return this.#g.ggml_set_name(t, name); }
  setOutput(t: TensorPtr): void { this.#g.ggml_set_output(t); }

  /** A graph with room for `nodes` nodes. */
  graph(nodes: number): GraphPtr { return this.#g.ggml_new_graph_custom(this.ptr, nodes, false); }
  expand(g: GraphPtr, t: TensorPtr): void { this.#g.ggml_build_forward_expand(g, t); }
  nodeCount(g: GraphPtr): number { return this.#g.ggml_graph_n_nodes(g); }
}

/** RoPE parameters as ggml_rope_ext takes them. */
export interface RopeParams {
  nDims: number;
  mode: number;
  nCtxOrig: number;
  freqBase: number;
  freqScale: number;
  extFactor: number;
  attnFactor: number;
  betaFast: number;
  betaSlow: number;
  factors?: TensorPtr | null;
}

/** Copies host bytes into a tensor (any backend). */
export function setTensor(t: TensorPtr, data: ArrayBufferView, offset = 0): void {
  native().backend.ggml_backend_tensor_set(t, data, offset, data.byteLength);
}

/** Copies a tensor's bytes into host memory (any backend). */
export function getTensor(t: TensorPtr, out: ArrayBufferView, offset = 0): void {
  native().backend.ggml_backend_tensor_get(t, out, offset, out.byteLength);
}

/** A writable view of host memory at `ptr` (a host buffer's tensor data). */
export function hostView(ptr: RawPtr | bigint, bytes: number): Buffer {
  return Buffer.from(koffi.view(ptr, bytes));
}
