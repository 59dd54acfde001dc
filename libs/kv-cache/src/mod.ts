// @strata/kv-cache: the KV cache of a layer shard.
export { KvCells, MAX_SEQ, type SlotPlan } from './kv-cells.ts';
export { attendedCells, buildMask } from './kv-mask.ts';
export { KvStorage, type KvStorageOptions } from './kv-storage.ts';
