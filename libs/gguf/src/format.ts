// The GGUF container: value types and the parsed shapes of metadata and tensor infos.

/** GGUF magic, "GGUF" read as a little-endian u32. */
export const GGUF_MAGIC = 0x46554747;
/** Default data alignment when general.alignment is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** enum gguf_type */
export const GgufValueType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9,
  UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;
export type GgufValueType = (typeof GgufValueType)[keyof typeof GgufValueType];

/** A metadata value as it sits in the file: scalars as numbers (u64/i64 as bigint), arrays typed. */
export type GgufValue =
  | number
  | bigint
  | boolean
  | string
  | string[]
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array | Float32Array
  | BigUint64Array | BigInt64Array | Float64Array | boolean[];

/** One key/value pair, with the types needed to write it back unchanged. */
export interface GgufKv {
  key: string;
  type: GgufValueType;
  /** element type when type is ARRAY */
  arrayType?: GgufValueType;
  value: GgufValue;
}

/** One tensor's header entry. */
export interface GgufTensorInfo {
  name: string;
  /** ggml type id */
  type: number;
  /** shape, ne[0] fastest */
  ne: number[];
  /** offset from the start of the data section, bytes */
  offset: number;
  /** bytes */
  size: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  version: number;
  alignment: number;
  /** absolute file offset of the data section, bytes */
  dataOffset: number;
  /** bytes of the whole file */
  fileSize: number;
  kv: Map<string, GgufKv>;
  tensors: GgufTensorInfo[];
}
