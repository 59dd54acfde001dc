// @strata/kv-cache: the KV cache of a layer shard.
export { KvCells, MAX_SEQ, windowStart, type SlotPlan } from './kv-cells.ts';
export { attendedCells, attendedWindow, buildMask, type KvWindow } from './kv-mask.ts';
export { KvStorage, type KvStorageOptions } from './kv-storage.ts';
export { KvStateError } from './errors.ts';
export { STATE_MAGIC, STATE_VERSION, decodeState, encodeState, stateBytes, type CellSets, type DecodedState, type StateHeader } from './state-format.ts';
export { hadamardInPlace, hadamardMatrix, rotationSizes } from './rotation.ts';
