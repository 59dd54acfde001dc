// The attention mask of a batch, built from the cells: a token sees a cell when the cell belongs
// to the token's sequence and holds a position not after the token's (causal).
import type { KvCells } from './kv-cells.ts';

/** f16 bit patterns */
const F16_ZERO = 0x0000;
const F16_NEG_INF = 0xfc00;

/**
 * Fills `out` (f16 bits, [nTokens][nKv], nKv fastest) with 0 where token t may attend to cell j
 * and -inf elsewhere. With a sliding window `nSwa` > 0 a token at p also masks cells at positions
 * p - nSwa and before (llama.cpp's LLAMA_SWA_TYPE_STANDARD). With one stream per sequence, a
 * token's cells are its stream's: j counts from the stream's first cell (the rows of a micro-batch
 * of whole streams, stream after stream, are llama.cpp's mask [n_kv, n_tokens / n_stream, 1, n_stream]).
 * `lo`: the columns start at that cell of the stream (the attention reads cells [lo, lo + nKv)).
 */
export function buildMask(cells: KvCells, nKv: number, pos: ArrayLike<number>, seq: ArrayLike<number>, out: Uint16Array, nSwa = 0, lo = 0): void {
  const n = pos.length;
  if (out.length < n * nKv) throw new RangeError(`mask buffer of ${out.length} for ${n}x${nKv}`);
  const cpos = cells.pos;
  const perStream = cells.streams > 1;
  for (let t = 0; t < n; t++) {
    const p = pos[t]!, s = seq[t]!;
    const row = t * nKv;
    const base = (perStream ? cells.streamOf(s) * cells.streamSize : 0) + lo;
    for (let j = 0; j < nKv; j++) {
      const c = base + j;
      const cp = cpos[c]!;
      const visible = cp >= 0 && cp <= p && (nSwa === 0 || p - cp < nSwa) && cells.hasSeq(c, s);
      out[row + j] = visible ? F16_ZERO : F16_NEG_INF;
    }
  }
}

/**
 * Cells the attention looks at: used cells padded to 256 (stable graph shapes), capped at size.
 * With one stream per sequence, per stream: the most that any of `streams` (those of a
 * micro-batch) needs, capped at a stream's size (llama.cpp's get_n_kv).
 */
export function attendedCells(cells: KvCells, pad = 256, streams: Iterable<number> = [0]): number {
  if (cells.streams === 1) return Math.min(cells.size, Math.max(pad, Math.ceil(cells.usedMaxP1() / pad) * pad));
  let most = 0;
  for (const s of streams) most = Math.max(most, Math.min(cells.streamSize, Math.max(pad, Math.ceil(cells.usedMaxP1(s) / pad) * pad)));
  return most;
}

/** Cells an attention reads in one stream: [lo, lo + n), of the `all` it would read from cell 0. */
export interface KvWindow {
  lo: number;
  n: number;
  all: number;
}

/**
 * The cells a batch's attention reads: those between the lowest and the highest cell any of its
 * tokens may see (KvCells.visibleSpan), widened to multiples of `pad` (stable graph shapes) within
 * the used cells padded as attendedCells pads them. The cells outside hold other sequences (cached
 * prefixes, idle sessions) or positions a sliding window already hides: reading them would cost
 * the attention a masked column each. `from`: seq → its lowest position in the batch. With one
 * stream per sequence, `streams` are a micro-batch's (read through one view): one window, counted
 * from each stream's first cell, that holds every stream's span.
 */
export function attendedWindow(cells: KvCells, from: ReadonlyMap<number, number>, window = 0, pad = 256, streams?: readonly number[]): KvWindow {
  const all = attendedCells(cells, pad, streams);
  let lo = Infinity, hi = 0;
  for (const s of streams ?? [undefined]) {
    const span = cells.visibleSpan(from, window, s);
    if (!span) continue;
    lo = Math.min(lo, Math.floor(span.first / pad) * pad);
    hi = Math.max(hi, Math.ceil((span.last + 1) / pad) * pad);
  }
  if (hi === 0) return { lo: 0, n: all, all };
  hi = Math.min(all, hi);
  lo = Math.min(lo, Math.max(0, hi - pad));
  return { lo, n: hi - lo, all };
}
