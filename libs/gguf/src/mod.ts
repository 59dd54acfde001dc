// @strata/gguf: GGUF files in TypeScript.
export { GgufError } from './errors.ts';
export {
  GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValueType, type GgufHeader, type GgufKv, type GgufTensorInfo, type GgufValue,
} from './format.ts';
export { GGML_TYPES, ggmlTypeByName, rowBytes, tensorBytes } from './ggml-types.ts';
export { GgufFile, readGgufHeader, type OpenOptions, type ReadObserver } from './reader.ts';
export { kvBool, kvF32, kvStr, kvU32, writeGguf, type TensorSpec } from './writer.ts';
