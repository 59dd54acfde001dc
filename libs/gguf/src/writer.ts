// Writes GGUF v3 files: metadata, tensor infos, then tensor data produced one tensor at a time
// (so a model larger than memory can be written).
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValueType, type GgufKv, type GgufValue } from './format.ts';
import { tensorBytes } from './ggml-types.ts';

/** A tensor to write: its header entry; data comes from the producer. */
export interface TensorSpec {
  name: string;
  type: number;
  ne: number[];
}

class ByteSink {
  chunks: Buffer[] = [];
  length = 0;
  push(b: Buffer): void { this.chunks.push(b); this.length += b.length; }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  u64(v: number | bigint): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  str(s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
}

function writeScalar(s: ByteSink, type: GgufValueType, v: GgufValue): void {
  const b = Buffer.alloc(8);
  switch (type) {
    case GgufValueType.UINT8: b.writeUInt8(Number(v)); s.push(b.subarray(0, 1)); return;
    case GgufValueType.INT8: b.writeInt8(Number(v)); s.push(b.subarray(0, 1)); return;
    case GgufValueType.UINT16: b.writeUInt16LE(Number(v)); s.push(b.subarray(0, 2)); return;
    case GgufValueType.INT16: b.writeInt16LE(Number(v)); s.push(b.subarray(0, 2)); return;
    case GgufValueType.UINT32: b.writeUInt32LE(Number(v)); s.push(b.subarray(0, 4)); return;
    case GgufValueType.INT32: b.writeInt32LE(Number(v)); s.push(b.subarray(0, 4)); return;
    case GgufValueType.FLOAT32: b.writeFloatLE(Number(v)); s.push(b.subarray(0, 4)); return;
    case GgufValueType.BOOL: b.writeUInt8(v ? 1 : 0); s.push(b.subarray(0, 1)); return;
    case GgufValueType.STRING: s.str(String(v)); return;
    case GgufValueType.UINT64: b.writeBigUInt64LE(BigInt(v as number | bigint)); s.push(b); return;
    case GgufValueType.INT64: b.writeBigInt64LE(BigInt(v as number | bigint)); s.push(b); return;
    case GgufValueType.FLOAT64: b.writeDoubleLE(Number(v)); s.push(b); return;
    default: throw new RangeError(`cannot write metadata value type ${type}`);
  }
}

function writeKv(s: ByteSink, kv: GgufKv): void {
  s.str(kv.key);
  s.u32(kv.type);
  if (kv.type !== GgufValueType.ARRAY) return writeScalar(s, kv.type, kv.value);
  const at = kv.arrayType;
  if (at === undefined) throw new RangeError(`array ${kv.key} has no element type`);
  const items = kv.value as ArrayLike<unknown>;
  s.u32(at);
  s.u64(items.length);
  if (ArrayBuffer.isView(items) && at !== GgufValueType.STRING && at !== GgufValueType.BOOL) {
    const view = items as ArrayBufferView;
    s.push(Buffer.from(view.buffer, view.byteOffset, view.byteLength));
    return;
  }
  for (let i = 0; i < items.length; i++) writeScalar(s, at, items[i] as GgufValue);
}

/** Shorthands for common metadata entries. */
export const kvU32 = (key: string, value: number): GgufKv => ({ key, type: GgufValueType.UINT32, value });
export const kvF32 = (key: string, value: number): GgufKv => ({ key, type: GgufValueType.FLOAT32, value });
export const kvStr = (key: string, value: string): GgufKv => ({ key, type: GgufValueType.STRING, value });
export const kvBool = (key: string, value: boolean): GgufKv => ({ key, type: GgufValueType.BOOL, value });

/**
 * Writes a GGUF file atomically (to a temporary name, then renamed). `produce` returns each
 * tensor's bytes in order; their length must equal the tensor's size.
 */
export function writeGguf(path: string, kv: GgufKv[], tensors: TensorSpec[],
  produce: (spec: TensorSpec, index: number) => Uint8Array): void {
  const alignKv = kv.find((k) => k.key === 'general.alignment');
  const alignment = alignKv ? Number(alignKv.value) : GGUF_DEFAULT_ALIGNMENT;
  const head = new ByteSink();
  head.u32(GGUF_MAGIC);
  head.u32(3);
  head.u64(tensors.length);
  head.u64(kv.length);
  for (const e of kv) writeKv(head, e);
  const sizes = tensors.map((t) => tensorBytes(t.type, t.ne));
  let offset = 0;
  tensors.forEach((t, i) => {
    head.str(t.name);
    head.u32(t.ne.length);
    for (const d of t.ne) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offset += Math.ceil(sizes[i]! / alignment) * alignment;
  });
  const pad = (n: number) => Buffer.alloc((alignment - (n % alignment)) % alignment);
  head.push(pad(head.length));
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    for (const c of head.chunks) writeSync(fd, c);
    tensors.forEach((t, i) => {
      const data = produce(t, i);
      if (data.byteLength !== sizes[i]) throw new RangeError(`tensor ${t.name}: produced ${data.byteLength} bytes, expected ${sizes[i]}`);
      writeSync(fd, data);
      const p = pad(data.byteLength);
      if (p.length) writeSync(fd, p);
    });
    closeSync(fd);
    renameSync(tmp, path);
  } catch (err) {
    try { closeSync(fd); } catch { /* already closed */ }
    rmSync(tmp, { force: true });
    throw err;
  }
}
