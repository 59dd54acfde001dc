// The exported state of one sequence on one layer range: a versioned, checksummed binary format
// that a worker split at other layer boundaries can import its part of.
//
//   header   magic "STKV", u16 version, u16 header bytes, 32-byte model fingerprint (ascii),
//            u16 l0, u16 l1, u32 n_embd_kv, u16 type_k, u16 type_v, u32 row_bytes_k,
//            u32 row_bytes_v, u32 n_cells, i32 p0, i32 p1, u16 rot_k, u16 rot_v (Hadamard sizes
//            of rotated quantized rows, 0: none), u32 crc32 of the header so far
//   cells    i32 pos[n_cells], u32 crc32
//   layers   for l in [l0, l1): K rows [n_cells][row_bytes_k], u32 crc32, V rows, u32 crc32
//
// Little-endian throughout. Rows are the cache's own bytes (f16, q8_0, ...): nothing is converted.
import { crc32 } from 'node:zlib';
import { KvStateError } from './errors.ts';

export const STATE_MAGIC = 0x564b5453; // "STKV" little-endian
export const STATE_VERSION = 1;
const HEADER_BYTES = 4 + 2 + 2 + 32 + 2 + 2 + 4 + 2 + 2 + 4 + 4 + 4 + 4 + 4 + 2 + 2 + 4;

/** What a state blob holds, besides the rows. */
export interface StateHeader {
  fingerprint: string;
  /** layers [l0, l1) */
  l0: number;
  l1: number;
  nEmbdKv: number;
  typeK: number;
  typeV: number;
  rowBytesK: number;
  rowBytesV: number;
  nCells: number;
  /** positions requested, half-open (-1: open) */
  p0: number;
  p1: number;
  /** Hadamard rotation of the K and V rows (0: plain values) */
  rotK: number;
  rotV: number;
}

/** A decoded blob: header, cell positions, and views of each layer's rows. */
export interface DecodedState {
  header: StateHeader;
  /** position of each exported cell // [n_cells] */
  pos: Int32Array;
  /** per layer l0..l1-1: K rows and V rows // [n_cells * row_bytes] */
  k: Uint8Array[];
  v: Uint8Array[];
}

/** Total bytes of a blob with this header. */
export function stateBytes(h: StateHeader): number {
  const layers = h.l1 - h.l0;
  return HEADER_BYTES + h.nCells * 4 + 4 + layers * (h.nCells * h.rowBytesK + 4 + h.nCells * h.rowBytesV + 4);
}

/** Writes a blob; `fill` writes each layer's K and V rows into the views it is given. */
export function encodeState(h: StateHeader, pos: Int32Array,
  fill: (layer: number, k: Uint8Array, v: Uint8Array) => void): Uint8Array {
  if (pos.length !== h.nCells) throw new RangeError(`${pos.length} positions for ${h.nCells} cells`);
  if (h.fingerprint.length > 32) throw new RangeError('fingerprint longer than 32 characters');
  const out = new Uint8Array(stateBytes(h));
  const dv = new DataView(out.buffer);
  let o = 0;
  dv.setUint32(o, STATE_MAGIC, true); o += 4;
  dv.setUint16(o, STATE_VERSION, true); o += 2;
  dv.setUint16(o, HEADER_BYTES, true); o += 2;
  out.set(Buffer.from(h.fingerprint.padEnd(32, '\0'), 'latin1'), o); o += 32;
  dv.setUint16(o, h.l0, true); o += 2;
  dv.setUint16(o, h.l1, true); o += 2;
  dv.setUint32(o, h.nEmbdKv, true); o += 4;
  dv.setUint16(o, h.typeK, true); o += 2;
  dv.setUint16(o, h.typeV, true); o += 2;
  dv.setUint32(o, h.rowBytesK, true); o += 4;
  dv.setUint32(o, h.rowBytesV, true); o += 4;
  dv.setUint32(o, h.nCells, true); o += 4;
  dv.setInt32(o, h.p0, true); o += 4;
  dv.setInt32(o, h.p1, true); o += 4;
  dv.setUint16(o, h.rotK, true); o += 2;
  dv.setUint16(o, h.rotV, true); o += 2;
  dv.setUint32(o, crc32(out.subarray(0, o)), true); o += 4;
  const cells = new Uint8Array(pos.buffer, pos.byteOffset, pos.byteLength);
  out.set(cells, o);
  dv.setUint32(o + cells.length, crc32(cells), true);
  o += cells.length + 4;
  const kBytes = h.nCells * h.rowBytesK, vBytes = h.nCells * h.rowBytesV;
  for (let l = h.l0; l < h.l1; l++) {
    const k = out.subarray(o, o + kBytes);
    const v = out.subarray(o + kBytes + 4, o + kBytes + 4 + vBytes);
    fill(l, k, v);
    dv.setUint32(o + kBytes, crc32(k), true);
    dv.setUint32(o + kBytes + 4 + vBytes, crc32(v), true);
    o += kBytes + 4 + vBytes + 4;
  }
  return out;
}

/** Parses and verifies a blob (every checksum); throws KvStateError naming what is wrong. */
export function decodeState(blob: Uint8Array): DecodedState {
  if (blob.byteLength < HEADER_BYTES) throw new KvStateError('truncated', `KV state of ${blob.byteLength} bytes is shorter than its header`);
  const dv = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  if (dv.getUint32(0, true) !== STATE_MAGIC) throw new KvStateError('bad_magic', 'not a Strata KV state (bad magic)');
  const version = dv.getUint16(4, true);
  if (version !== STATE_VERSION) throw new KvStateError('unsupported_version', `KV state version ${version} is not supported (${STATE_VERSION} is)`);
  if (dv.getUint16(6, true) !== HEADER_BYTES) throw new KvStateError('bad_magic', 'KV state header has the wrong length');
  if (crc32(blob.subarray(0, HEADER_BYTES - 4)) !== dv.getUint32(HEADER_BYTES - 4, true)) {
    throw new KvStateError('checksum', 'KV state header checksum mismatch');
  }
  const h: StateHeader = {
    fingerprint: Buffer.from(blob.subarray(8, 40)).toString('latin1').replace(/\0+$/, ''),
    l0: dv.getUint16(40, true),
    l1: dv.getUint16(42, true),
    nEmbdKv: dv.getUint32(44, true),
    typeK: dv.getUint16(48, true),
    typeV: dv.getUint16(50, true),
    rowBytesK: dv.getUint32(52, true),
    rowBytesV: dv.getUint32(56, true),
    nCells: dv.getUint32(60, true),
    p0: dv.getInt32(64, true),
    p1: dv.getInt32(68, true),
    rotK: dv.getUint16(72, true),
    rotV: dv.getUint16(74, true),
  };
  if (h.l1 < h.l0) throw new KvStateError('layer_mismatch', `KV state layer range ${h.l0}:${h.l1} is empty`);
  const total = stateBytes(h);
  if (blob.byteLength < total) throw new KvStateError('truncated', `KV state is ${blob.byteLength} bytes, its header promises ${total}`);
  if (blob.byteLength > total) throw new KvStateError('truncated', `KV state has ${blob.byteLength - total} bytes past its end`);
  let o = HEADER_BYTES;
  const cellBytes = blob.subarray(o, o + h.nCells * 4);
  if (crc32(cellBytes) !== dv.getUint32(o + cellBytes.length, true)) throw new KvStateError('checksum', 'KV state cell checksum mismatch');
  // A copy, aligned: the blob may be a Buffer (whose slice() is a view) at any offset of a pool.
  const pos = new Int32Array(h.nCells);
  new Uint8Array(pos.buffer).set(cellBytes);
  o += cellBytes.length + 4;
  const k: Uint8Array[] = [], v: Uint8Array[] = [];
  const kBytes = h.nCells * h.rowBytesK, vBytes = h.nCells * h.rowBytesV;
  for (let l = h.l0; l < h.l1; l++) {
    const kr = blob.subarray(o, o + kBytes);
    if (crc32(kr) !== dv.getUint32(o + kBytes, true)) throw new KvStateError('checksum', `KV state checksum mismatch in the K rows of layer ${l}`);
    o += kBytes + 4;
    const vr = blob.subarray(o, o + vBytes);
    if (crc32(vr) !== dv.getUint32(o + vBytes, true)) throw new KvStateError('checksum', `KV state checksum mismatch in the V rows of layer ${l}`);
    o += vBytes + 4;
    k.push(kr);
    v.push(vr);
  }
  return { header: h, pos, k, v };
}
