// ggml.h, 1:1: context, tensor and graph functions and the operators the llama graph uses.
import type { LibraryHandle } from 'koffi';
import type { Bytes, ContextPtr, GraphPtr, RawPtr, TensorPtr } from './types.ts';

/** struct ggml_init_params, passed by value. */
export interface GgmlInitParams {
  mem_size: number; // bytes
  mem_buffer: bigint | null;
  no_alloc: boolean;
}

/** Binds ggml.h from libggml-base. */
export function bindGgml(lib: LibraryHandle) {
  const f = (proto: string) => lib.func(proto);
  return {
    ggml_init: f('ggml_context * ggml_init(ggml_init_params params)') as (p: GgmlInitParams) => ContextPtr | null,
    ggml_free: f('void ggml_free(ggml_context * ctx)') as (ctx: ContextPtr) => void,
    ggml_tensor_overhead: f('size_t ggml_tensor_overhead(void)') as () => number,
    ggml_graph_overhead_custom: f('size_t ggml_graph_overhead_custom(size_t size, bool grads)') as (size: number, grads: boolean) => number,
    ggml_type_size: f('size_t ggml_type_size(int type)') as (type: number) => number,
    ggml_blck_size: f('int64_t ggml_blck_size(int type)') as (type: number) => number,
    ggml_row_size: f('size_t ggml_row_size(int type, int64_t ne)') as (type: number, ne: number) => number,
    ggml_type_name: f('const char * ggml_type_name(int type)') as (type: number) => string,
    ggml_nbytes: f('size_t ggml_nbytes(const ggml_tensor * tensor)') as (t: TensorPtr) => number,
    ggml_nelements: f('int64_t ggml_nelements(const ggml_tensor * tensor)') as (t: TensorPtr) => number,
    ggml_new_tensor_1d: f('ggml_tensor * ggml_new_tensor_1d(ggml_context * ctx, int type, int64_t ne0)') as (ctx: ContextPtr, type: number, ne0: number) => TensorPtr,
    ggml_new_tensor_2d: f('ggml_tensor * ggml_new_tensor_2d(ggml_context * ctx, int type, int64_t ne0, int64_t ne1)') as (ctx: ContextPtr, type: number, ne0: number, ne1: number) => TensorPtr,
    ggml_new_tensor_3d: f('ggml_tensor * ggml_new_tensor_3d(ggml_context * ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2)') as (ctx: ContextPtr, type: number, ne0: number, ne1: number, ne2: number) => TensorPtr,
    ggml_new_tensor_4d: f('ggml_tensor * ggml_new_tensor_4d(ggml_context * ctx, int type, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3)') as (ctx: ContextPtr, type: number, ne0: number, ne1: number, ne2: number, ne3: number) => TensorPtr,
    ggml_get_first_tensor: f('ggml_tensor * ggml_get_first_tensor(const ggml_context * ctx)') as (ctx: ContextPtr) => TensorPtr | null,
    ggml_get_next_tensor: f('ggml_tensor * ggml_get_next_tensor(const ggml_context * ctx, ggml_tensor * tensor)') as (ctx: ContextPtr, t: TensorPtr) => TensorPtr | null,
    ggml_set_name: f('ggml_tensor * ggml_set_name(ggml_tensor * tensor, const char * name)') as (t: TensorPtr, name: string) => TensorPtr,
    ggml_get_name: f('const char * ggml_get_name(const ggml_tensor * tensor)') as (t: TensorPtr) => string,
    ggml_set_input: f('void ggml_set_input(ggml_tensor * tensor)') as (t: TensorPtr) => void,
    ggml_set_output: f('void ggml_set_output(ggml_tensor * tensor)') as (t: TensorPtr) => void,
    ggml_add: f('ggml_tensor * ggml_add(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_mul: f('ggml_tensor * ggml_mul(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_scale: f('ggml_tensor * ggml_scale(ggml_context * ctx, ggml_tensor * a, float s)') as (ctx: ContextPtr, a: TensorPtr, s: number) => TensorPtr,
    ggml_silu: f('ggml_tensor * ggml_silu(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_swiglu: f('ggml_tensor * ggml_swiglu(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_swiglu_split: f('ggml_tensor * ggml_swiglu_split(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_geglu_split: f('ggml_tensor * ggml_geglu_split(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_tanh: f('ggml_tensor * ggml_tanh(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_rms_norm: f('ggml_tensor * ggml_rms_norm(ggml_context * ctx, ggml_tensor * a, float eps)') as (ctx: ContextPtr, a: TensorPtr, eps: number) => TensorPtr,
    ggml_mul_mat: f('ggml_tensor * ggml_mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_mul_mat_id: f('ggml_tensor * ggml_mul_mat_id(ggml_context * ctx, ggml_tensor * as, ggml_tensor * b, ggml_tensor * ids)') as (ctx: ContextPtr, as: TensorPtr, b: TensorPtr, ids: TensorPtr) => TensorPtr,
    ggml_div: f('ggml_tensor * ggml_div(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_sum_rows: f('ggml_tensor * ggml_sum_rows(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_clamp: f('ggml_tensor * ggml_clamp(ggml_context * ctx, ggml_tensor * a, float min, float max)') as (ctx: ContextPtr, a: TensorPtr, min: number, max: number) => TensorPtr,
    ggml_soft_max: f('ggml_tensor * ggml_soft_max(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_argsort_top_k: f('ggml_tensor * ggml_argsort_top_k(ggml_context * ctx, ggml_tensor * a, int k)') as (ctx: ContextPtr, a: TensorPtr, k: number) => TensorPtr,
    ggml_cpy: f('ggml_tensor * ggml_cpy(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_concat: f('ggml_tensor * ggml_concat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, int dim)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr, dim: number) => TensorPtr,
    ggml_cast: f('ggml_tensor * ggml_cast(ggml_context * ctx, ggml_tensor * a, int type)') as (ctx: ContextPtr, a: TensorPtr, type: number) => TensorPtr,
    ggml_cont: f('ggml_tensor * ggml_cont(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_reshape_2d: f('ggml_tensor * ggml_reshape_2d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number) => TensorPtr,
    ggml_reshape_3d: f('ggml_tensor * ggml_reshape_3d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1, int64_t ne2)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number, ne2: number) => TensorPtr,
    ggml_reshape_4d: f('ggml_tensor * ggml_reshape_4d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number, ne2: number, ne3: number) => TensorPtr,
    ggml_view_1d: f('ggml_tensor * ggml_view_1d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, size_t offset)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, offset: number) => TensorPtr,
    ggml_view_2d: f('ggml_tensor * ggml_view_2d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1, size_t nb1, size_t offset)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number, nb1: number, offset: number) => TensorPtr,
    ggml_view_3d: f('ggml_tensor * ggml_view_3d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1, int64_t ne2, size_t nb1, size_t nb2, size_t offset)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number, ne2: number, nb1: number, nb2: number, offset: number) => TensorPtr,
    ggml_view_4d: f('ggml_tensor * ggml_view_4d(ggml_context * ctx, ggml_tensor * a, int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3, size_t nb1, size_t nb2, size_t nb3, size_t offset)') as (ctx: ContextPtr, a: TensorPtr, ne0: number, ne1: number, ne2: number, ne3: number, nb1: number, nb2: number, nb3: number, offset: number) => TensorPtr,
    ggml_permute: f('ggml_tensor * ggml_permute(ggml_context * ctx, ggml_tensor * a, int axis0, int axis1, int axis2, int axis3)') as (ctx: ContextPtr, a: TensorPtr, a0: number, a1: number, a2: number, a3: number) => TensorPtr,
    ggml_transpose: f('ggml_tensor * ggml_transpose(ggml_context * ctx, ggml_tensor * a)') as (ctx: ContextPtr, a: TensorPtr) => TensorPtr,
    ggml_get_rows: f('ggml_tensor * ggml_get_rows(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr) => TensorPtr,
    ggml_set_rows: f('ggml_tensor * ggml_set_rows(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * c)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr, c: TensorPtr) => TensorPtr,
    ggml_soft_max_ext: f('ggml_tensor * ggml_soft_max_ext(ggml_context * ctx, ggml_tensor * a, ggml_tensor * mask, float scale, float max_bias)') as (ctx: ContextPtr, a: TensorPtr, mask: TensorPtr | null, scale: number, maxBias: number) => TensorPtr,
    ggml_rope_ext: f('ggml_tensor * ggml_rope_ext(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)') as (ctx: ContextPtr, a: TensorPtr, pos: TensorPtr, factors: TensorPtr | null, nDims: number, mode: number, nCtxOrig: number, freqBase: number, freqScale: number, extFactor: number, attnFactor: number, betaFast: number, betaSlow: number) => TensorPtr,
    ggml_rope_ext_inplace: f('ggml_tensor * ggml_rope_ext_inplace(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * c, int n_dims, int mode, int n_ctx_orig, float freq_base, float freq_scale, float ext_factor, float attn_factor, float beta_fast, float beta_slow)') as (ctx: ContextPtr, a: TensorPtr, pos: TensorPtr, factors: TensorPtr | null, nDims: number, mode: number, nCtxOrig: number, freqBase: number, freqScale: number, extFactor: number, attnFactor: number, betaFast: number, betaSlow: number) => TensorPtr,
    ggml_flash_attn_ext: f('ggml_tensor * ggml_flash_attn_ext(ggml_context * ctx, ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask, float scale, float max_bias, float logit_softcap)') as (ctx: ContextPtr, q: TensorPtr, k: TensorPtr, v: TensorPtr, mask: TensorPtr | null, scale: number, maxBias: number, softcap: number) => TensorPtr,
    ggml_flash_attn_ext_set_prec: f('void ggml_flash_attn_ext_set_prec(ggml_tensor * a, int prec)') as (t: TensorPtr, prec: number) => void,
    ggml_flash_attn_ext_add_sinks: f('void ggml_flash_attn_ext_add_sinks(ggml_tensor * a, ggml_tensor * sinks)') as (t: TensorPtr, sinks: TensorPtr) => void,
    ggml_add_id: f('ggml_tensor * ggml_add_id(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, ggml_tensor * ids)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr, ids: TensorPtr) => TensorPtr,
    ggml_swiglu_oai: f('ggml_tensor * ggml_swiglu_oai(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b, float alpha, float limit)') as (ctx: ContextPtr, a: TensorPtr, b: TensorPtr, alpha: number, limit: number) => TensorPtr,
    ggml_mul_mat_set_hint: f('void ggml_mul_mat_set_hint(ggml_tensor * a, int hint)') as (t: TensorPtr, hint: number) => void,
    ggml_mul_mat_set_prec: f('void ggml_mul_mat_set_prec(ggml_tensor * a, int prec)') as (t: TensorPtr, prec: number) => void,
    ggml_new_graph_custom: f('ggml_cgraph * ggml_new_graph_custom(ggml_context * ctx, size_t size, bool grads)') as (ctx: ContextPtr, size: number, grads: boolean) => GraphPtr,
    ggml_build_forward_expand: f('void ggml_build_forward_expand(ggml_cgraph * cgraph, ggml_tensor * tensor)') as (g: GraphPtr, t: TensorPtr) => void,
    ggml_graph_n_nodes: f('int ggml_graph_n_nodes(ggml_cgraph * cgraph)') as (g: GraphPtr) => number,
    ggml_fp32_to_fp16_row: f('void ggml_fp32_to_fp16_row(const float * x, uint16_t * y, int64_t n)') as (x: Float32Array, y: Uint16Array, n: number) => void,
    ggml_fp16_to_fp32_row: f('void ggml_fp16_to_fp32_row(const uint16_t * x, float * y, int64_t n)') as (x: Uint16Array, y: Float32Array, n: number) => void,
    ggml_quantize_requires_imatrix: f('bool ggml_quantize_requires_imatrix(int type)') as (type: number) => boolean,
    ggml_quantize_chunk: f('size_t ggml_quantize_chunk(int type, const float * src, void * dst, int64_t start, int64_t nrows, int64_t n_per_row, const float * imatrix)') as (type: number, src: Float32Array, dst: Bytes, start: number, nrows: number, nPerRow: number, imatrix: Float32Array | null) => number,
    ggml_get_type_traits: f('const void * ggml_get_type_traits(int type)') as (type: number) => RawPtr | null,
    ggml_log_set: f('void ggml_log_set(ggml_log_callback * log_callback, void * user_data)') as (cb: unknown, user: null) => void,
  };
}

/** The bound ggml.h functions. */
export type GgmlApi = ReturnType<typeof bindGgml>;
