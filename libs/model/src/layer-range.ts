// Layer ranges [l0, l1) and splits of a model into stages.
import { ModelError } from './errors.ts';

/** Half-open range of layers [l0, l1). */
export interface LayerRange {
  l0: number;
  l1: number;
}

/** '0:4' → {l0: 0, l1: 4}. */
export function parseRange(text: string): LayerRange {
  const m = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(text);
  if (!m) throw new ModelError('bad_split', `layer range '${text}' is not of the form l0:l1`);
  const r = { l0: Number(m[1]), l1: Number(m[2]) };
  if (r.l1 <= r.l0) throw new ModelError('bad_split', `layer range ${text} is empty`);
  return r;
}

/** Parses '0:4,4:8' and checks the ranges tile [0, nLayer) in order. */
export function parseSplit(text: string, nLayer: number): LayerRange[] {
  const ranges = text.split(',').map(parseRange);
  checkSplit(ranges, nLayer);
  return ranges;
}

/** Throws unless `ranges` cover [0, nLayer) contiguously, in order, without overlap. */
export function checkSplit(ranges: readonly LayerRange[], nLayer: number): void {
  let next = 0;
  for (const r of ranges) {
    if (r.l0 !== next) {
      throw new ModelError('bad_split', r.l0 > next
        ? `split leaves layers ${next}:${r.l0} uncovered`
        : `split overlaps at layer ${r.l0} (previous range ends at ${next})`);
    }
    next = r.l1;
  }
  if (next !== nLayer) {
    throw new ModelError('bad_split', next < nLayer
      ? `split covers layers 0:${next} but the model has ${nLayer}`
      : `split reaches layer ${next} but the model has only ${nLayer}`);
  }
}

/** An even split of nLayer layers into n stages. */
export function evenSplit(nLayer: number, n: number): LayerRange[] {
  if (n < 1 || n > nLayer) throw new ModelError('bad_split', `cannot split ${nLayer} layers into ${n} stages`);
  const out: LayerRange[] = [];
  for (let i = 0; i < n; i++) out.push({ l0: Math.round((i * nLayer) / n), l1: Math.round(((i + 1) * nLayer) / n) });
  return out;
}

/** '0:4' */
export function formatRange(r: LayerRange): string {
  return `${r.l0}:${r.l1}`;
}
