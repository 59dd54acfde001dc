// Reads a GGUF header (metadata and tensor infos) and exactly the tensor bytes asked for.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { GgufError } from './errors.ts';
import { GGML_TYPES, tensorBytes } from './ggml-types.ts';
import {
  GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufValueType, type GgufHeader, type GgufKv, type GgufTensorInfo, type GgufValue,
} from './format.ts';

const MAX_COUNT = 1 << 24; // sanity bound on counts in a header
const MAX_STRING = 1 << 26; // bytes

/** Called with each byte range read from the file (for accounting and tests). */
export type ReadObserver = (offset: number, length: number) => void;

/** Sequential reader over a file descriptor that refills a window as parsing advances. */
class Cursor {
  #buf = Buffer.alloc(0);
  #bufStart = 0; // file offset of #buf[0]
  pos = 0; // file offset
  constructor(private readonly fd: number, private readonly fileSize: number, private readonly path: string,
    private readonly observe?: ReadObserver) {}

  #need(n: number): number {
    if (this.pos + n > this.fileSize) {
      throw new GgufError('truncated', this.path, `header runs past the end of the file (needs byte ${this.pos + n}, file has ${this.fileSize})`);
    }
    const rel = this.pos - this.#bufStart;
    if (rel >= 0 && rel + n <= this.#buf.length) return rel;
    const size = Math.min(Math.max(n, 1 << 20), this.fileSize - this.pos);
    const buf = Buffer.allocUnsafe(size);
    const got = readSync(this.fd, buf, 0, size, this.pos);
    this.observe?.(this.pos, got);
    if (got < n) throw new GgufError('truncated', this.path, `short read at byte ${this.pos}`);
    this.#buf = buf;
    this.#bufStart = this.pos;
    return 0;
  }
  u8(): number { const r = this.#need(1); this.pos += 1; return this.#buf.readUInt8(r); }
  i8(): number { const r = this.#need(1); this.pos += 1; return this.#buf.readInt8(r); }
  u16(): number { const r = this.#need(2); this.pos += 2; return this.#buf.readUInt16LE(r); }
  i16(): number { const r = this.#need(2); this.pos += 2; return this.#buf.readInt16LE(r); }
  u32(): number { const r = this.#need(4); this.pos += 4; return this.#buf.readUInt32LE(r); }
  i32(): number { const r = this.#need(4); this.pos += 4; return this.#buf.readInt32LE(r); }
  f32(): number { const r = this.#need(4); this.pos += 4; return this.#buf.readFloatLE(r); }
  f64(): number { const r = this.#need(8); this.pos += 8; return this.#buf.readDoubleLE(r); }
  u64(): bigint { const r = this.#need(8); this.pos += 8; return this.#buf.readBigUInt64LE(r); }
  i64(): bigint { const r = this.#need(8); this.pos += 8; return this.#buf.readBigInt64LE(r); }
  /** a u64 that must fit a JS number and stay under `max` */
  count(what: string, max = MAX_COUNT): number {
    const v = this.u64();
    if (v > BigInt(max)) throw new GgufError('malformed', this.path, `${what} ${v} is implausibly large`);
    return Number(v);
  }
  str(): string {
    const n = this.count('string length', MAX_STRING);
    const r = this.#need(n);
    this.pos += n;
    return this.#buf.toString('utf8', r, r + n);
  }
  bytes(n: number): Buffer {
    const r = this.#need(n);
    this.pos += n;
    return this.#buf.subarray(r, r + n);
  }
}

const SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

function readScalar(c: Cursor, type: number, path: string): GgufValue {
  switch (type) {
    case GgufValueType.UINT8: return c.u8();
    case GgufValueType.INT8: return c.i8();
    case GgufValueType.UINT16: return c.u16();
    case GgufValueType.INT16: return c.i16();
    case GgufValueType.UINT32: return c.u32();
    case GgufValueType.INT32: return c.i32();
    case GgufValueType.FLOAT32: return c.f32();
    case GgufValueType.BOOL: return c.u8() !== 0;
    case GgufValueType.STRING: return c.str();
    case GgufValueType.UINT64: return c.u64();
    case GgufValueType.INT64: return c.i64();
    case GgufValueType.FLOAT64: return c.f64();
    default: throw new GgufError('malformed', path, `unknown metadata value type ${type}`);
  }
}

function readArray(c: Cursor, type: number, n: number, path: string): GgufValue {
  if (type === GgufValueType.STRING) {
    const out: string[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = c.str();
    return out;
  }
  if (type === GgufValueType.BOOL) {
    const out: boolean[] = new Array(n);
    for (let i = 0; i < n; i++) out[i] = c.u8() !== 0;
    return out;
  }
  const size = SCALAR_SIZE[type];
  if (size === undefined) throw new GgufError('malformed', path, `unsupported array element type ${type}`);
  const raw = c.bytes(n * size);
  const copy = new Uint8Array(raw).buffer; // aligned copy
  switch (type) {
    case GgufValueType.UINT8: return new Uint8Array(copy);
    case GgufValueType.INT8: return new Int8Array(copy);
    case GgufValueType.UINT16: return new Uint16Array(copy);
    case GgufValueType.INT16: return new Int16Array(copy);
    case GgufValueType.UINT32: return new Uint32Array(copy);
    case GgufValueType.INT32: return new Int32Array(copy);
    case GgufValueType.FLOAT32: return new Float32Array(copy);
    case GgufValueType.UINT64: return new BigUint64Array(copy);
    case GgufValueType.INT64: return new BigInt64Array(copy);
    default: return new Float64Array(copy);
  }
}

/** Options for {@link GgufFile.open}. */
export interface OpenOptions {
  /** sees every byte range read */
  observe?: ReadObserver;
}

/** An open GGUF file: its parsed header, and ranged reads of tensor data. close() is idempotent. */
export class GgufFile {
  readonly path: string;
  readonly header: GgufHeader;
  #fd: number | null;
  readonly #observe: ReadObserver | undefined;
  readonly #byName: Map<string, GgufTensorInfo>;

  private constructor(path: string, fd: number, header: GgufHeader, observe?: ReadObserver) {
    this.path = path;
    this.#fd = fd;
    this.header = header;
    this.#observe = observe;
    this.#byName = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /** Opens and parses a GGUF file; throws GgufError naming what is wrong. */
  static open(path: string, options: OpenOptions = {}): GgufFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new GgufError(code === 'ENOENT' ? 'not_found' : 'io', path, code === 'ENOENT' ? 'no such file' : (err as Error).message);
    }
    try {
      const header = parseHeader(fd, path, options.observe);
      return new GgufFile(path, fd, header, options.observe);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** A metadata entry, or undefined. */
  kv(key: string): GgufKv | undefined {
    return this.header.kv.get(key);
  }

  /** A tensor's info, or undefined. */
  tensor(name: string): GgufTensorInfo | undefined {
    return this.#byName.get(name);
  }

  /** Absolute file offset of a tensor's first byte. */
  tensorFileOffset(info: GgufTensorInfo): number {
    return this.header.dataOffset + info.offset;
  }

  /** Reads `length` bytes of a tensor starting at byte `start` of its data into `into`. */
  readTensorBytes(info: GgufTensorInfo, into: Uint8Array, start = 0, length = into.byteLength): void {
    if (this.#fd === null) throw new GgufError('closed', this.path, 'file is closed');
    if (start < 0 || start + length > info.size) {
      throw new RangeError(`bytes [${start}, ${start + length}) outside tensor ${info.name} of ${info.size} bytes`);
    }
    const pos = this.tensorFileOffset(info) + start;
    let done = 0;
    while (done < length) {
      const n = readSync(this.#fd, into, done, Math.min(length - done, 1 << 30), pos + done);
      if (n <= 0) throw new GgufError('truncated', this.path, `tensor ${info.name} ends past the end of the file`);
      done += n;
    }
    this.#observe?.(pos, length);
  }

  /** Reads a whole tensor into a new buffer. */
  readTensor(info: GgufTensorInfo): Uint8Array {
    const out = new Uint8Array(info.size);
    this.readTensorBytes(info, out);
    return out;
  }

  /** Closes the file. Idempotent. */
  close(): void {
    if (this.#fd === null) return;
    closeSync(this.#fd);
    this.#fd = null;
  }
}

function parseHeader(fd: number, path: string, observe?: ReadObserver): GgufHeader {
  const fileSize = fstatSync(fd).size;
  if (fileSize < 24) throw new GgufError(fileSize === 0 ? 'truncated' : 'bad_magic', path, `only ${fileSize} bytes: not a GGUF file`);
  const c = new Cursor(fd, fileSize, path, observe);
  const magic = c.u32();
  if (magic !== GGUF_MAGIC) throw new GgufError('bad_magic', path, 'not a GGUF file (bad magic)');
  const version = c.u32();
  if (version < 2 || version > 3) throw new GgufError('unsupported', path, `GGUF version ${version} is not supported (2 and 3 are)`);
  const nTensors = c.count('tensor count');
  const nKv = c.count('metadata count');
  const kv = new Map<string, GgufKv>();
  for (let i = 0; i < nKv; i++) {
    const key = c.str();
    const type = c.u32() as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const arrayType = c.u32() as GgufValueType;
      const n = c.count(`length of array ${key}`);
      kv.set(key, { key, type, arrayType, value: readArray(c, arrayType, n, path) });
    } else {
      kv.set(key, { key, type, value: readScalar(c, type, path) });
    }
  }
  const alignKv = kv.get('general.alignment');
  const alignment = alignKv ? Number(alignKv.value) : GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
    throw new GgufError('malformed', path, `general.alignment ${alignment} is not a power of two`);
  }
  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.str();
    const nDims = c.u32();
    if (nDims < 1 || nDims > 4) throw new GgufError('malformed', path, `tensor ${name} has ${nDims} dimensions`);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) ne.push(c.count(`dimension ${d} of tensor ${name}`, 2 ** 40));
    const type = c.u32();
    if (!GGML_TYPES[type]) throw new GgufError('unsupported', path, `tensor ${name} has unknown ggml type ${type}`);
    const offset = Number(c.u64());
    if (offset % alignment !== 0) throw new GgufError('malformed', path, `tensor ${name} data offset ${offset} is not aligned to ${alignment}`);
    if (names.has(name)) throw new GgufError('malformed', path, `duplicate tensor name ${name}`);
    names.add(name);
    let size: number;
    try {
      size = tensorBytes(type, ne);
    } catch (err) {
      throw new GgufError('malformed', path, `tensor ${name}: ${(err as Error).message}`);
    }
    tensors.push({ name, type, ne, offset, size });
  }
  const dataOffset = Math.ceil(c.pos / alignment) * alignment;
  for (const t of tensors) {
    if (dataOffset + t.offset + t.size > fileSize) {
      throw new GgufError('truncated', path, `tensor ${t.name} ends at byte ${dataOffset + t.offset + t.size} but the file has ${fileSize}`);
    }
  }
  return { version, alignment, dataOffset, fileSize, kv, tensors };
}

/** Reads only the header of a GGUF file. */
export function readGgufHeader(path: string): GgufHeader {
  const f = GgufFile.open(path);
  f.close();
  return f.header;
}
