// Backend buffers: the memory a context's tensors live in (weights, KV cache).
import { ComputeError, DisposedError, GgmlError } from './errors.ts';
import type { BufferPtr, BufferTypePtr, DevicePtr, RawPtr } from './ffi/types.ts';
import type { GgmlContext } from './context.ts';
import { native } from './runtime.ts';

/** enum ggml_backend_buffer_usage */
export const BufferUsage = { ANY: 0, WEIGHTS: 1, COMPUTE: 2 } as const;

/** A backend buffer holding every tensor of one context. dispose() frees it; idempotent. */
export class BackendBuffer {
  #ptr: BufferPtr | null;
  /** bytes */
  readonly size: number;
  /** buffer type name, e.g. 'CPU', 'CUDA0' */
  readonly typeName: string;
  readonly isHost: boolean;

  private constructor(ptr: BufferPtr) {
    const { backend: b } = native();
    this.#ptr = ptr;
    this.size = b.ggml_backend_buffer_get_size(ptr);
    this.typeName = b.ggml_backend_buffer_name(ptr);
    this.isHost = b.ggml_backend_buffer_is_host(ptr);
  }

  /** Allocates all tensors of `ctx` in one buffer of type `buft`. */
  static allocContext(ctx: GgmlContext, buft: BufferTypePtr, usage: number = BufferUsage.ANY): BackendBuffer {
    const { alloc, backend: b } = native();
    const ptr = alloc.ggml_backend_alloc_ctx_tensors_from_buft(ctx.ptr, buft);
    if (!ptr) {
      const need = alloc.ggml_backend_alloc_ctx_tensors_from_buft_size(ctx.ptr, buft);
      throw new GgmlError('out_of_memory', `cannot allocate ${need} bytes in ${b.ggml_backend_buft_name(buft)}`);
    }
    b.ggml_backend_buffer_set_usage(ptr, usage);
    return new BackendBuffer(ptr);
  }

  /**
   * A buffer over host memory it does not own (a file mapping): `size` bytes at `ptr`, for
   * tensors of at most `maxTensorSize` bytes placed with {@link placeTensor}.
   */
  static fromHostPtr(dev: DevicePtr, ptr: RawPtr, size: number, maxTensorSize: number, usage: number = BufferUsage.ANY): BackendBuffer {
    const { backend: b } = native();
    const buf = b.ggml_backend_dev_buffer_from_host_ptr(dev, ptr, size, maxTensorSize);
    if (!buf) throw new GgmlError('out_of_memory', `cannot make a buffer over ${size} bytes of host memory`);
    b.ggml_backend_buffer_set_usage(buf, usage);
    return new BackendBuffer(buf);
  }

  /** The raw handle; throws after dispose(). */
  get ptr(): BufferPtr {
    if (this.#ptr === null) throw new DisposedError('BackendBuffer');
    return this.#ptr;
  }

  /** Fills the whole buffer with one byte value. */
  clear(value = 0): void {
    native().backend.ggml_backend_buffer_clear(this.ptr, value);
  }

  /** Frees the buffer. Idempotent. */
  dispose(): void {
    if (this.#ptr === null) return;
    native().backend.ggml_backend_buffer_free(this.#ptr);
    this.#ptr = null;
  }
}

/** Throws a ComputeError unless a ggml status is GGML_STATUS_SUCCESS (0). */
export function checkStatus(status: number, what: string): void {
  if (status !== 0) throw new ComputeError(what, status);
}
