// Exporting and importing one sequence's KV state: the cells (positions) and their K/V rows for
// a layer range, in the checksummed format of @strata/kv-cache. StageCache calls these after its
// own checks (pending K-shifts applied, no batch changing cells); they see only what they read.
import { GGML_TYPES } from '@strata/gguf';
import { decodeToF32, encodeF32, native } from '@strata/ggml';
import {
  KvStateError, MAX_SEQ, decodeState, encodeState, hadamardInPlace, windowStart,
  type DecodedState, type KvCells, type SlotPlan, type StateHeader,
} from '@strata/kv-cache';
import { ModelError } from './errors.ts';
import type { HParams } from './hparams.ts';
import type { KvGroup } from './stage-cache.ts';
import { formatRange, type LayerRange } from './layer-range.ts';

/** What an export reads and an import changes: a stage's layers, cell groups and K/V rows (a StageCache). */
export interface SeqStateHost {
  readonly hp: Pick<HParams, 'fingerprint'>;
  readonly range: LayerRange;
  readonly groups: readonly KvGroup[];
  layerGroup(layer: number): { group: number; slot: number };
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

/** `seq`'s cells of a group with lo <= pos < hi. */
function cellsOf(c: KvCells, seq: number, lo: number, hi: number): Int32Array {
  const picked: number[] = [];
  for (let i = 0; i < c.size; i++) {
    const p = c.pos[i]!;
    if (p >= lo && p < hi && c.hasSeq(i, seq)) picked.push(i);
  }
  return Int32Array.from(picked);
}

/**
 * Exports `seq`'s cells and their K/V rows; the caller applied pending K-shifts. Layers of one
 * cell group share a cell set: a stage with a separate windowed group writes two (version 2).
 */
export function exportSeqState(cache: SeqStateHost, seq: number, options: ExportOptions = {}): Uint8Array {
  const { range, groups } = cache;
  const p0 = options.p0 ?? -1, p1 = options.p1 ?? -1;
  const l0 = Math.max(options.layers?.l0 ?? range.l0, range.l0);
  const l1 = Math.min(options.layers?.l1 ?? range.l1, range.l1);
  if (l0 >= l1) throw new ModelError('bad_split', `stage ${formatRange(range)} holds none of layers ${options.layers ? formatRange(options.layers) : ''}`);
  const lo = p0 < 0 ? 0 : p0, hi = p1 < 0 ? Infinity : p1;
  // the groups the layers use, in group order: set i is used[i]'s cells
  const where = Array.from({ length: l1 - l0 }, (_, i) => cache.layerGroup(l0 + i));
  const used = [...new Set(where.map((w) => w.group))].sort((a, b) => a - b);
  // a windowed group sends what the window of the sequence's next token sees, not what it keeps
  // only until a batch takes it over
  const cells = used.map((g) => {
    const c = groups[g]!.cells;
    return cellsOf(c, seq, c.window > 0 ? Math.max(lo, windowStart(c.seqPosMax(seq), c.window)) : lo, hi);
  });
  const kv = groups[0]!.storage;
  const header: StateHeader = {
    fingerprint: cache.hp.fingerprint, l0, l1, nEmbdKv: kv.nEmbdKv, typeK: kv.type, typeV: kv.type,
    rowBytesK: kv.rowBytes, rowBytesV: kv.rowBytes, nCells: cells[0]!.length, p0, p1, rotK: kv.rot.k, rotV: kv.rot.v,
  };
  const posOf = (i: number) => Int32Array.from(cells[i]!, (c) => groups[used[i]!]!.cells.pos[c]!);
  const sets = used.length === 1 ? posOf(0) : { sets: used.map((_, i) => posOf(i)), layerSet: Uint8Array.from(where, (w) => used.indexOf(w.group)) };
  return encodeState(header, sets, (layer, k, v) => {
    const w = where[layer - l0]!, i = used.indexOf(w.group);
    groups[w.group]!.storage.readRows(w.slot, cells[i]!, k, v);
  });
}

/**
 * Imports the part of a state blob that falls in the cache's layers into sequence `seq`. The
 * first part of a sequence takes new cells; a later part (other layers of the same cells, from a
 * source split elsewhere) fills the cells the first one took. Each of the cache's groups takes
 * the positions its layers' rows come with; a windowed group only those its window still sees.
 * Rows of another cache type or rotation are converted. Everything is checked before the cache
 * changes.
 */
export function importSeqState(cache: SeqStateHost, blob: Uint8Array | DecodedState, seq: number, options: ImportOptions = {}): { layers: LayerRange; cells: number } {
  const st = blob instanceof Uint8Array ? decodeState(blob) : blob;
  const h = st.header;
  const { range, hp, groups } = cache;
  const kv = groups[0]!.storage;
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
  for (const set of st.sets) for (const p of set) if (!(p >= 0)) throw new KvStateError('conflict', `KV state holds a negative position ${p}`);
  for (const set of st.sets) if (new Set(set).size !== set.length) throw new KvStateError('conflict', 'KV state holds a position twice');
  const maxSeq = groups[0]!.cells.streams > 1 ? groups[0]!.cells.streams : MAX_SEQ;
  if (!(seq >= 0 && seq < maxSeq)) throw new KvStateError('conflict', `seq id ${seq} outside 0..${maxSeq - 1}`);
  // per group of this cache: the positions its layers' rows come with, and the cells they go to
  const targets: { group: number; at: Map<number, number>; plan: SlotPlan | null }[] = [];
  const layerSet = (l: number) => st.sets[st.layerSet[l - h.l0]!]!;
  try {
    groups.forEach((grp, gi) => {
      const layers = grp.layers.filter((l) => l >= l0 && l < l1);
      if (layers.length === 0) return;
      // in the source's cell order (so attention sums in the same order there and here)
      const sets = [...new Set(layers.map((l) => st.layerSet[l - h.l0]!))].sort((a, b) => a - b);
      let pos = [...new Set(sets.flatMap((i) => Array.from(st.sets[i]!)))];
      if (grp.cells.window > 0 && pos.length > 0) {
        // what the window of the sequence's next position no longer sees stays behind
        const start = windowStart(Math.max(pos.reduce((a, b) => Math.max(a, b)), grp.cells.seqPosMax(seq)), grp.cells.window);
        pos = pos.filter((p) => p >= start);
      }
      const t = cellsFor(grp.cells, seq, Int32Array.from(pos), options.merge ?? false);
      if (t.plan) grp.cells.apply(t.plan, t.planPos, new Int32Array(t.planPos.length).fill(seq));
      const at = new Map<number, number>();
      pos.forEach((p, i) => at.set(p, t.cells[i]!));
      targets.push({ group: gi, at, plan: t.plan });
    });
    // rows of another cache type (or rotation) are converted through f32 into this cache's own
    const convert = (rows: Uint8Array, n: number, from: number, fromRot: number, toRot: number) => {
      if (from === kv.type && fromRot === toRot) return rows;
      const x = decodeToF32(from, rows, n * h.nEmbdKv);
      if (fromRot !== toRot) {
        if (fromRot) hadamardInPlace(x, fromRot); // H is its own inverse
        if (toRot) hadamardInPlace(x, toRot);
      }
      return encodeF32(kv.type, x, h.nEmbdKv);
    };
    for (let l = l0; l < l1; l++) {
      const { group, slot } = cache.layerGroup(l);
      const target = targets.find((t) => t.group === group)!;
      const src = layerSet(l), n = src.length;
      const k = convert(st.k[l - h.l0]!, n, h.typeK, h.rotK, kv.rot.k), v = convert(st.v[l - h.l0]!, n, h.typeV, h.rotV, kv.rot.v);
      // the rows of the positions this group keeps, in the order of their cells
      const keep = Array.from(src, (p, i) => [i, target.at.get(p)] as const).filter((x) => x[1] !== undefined);
      const rb = kv.rowBytes;
      if (keep.length === n) {
        groups[group]!.storage.writeRows(slot, Int32Array.from(keep, (x) => x[1]!), k, v);
      } else if (keep.length > 0) {
        const kk = new Uint8Array(keep.length * rb), vv = new Uint8Array(keep.length * rb);
        keep.forEach(([i], j) => {
          kk.set(k.subarray(i * rb, (i + 1) * rb), j * rb);
          vv.set(v.subarray(i * rb, (i + 1) * rb), j * rb);
        });
        groups[group]!.storage.writeRows(slot, Int32Array.from(keep, (x) => x[1]!), kk, vv);
      }
    }
  } catch (err) {
    for (const t of targets) if (t.plan) groups[t.group]!.cells.release(t.plan);
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
  const fresh = Int32Array.from(pos.filter((p) => !held.has(p)));
  const plan = c.findSlotFor(new Int32Array(fresh.length).fill(seq));
  if (!plan) throw new KvStateError('no_room', `KV state needs ${fresh.length} cells, ${c.size - c.used} are free`);
  const at = new Map<number, number>();
  fresh.forEach((p, i) => at.set(p, plan.cells[i]!));
  return { cells: Int32Array.from(pos, (p) => held.get(p) ?? at.get(p)!), plan, planPos: fresh };
}
