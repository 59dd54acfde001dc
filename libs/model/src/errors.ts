// Errors of the model layer, each naming what is wrong (a tensor, a layer, a split).

/** A model file or a request on it is not what Strata can run. */
export class ModelError extends Error {
  /** unknown_architecture, missing_metadata, missing_tensor, bad_tensor_shape, bad_split, bad_input */
  readonly code: string;
  readonly tensor?: string;
  constructor(code: string, message: string, fields: { tensor?: string } = {}) {
    super(message);
    this.name = 'ModelError';
    this.code = code;
    if (fields.tensor !== undefined) this.tensor = fields.tensor;
  }
}

/** The KV cache has no room for a batch (an expected failure the caller handles). */
export class KvCacheFullError extends Error {
  readonly needed: number;
  readonly free: number;
  constructor(needed: number, free: number) {
    super(`KV cache full: batch needs ${needed} cells, ${free} free`);
    this.name = 'KvCacheFullError';
    this.needed = needed;
    this.free = free;
  }
}
