// ggml-alloc.h, 1:1: allocating a context's tensors in one backend buffer.
import type { LibraryHandle } from 'koffi';
import type { BufferPtr, BufferTypePtr, ContextPtr } from './types.ts';

/** Binds ggml-alloc.h from libggml-base. */
export function bindGgmlAlloc(base: LibraryHandle) {
  const f = (proto: string) => base.func(proto);
  return {
    ggml_backend_alloc_ctx_tensors_from_buft_size: f('size_t ggml_backend_alloc_ctx_tensors_from_buft_size(ggml_context * ctx, ggml_backend_buffer_type_t buft)') as (ctx: ContextPtr, buft: BufferTypePtr) => number,
    ggml_backend_alloc_ctx_tensors_from_buft: f('ggml_backend_buffer * ggml_backend_alloc_ctx_tensors_from_buft(ggml_context * ctx, ggml_backend_buffer_type_t buft)') as (ctx: ContextPtr, buft: BufferTypePtr) => BufferPtr | null,
  };
}

/** The bound ggml-alloc.h functions. */
export type GgmlAllocApi = ReturnType<typeof bindGgmlAlloc>;
