// Tensor storage of a KV cache: per layer of the shard a K and a V tensor of `size` cells, in the
// backend's memory. The bookkeeping (kv-cells) decides which cells a batch writes and reads.
import { Backend, BackendBuffer, GgmlContext, GgmlType, getTensor, native, setTensor, type TensorPtr } from '@strata/ggml';

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
}

/** K and V tensors for a shard's layers. dispose() is idempotent. */
export class KvStorage {
  readonly size: number;
  readonly nEmbdKv: number;
  readonly type: number;
  /** per shard layer // [n_layers] of [nEmbdKv, size] */
  readonly k: TensorPtr[];
  readonly v: TensorPtr[];
  /** bytes of one cell's row in one layer */
  readonly rowBytes: number;
  readonly #ctx: GgmlContext;
  readonly #buffer: BackendBuffer;

  private constructor(o: Required<KvStorageOptions>, ctx: GgmlContext, buffer: BackendBuffer, k: TensorPtr[], v: TensorPtr[]) {
    this.size = o.size;
    this.nEmbdKv = o.nEmbdKv;
    this.type = o.type;
    this.#ctx = ctx;
    this.#buffer = buffer;
    this.k = k;
    this.v = v;
    this.rowBytes = native().ggml.ggml_row_size(o.type, o.nEmbdKv);
  }

  /** Allocates zeroed K/V tensors in `backend`'s memory. */
  static create(backend: Backend, options: KvStorageOptions): KvStorage {
    const o = { type: GgmlType.F16 as number, ...options };
    const ctx = GgmlContext.create({ maxTensors: 2 * o.layers.length });
    const k: TensorPtr[] = [], v: TensorPtr[] = [];
    for (const l of o.layers) {
      k.push(ctx.tensor(o.type, [o.nEmbdKv, o.size], `cache_k_l${l}`));
      v.push(ctx.tensor(o.type, [o.nEmbdKv, o.size], `cache_v_l${l}`));
    }
    let buffer: BackendBuffer;
    try {
      buffer = BackendBuffer.allocContext(ctx, backend.bufferType());
    } catch (err) {
      ctx.dispose();
      throw err;
    }
    buffer.clear(0);
    return new KvStorage(o, ctx, buffer, k, v);
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

  /** Bytes of K and V memory. */
  get bytes(): number {
    return this.#buffer.size;
  }

  /** Name of the buffer type holding the cache ('CPU', 'CUDA0', ...). */
  get bufferType(): string {
    return this.#buffer.typeName;
  }

  /** Frees the storage. Idempotent. */
  dispose(): void {
    this.#buffer.dispose();
    this.#ctx.dispose();
  }
}
