// Exporting and importing one sequence's KV state: the cells (positions) and their K/V rows for
// a layer range, in the checksummed format of @strata/kv-cache. StageCache calls these after its
// own checks (pending K-shifts applied, no batch changing cells); they see only what they read.
import { GGML_TYPES } from '@strata/gguf';
import { decodeToF32, encodeF32, native } from '@strata/ggml';
import {
  KvStateError, MAX_SEQ, decodeState, encodeState, hadamardInPlace,
  type DecodedState, type KvCells, type KvStorage, type SlotPlan, type StateHeader,
} from '@strata/kv-cache';
import { ModelError } from './errors.ts';
import type { HParams } from './hparams.ts';
import { formatRange, type LayerRange } from './layer-range.ts';

/** What an export reads and an import changes: a stage's layers, cells and K/V rows (a StageCache). */
export interface SeqStateHost {
  readonly hp: Pick<HParams, 'fingerprint'>;
  readonly range: LayerRange;
  readonly cells: KvCells;
  readonly storage: KvStorage;
  /** cells a batch computing now writes, null when none // [n] */
  readonly locked: Int32Array | null;
}

/** What to export: positions [p0, p1) (negative: open) and a layer range (default: the stage's). */
export interface ExportOptions {
  p0?: number;
  p1?: number;
  layers?: LayerRange;
}

/** How to import. */
export interface ImportOptions {
  /**
   * the sequence is being built from parts that may overlap in positions (a migration's target):
   * held positions are filled, the others take new cells (default: refuse a partial overlap)
   */
  merge?: boolean;
}

/** Exports `seq`'s cells and their K/V rows; the caller applied pending K-shifts. */
export function exportSeqState(cache: SeqStateHost, seq: number, options: ExportOptions = {}): Uint8Array {
  const { cells: kvCells, storage: kv, range } = cache;
  const p0 = options.p0 ?? -1, p1 = options.p1 ?? -1;
  const l0 = Math.max(options.layers?.l0 ?? range.l0, range.l0);
  const l1 = Math.min(options.layers?.l1 ?? range.l1, range.l1);
  if (l0 >= l1) throw new ModelError('bad_split', `stage ${formatRange(range)} holds none of layers ${options.layers ? formatRange(options.layers) : ''}`);
  const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
  const picked: number[] = [];
  for (let i = 0; i < kvCells.size; i++) {
    const p = kvCells.pos[i]!;
    if (p >= lo && p < hi && kvCells.hasSeq(i, seq)) picked.push(i);
  }
  const cells = Int32Array.from(picked);
  // While a batch computes (evalAsync) the rows it writes are not final yet.
  const writing = cache.locked ? new Set(cache.locked) : null;
  if (writing && cells.some((c) => writing.has(c))) {
    throw new ModelError('busy', `sequence ${seq}: a batch computing now writes cells of the positions asked for`);
  }
  const header: StateHeader = {
    fingerprint: cache.hp.fingerprint, l0, l1, nEmbdKv: kv.nEmbdKv, typeK: kv.type, typeV: kv.type,
    rowBytesK: kv.rowBytes, rowBytesV: kv.rowBytes, nCells: cells.length, p0, p1, rotK: kv.rot.k, rotV: kv.rot.v,
  };
  return encodeState(header, Int32Array.from(cells, (i) => kvCells.pos[i]!), (layer, k, v) => {
    kv.readRows(layer - range.l0, cells, k, v);
  });
}

/**
 * Imports the part of a state blob that falls in the cache's layers into sequence `seq`. The
 * first part of a sequence takes new cells; a later part (other layers of the same cells, from a
 * source split elsewhere) fills the cells the first one took. Rows of another cache type or
 * rotation are converted. Everything is checked before the cache changes.
 */
export function importSeqState(cache: SeqStateHost, blob: Uint8Array | DecodedState, seq: number, options: ImportOptions = {}): { layers: LayerRange; cells: number } {
  const st = blob instanceof Uint8Array ? decodeState(blob) : blob;
  const h = st.header;
  const { storage: kv, range, hp } = cache;
  if (h.fingerprint !== hp.fingerprint) {
    throw new KvStateError('model_mismatch', `KV state is of model ${h.fingerprint}, this stage runs ${hp.fingerprint}`);
  }
  const l0 = Math.max(h.l0, range.l0), l1 = Math.min(h.l1, range.l1);
  if (l0 >= l1) throw new KvStateError('layer_mismatch', `KV state holds layers ${h.l0}:${h.l1}, this stage ${formatRange(range)}`);
  const g = native().ggml;
  const known = (t: number) => t in GGML_TYPES && g.ggml_blck_size(t) > 0 && kv.nEmbdKv % g.ggml_blck_size(t) === 0;
  if (h.nEmbdKv !== kv.nEmbdKv || !known(h.typeK) || !known(h.typeV)
    || h.rowBytesK !== g.ggml_row_size(h.typeK, h.nEmbdKv) || h.rowBytesV !== g.ggml_row_size(h.typeV, h.nEmbdKv)
    || ![h.rotK, h.rotV].every((r) => r === 0 || ((r & (r - 1)) === 0 && h.nEmbdKv % r === 0))) {
    throw new KvStateError('type_mismatch', `KV state rows (types ${h.typeK}/${h.typeV}, ${h.nEmbdKv} values per row) cannot go into this cache (type ${kv.type}, ${kv.nEmbdKv} per row)`);
  }
  for (const p of st.pos) if (!(p >= 0)) throw new KvStateError('conflict', `KV state holds a negative position ${p}`);
  const maxSeq = cache.cells.streams > 1 ? cache.cells.streams : MAX_SEQ;
  if (!(seq >= 0 && seq < maxSeq)) throw new KvStateError('conflict', `seq id ${seq} outside 0..${maxSeq - 1}`);
  const target = cellsFor(cache.cells, seq, st.pos, options.merge ?? false);
  if (target.plan) cache.cells.apply(target.plan, target.planPos, new Int32Array(target.planPos.length).fill(seq));
  try {
    // rows of another cache type (or rotation) are converted through f32 into this cache's own
    const n = st.pos.length;
    const convert = (rows: Uint8Array, from: number, fromRot: number, toRot: number) => {
      if (from === kv.type && fromRot === toRot) return rows;
      const x = decodeToF32(from, rows, n * h.nEmbdKv);
      if (fromRot !== toRot) {
        if (fromRot) hadamardInPlace(x, fromRot); // H is its own inverse
        if (toRot) hadamardInPlace(x, toRot);
      }
      return encodeF32(kv.type, x, h.nEmbdKv);
    };
    for (let l = l0; l < l1; l++) {
      const k = convert(st.k[l - h.l0]!, h.typeK, h.rotK, kv.rot.k), v = convert(st.v[l - h.l0]!, h.typeV, h.rotV, kv.rot.v);
      kv.writeRows(l - range.l0, target.cells, k, v);
    }
  } catch (err) {
    if (target.plan) cache.cells.release(target.plan);
    throw err;
  }
  return { layers: { l0, l1 }, cells: st.pos.length };
}

/**
 * Cells that receive imported rows: new ones when the sequence holds none of the blob's
 * positions (a first part, or positions after the ones it holds: a later round of a migration),
 * or the sequence's own when it holds every one of them (other layers of the same cells, from a
 * source split elsewhere). A blob that overlaps what the sequence holds only in part is refused,
 * unless `merge` says the sequence is being built from parts (a migration's target, emptied
 * before its first part): then held positions are filled and the others take new cells.
 */
function cellsFor(c: KvCells, seq: number, pos: Int32Array, merge: boolean): { cells: Int32Array; plan: SlotPlan | null; planPos: Int32Array } {
  if (pos.length === 0) return { cells: pos, plan: null, planPos: pos };
  const held = new Map<number, number>();
  if (c.seqCells(seq) > 0) for (let i = 0; i < c.size; i++) if (c.pos[i]! >= 0 && c.hasSeq(i, seq)) held.set(c.pos[i]!, i);
  let n = 0;
  for (const p of pos) if (held.has(p)) n++;
  if (n === pos.length && held.size >= pos.length) return { cells: Int32Array.from(pos, (p) => held.get(p)!), plan: null, planPos: pos.subarray(0, 0) };
  if (n > 0 && !merge) {
    throw new KvStateError('conflict', `sequence ${seq} holds ${n} of the ${pos.length} positions imported; remove it before importing`);
  }
  if (new Set(pos).size !== pos.length) throw new KvStateError('conflict', 'KV state holds a position twice');
  const fresh = Int32Array.from(pos.filter((p) => !held.has(p)));
  const plan = c.findSlotFor(new Int32Array(fresh.length).fill(seq));
  if (!plan) throw new KvStateError('no_room', `KV state needs ${fresh.length} cells, ${c.size - c.used} are free`);
  const at = new Map<number, number>();
  fresh.forEach((p, i) => at.set(p, plan.cells[i]!));
  return { cells: Int32Array.from(pos, (p) => held.get(p) ?? at.get(p)!), plan, planPos: fresh };
}
