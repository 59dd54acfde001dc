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
// Version 2 (written only when it is needed: a stage whose windowed layers keep their own,
// smaller cell set, as llama.cpp's iSWA cache) holds several cell sets, each layer's rows being
// those of one set. The header is version 1's, n_cells counting set 0; then
//   sets     u16 n_sets, u8 set[l1 - l0] (each layer's set), then per set after the first
//            u32 n, and per set i32 pos[n]; u32 crc32 of the section
//   layers   as version 1, each layer with its own set's number of rows
//
// Little-endian throughout. Rows are the cache's own bytes (f16, q8_0, ...): nothing is converted.
import { crc32 } from 'node:zlib';
import { KvStateError } from './errors.ts';

export const STATE_MAGIC = 0x564b5453; // "STKV" little-endian
/** The newest version written (a blob of one cell set is still written as version 1). */
export const STATE_VERSION = 2;
/** Cell sets a version 2 blob may hold. */
const MAX_SETS = 8;
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
  /** position of each cell of set 0 // [n_cells] (sets[0]) */
  pos: Int32Array;
  /** positions of each cell set (one in a version 1 blob) // [n_sets] of [n] */
  sets: Int32Array[];
  /** the set of each layer l0..l1-1 // [l1 - l0] */
  layerSet: Uint8Array;
  /** per layer l0..l1-1: K rows and V rows // [n_cells of its set * row_bytes] */
  k: Uint8Array[];
  v: Uint8Array[];
}

/** Cell sets and which one each layer's rows belong to (a blob of several sets). */
export interface CellSets {
  sets: Int32Array[];
  /** per layer l0..l1-1 // [l1 - l0] */
  layerSet: Uint8Array;
}

/** Bytes of the cell section and of the rows of a blob with this header and cell sets. */
function bodyBytes(h: StateHeader, sizes: readonly number[], layerSet: Uint8Array | null): number {
  const layers = h.l1 - h.l0;
  let rows = 0;
  for (let i = 0; i < layers; i++) rows += sizes[layerSet ? layerSet[i]! : 0]! * (h.rowBytesK + h.rowBytesV) + 8;
  const sets = layerSet ? 2 + layers + 4 * (sizes.length - 1) : 0;
  return sets + sizes.reduce((s, n) => s + 4 * n, 0) + 4 + rows;
}

/** Total bytes of a blob with this header (one cell set; see {@link encodeState} for several). */
export function stateBytes(h: StateHeader): number {
  return HEADER_BYTES + bodyBytes(h, [h.nCells], null);
}

/**
 * Writes a blob; `fill` writes each layer's K and V rows into the views it is given. `cells`:
 * the positions of the one cell set every layer's rows follow (version 1), or several sets and
 * each layer's (version 2; h.nCells counts set 0).
 */
export function encodeState(h: StateHeader, cells: Int32Array | CellSets,
  fill: (layer: number, k: Uint8Array, v: Uint8Array) => void): Uint8Array {
  const multi = cells instanceof Int32Array ? null : cells;
  const sets = multi ? multi.sets : [cells as Int32Array];
  const layerSet = multi ? multi.layerSet : null;
  if (sets[0]!.length !== h.nCells) throw new RangeError(`${sets[0]!.length} positions for ${h.nCells} cells`);
  if (h.fingerprint.length > 32) throw new RangeError('fingerprint longer than 32 characters');
  if (layerSet && (sets.length < 1 || sets.length > MAX_SETS || layerSet.length !== h.l1 - h.l0 || layerSet.some((x) => x >= sets.length))) {
    throw new RangeError(`${sets.length} cell sets for layers ${h.l0}:${h.l1} (${layerSet.length} layer entries)`);
  }
  const out = new Uint8Array(HEADER_BYTES + bodyBytes(h, sets.map((x) => x.length), layerSet));
  const dv = new DataView(out.buffer);
  let o = 0;
  dv.setUint32(o, STATE_MAGIC, true); o += 4;
  dv.setUint16(o, layerSet ? 2 : 1, true); o += 2;
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
  const start = o;
  if (layerSet) {
    dv.setUint16(o, sets.length, true); o += 2;
    out.set(layerSet, o); o += layerSet.length;
    for (const x of sets.slice(1)) { dv.setUint32(o, x.length, true); o += 4; }
  }
  for (const x of sets) {
    out.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength), o);
    o += x.byteLength;
  }
  dv.setUint32(o, crc32(out.subarray(start, o)), true);
  o += 4;
  for (let l = h.l0; l < h.l1; l++) {
    const n = sets[layerSet ? layerSet[l - h.l0]! : 0]!.length;
    const kBytes = n * h.rowBytesK, vBytes = n * h.rowBytesV;
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
  if (version !== 1 && version !== 2) throw new KvStateError('unsupported_version', `KV state version ${version} is not supported (1 and 2 are)`);
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
  const layers = h.l1 - h.l0;
  let o = HEADER_BYTES;
  // version 2: the set section's counts, read before the sizes they give are trusted
  let sizes = [h.nCells], layerSet: Uint8Array | null = null;
  if (version === 2) {
    const fixed = 2 + layers;
    if (blob.byteLength < o + fixed) throw new KvStateError('truncated', `KV state of ${blob.byteLength} bytes ends in its cell sets`);
    const nSets = dv.getUint16(o, true);
    if (nSets < 1 || nSets > MAX_SETS) throw new KvStateError('checksum', `KV state claims ${nSets} cell sets`);
    if (blob.byteLength < o + fixed + 4 * (nSets - 1)) throw new KvStateError('truncated', `KV state of ${blob.byteLength} bytes ends in its cell sets`);
    layerSet = blob.slice(o + 2, o + fixed);
    sizes = [h.nCells, ...Array.from({ length: nSets - 1 }, (_, i) => dv.getUint32(o + fixed + 4 * i, true))];
    if (layerSet.some((x) => x >= nSets)) throw new KvStateError('checksum', 'KV state names a cell set it does not hold');
  }
  const total = HEADER_BYTES + bodyBytes(h, sizes, layerSet);
  if (blob.byteLength < total) throw new KvStateError('truncated', `KV state is ${blob.byteLength} bytes, its header promises ${total}`);
  if (blob.byteLength > total) throw new KvStateError('truncated', `KV state has ${blob.byteLength - total} bytes past its end`);
  const setsEnd = o + (layerSet ? 2 + layers + 4 * (sizes.length - 1) : 0) + sizes.reduce((s, n) => s + 4 * n, 0);
  if (crc32(blob.subarray(o, setsEnd)) !== dv.getUint32(setsEnd, true)) throw new KvStateError('checksum', 'KV state cell checksum mismatch');
  o = setsEnd - sizes.reduce((s, n) => s + 4 * n, 0);
  const sets = sizes.map((n) => {
    // A copy, aligned: the blob may be a Buffer (whose slice() is a view) at any offset of a pool.
    const x = new Int32Array(n);
    new Uint8Array(x.buffer).set(blob.subarray(o, o + 4 * n));
    o += 4 * n;
    return x;
  });
  o += 4;
  const k: Uint8Array[] = [], v: Uint8Array[] = [];
  for (let l = h.l0; l < h.l1; l++) {
    const n = sizes[layerSet ? layerSet[l - h.l0]! : 0]!;
    const kBytes = n * h.rowBytesK, vBytes = n * h.rowBytesV;
    const kr = blob.subarray(o, o + kBytes);
    if (crc32(kr) !== dv.getUint32(o + kBytes, true)) throw new KvStateError('checksum', `KV state checksum mismatch in the K rows of layer ${l}`);
    o += kBytes + 4;
    const vr = blob.subarray(o, o + vBytes);
    if (crc32(vr) !== dv.getUint32(o + vBytes, true)) throw new KvStateError('checksum', `KV state checksum mismatch in the V rows of layer ${l}`);
    o += vBytes + 4;
    k.push(kr);
    v.push(vr);
  }
  return { header: h, pos: sets[0]!, sets, layerSet: layerSet ?? new Uint8Array(layers), k, v };
}
