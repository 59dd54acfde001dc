// Tensors spread over several backend buffers (one per buffer type): a shard's weights with
// some repacked, its K/V with some layers in host memory. One context per buffer type, each
// allocated in one buffer.
import { BackendBuffer, BufferUsage, checkStatus } from './buffer.ts';
import { GgmlContext } from './context.ts';
import type { BufferTypePtr, DevicePtr, RawPtr, TensorPtr } from './ffi/types.ts';
import { native } from './runtime.ts';

/** Contexts and their buffers, by buffer type. dispose() frees them all and is idempotent. */
export class BufferSet {
  readonly #parts: { ctx: GgmlContext; buffer: BackendBuffer }[] = [];

  /**
   * Creates the tensors `make` declares in a new context and allocates them in one buffer of
   * `buft`; returns what `make` returned. On failure nothing of this part is left allocated.
   */
  add<T>(buft: BufferTypePtr, maxTensors: number, make: (ctx: GgmlContext) => T, usage: number = BufferUsage.ANY): { made: T; buffer: BackendBuffer } {
    const ctx = GgmlContext.create({ maxTensors });
    try {
      const made = make(ctx);
      const buffer = BackendBuffer.allocContext(ctx, buft, usage);
      this.#parts.push({ ctx, buffer });
      return { made, buffer };
    } catch (err) {
      ctx.dispose();
      throw err;
    }
  }

  /**
   * Creates the tensors `make` declares in a new context and places each where `addressOf` says,
   * inside `size` bytes of host memory at `base` that the set does not own (a file mapping, which
   * must outlive the set).
   */
  addMapped(dev: DevicePtr, base: RawPtr, size: number, maxTensors: number, make: (ctx: GgmlContext) => TensorPtr[], addressOf: (i: number) => RawPtr): TensorPtr[] {
    const ctx = GgmlContext.create({ maxTensors });
    let buffer: BackendBuffer | null = null;
    try {
      const tensors = make(ctx);
      const largest = tensors.reduce((m, t) => Math.max(m, native().ggml.ggml_nbytes(t)), 0);
      buffer = BackendBuffer.fromHostPtr(dev, base, size, largest, BufferUsage.WEIGHTS);
      const buf = buffer.ptr;
      tensors.forEach((t, i) => checkStatus(native().backend.ggml_backend_tensor_alloc(buf, t, addressOf(i)), 'placing a tensor in mapped memory'));
      this.#parts.push({ ctx, buffer });
      return tensors;
    } catch (err) {
      buffer?.dispose();
      ctx.dispose();
      throw err;
    }
  }

  /** Bytes of all buffers. */
  get bytes(): number {
    return this.#parts.reduce((n, p) => n + p.buffer.size, 0);
  }

  /** Bytes per buffer type ('CPU', 'CPU_REPACK', 'CUDA0', 'CUDA_Host', ...). */
  memoryByBufferType(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const p of this.#parts) out[p.buffer.typeName] = (out[p.buffer.typeName] ?? 0) + p.buffer.size;
    return out;
  }

  /** Frees every buffer and context. Idempotent. */
  dispose(): void {
    for (const p of this.#parts.splice(0)) {
      p.buffer.dispose();
      p.ctx.dispose();
    }
  }
}

/** A tensor list grouped by the buffer type each tensor goes to, in first-seen order. */
export function groupByBufferType<T>(items: T[], pick: (item: T) => BufferTypePtr): Map<BufferTypePtr, T[]> {
  const groups = new Map<BufferTypePtr, T[]>();
  for (const it of items) {
    const b = pick(it);
    const g = groups.get(b);
    if (g) g.push(it);
    else groups.set(b, [it]);
  }
  return groups;
}
