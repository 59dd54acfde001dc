// Converting f32 host data to a ggml tensor type (f16 rows, quantized blocks) with ggml's own
// kernels, for writing GGUF files.
import koffi, { type TypeObject } from 'koffi';
import { GgmlError } from './errors.ts';
import { native } from './runtime.ts';
import { GgmlType } from './types.ts';

/** Encodes `data` (rows of `nPerRow` f32) as ggml `type`; returns the tensor bytes. */
export function encodeF32(type: number, data: Float32Array, nPerRow: number): Uint8Array {
  const { ggml: g } = native();
  if (data.length % nPerRow !== 0) throw new GgmlError('bad_shape', `${data.length} values are not rows of ${nPerRow}`);
  const nRows = data.length / nPerRow;
  if (type === GgmlType.F32) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (type === GgmlType.F16) {
    const out = new Uint16Array(data.length);
    g.ggml_fp32_to_fp16_row(data, out, data.length);
    return new Uint8Array(out.buffer);
  }
  if (nPerRow % g.ggml_blck_size(type) !== 0) {
    throw new GgmlError('bad_shape', `rows of ${nPerRow} are not whole ${g.ggml_type_name(type)} blocks of ${g.ggml_blck_size(type)}`);
  }
  const out = new Uint8Array(g.ggml_row_size(type, nPerRow) * nRows);
  // The i-quants that need an importance matrix get a flat one (every column weighs the same)
  g.ggml_quantize_chunk(type, data, out, 0, nRows, nPerRow, g.ggml_quantize_requires_imatrix(type) ? new Float32Array(nPerRow).fill(1) : null);
  return out;
}

/** Decodes f16 bits to f32. */
export function f16ToF32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  native().ggml.ggml_fp16_to_fp32_row(src, out, src.length);
  return out;
}

let toFloatProto: TypeObject | null = null;

/** Decodes `n` elements of ggml `type` (f16, q8_0, q4_0, ...) to f32 with ggml's own kernels. */
export function decodeToF32(type: number, data: Uint8Array, n: number): Float32Array {
  const { ggml: g } = native();
  if (type === GgmlType.F32) return new Float32Array(data.slice().buffer, 0, n);
  if (data.byteLength < g.ggml_row_size(type, n)) throw new GgmlError('bad_shape', `${data.byteLength} bytes hold fewer than ${n} ${g.ggml_type_name(type)} values`);
  const traits = g.ggml_get_type_traits(type);
  // struct ggml_type_traits: name, blck_size, blck_size_interleave, type_size, is_quantized, to_float, ...
  const toFloat = traits ? new BigUint64Array(koffi.view(traits, 48))[5]! : 0n;
  if (!toFloat) throw new GgmlError('bad_type', `ggml cannot decode ${g.ggml_type_name(type)} to f32`);
  toFloatProto ??= koffi.proto('void ggml_to_float_t(const void * x, float * y, int64_t k)');
  const out = new Float32Array(n);
  koffi.call(toFloat, toFloatProto, data, out, n);
  return out;
}
