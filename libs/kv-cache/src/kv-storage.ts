// Tensor storage of a KV cache: per layer of the shard a K and a V tensor of `size` cells, in the
// backend's memory. The bookkeeping (kv-cells) decides which cells a batch writes and reads.
import { rotationSizes } from './rotation.ts';
import { Backend, BufferSet, GgmlType, getTensor, groupByBufferType, native, setTensor, type TensorPtr } from '@strata/ggml';

/** Calls fn(firstCell, firstIndex, count) for each run of consecutive cell indices. */
function runs(cells: Int32Array, fn: (cell: number, at: number, n: number) => void): void {
  let start = 0;
  for (let j = 1; j <= cells.length; j++) {
    if (j === cells.length || cells[j] !== cells[j - 1]! + 1) {
      fn(cells[start]!, start, j - start);
      start = j;
    }
  }
}

/** Options for {@link KvStorage.create}. */
export interface KvStorageOptions {
  /** layers of the shard, as model layer ids */
  layers: number[];
  /** cells */
  size: number;
  /** elements per cell per layer: head_dim × n_head_kv */
  nEmbdKv: number;
  /** ggml type of K and V (f16 by default) */
  type?: number;
  /** values per head: quantized K/V of heads that are a multiple of 64 are Hadamard-rotated */
  headDim?: number;
  /**
   * layers whose K/V stay in host memory rather than the device's (llama.cpp's KV offload turned
   * off per layer); on a CPU device both are the same memory
   */
  hostLayers?: number[];
}

/** K and V tensors for a shard's layers, in one buffer per memory kind. dispose() is idempotent. */
export class KvStorage {
  readonly size: number;
  readonly nEmbdKv: number;
  readonly type: number;
  /** per shard layer // [n_layers] of [nEmbdKv, size] */
  readonly k: TensorPtr[];
  readonly v: TensorPtr[];
  /** bytes of one cell's row in one layer */
  readonly rowBytes: number;
  /** Hadamard rotation sizes of K and V (0: none), as llama.cpp rotates quantized caches */
  readonly rot: { k: number; v: number };
  readonly #buffers: BufferSet;

  private constructor(o: KvStorageOptions & { type: number }, buffers: BufferSet, k: TensorPtr[], v: TensorPtr[]) {
    this.size = o.size;
    this.nEmbdKv = o.nEmbdKv;
    this.type = o.type;
    this.#buffers = buffers;
    this.k = k;
    this.v = v;
    this.rowBytes = native().ggml.ggml_row_size(o.type, o.nEmbdKv);
    const quantized = o.type !== GgmlType.F16 && o.type !== GgmlType.F32;
    this.rot = o.headDim ? rotationSizes(o.headDim, quantized, quantized) : { k: 0, v: 0 };
  }

  /** Allocates zeroed K/V tensors: host layers in host memory, the rest in `backend`'s. */
  static create(backend: Backend, options: KvStorageOptions): KvStorage {
    const o = { ...options, type: options.type ?? GgmlType.F16 };
    const host = new Set(o.hostLayers ?? []);
    for (const l of host) if (!o.layers.includes(l)) throw new RangeError(`host layer ${l} is not a layer of this shard`);
    const { backend: b } = native();
    const hostBuft = b.ggml_backend_dev_host_buffer_type(backend.device) ?? b.ggml_backend_cpu_buffer_type();
    const slots = o.layers.map((_, slot) => slot);
    const groups = groupByBufferType(slots, (slot) => (host.has(o.layers[slot]!) ? hostBuft : backend.bufferType()));
    const k: TensorPtr[] = new Array(o.layers.length), v: TensorPtr[] = new Array(o.layers.length);
    const buffers = new BufferSet();
    try {
      for (const [buft, group] of groups) {
        const { buffer } = buffers.add(buft, 2 * group.length, (ctx) => {
          for (const slot of group) {
            k[slot] = ctx.tensor(o.type, [o.nEmbdKv, o.size], `cache_k_l${o.layers[slot]}`);
            v[slot] = ctx.tensor(o.type, [o.nEmbdKv, o.size], `cache_v_l${o.layers[slot]}`);
          }
        });
        buffer.clear(0);
      }
    } catch (err) {
      buffers.dispose();
      throw err;
    }
    return new KvStorage(o, buffers, k, v);
  }

  /** Copies the K and V rows of `cells` in layer slot `slot` into `k` and `v` (rows in cell order). */
  readRows(slot: number, cells: Int32Array, k: Uint8Array, v: Uint8Array): void {
    const rb = this.rowBytes;
    runs(cells, (cell, at, n) => {
      getTensor(this.k[slot]!, k.subarray(at * rb, (at + n) * rb), cell * rb);
      getTensor(this.v[slot]!, v.subarray(at * rb, (at + n) * rb), cell * rb);
    });
  }

  /** Writes K and V rows (in the order of `cells`) into those cells of layer slot `slot`. */
  writeRows(slot: number, cells: Int32Array, k: Uint8Array, v: Uint8Array): void {
    const rb = this.rowBytes;
    runs(cells, (cell, at, n) => {
      setTensor(this.k[slot]!, k.subarray(at * rb, (at + n) * rb), cell * rb);
      setTensor(this.v[slot]!, v.subarray(at * rb, (at + n) * rb), cell * rb);
    });
  }

  /** Copies the K/V rows of cells `from[i]` onto cells `to[i]` in every layer (all read first). */
  moveRows(from: Int32Array, to: Int32Array): void {
    const rb = this.rowBytes, k = new Uint8Array(from.length * rb), v = new Uint8Array(from.length * rb);
    for (let slot = 0; slot < this.k.length; slot++) {
      this.readRows(slot, from, k, v);
      this.writeRows(slot, to, k, v);
    }
  }

  /** Bytes of K and V memory. */
  get bytes(): number {
    return this.#buffers.bytes;
  }

  /** Bytes per buffer type ('CPU', 'CUDA0', 'CUDA_Host', ...). */
  memoryByBufferType(): Record<string, number> {
    return this.#buffers.memoryByBufferType();
  }

  /** Frees the storage. Idempotent. */
  dispose(): void {
    this.#buffers.dispose();
  }
}
