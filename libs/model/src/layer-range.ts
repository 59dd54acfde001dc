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

/**
 * What each token costs a stage, in any unit (the weights it reads: {@link decodeCosts}): one
 * figure per layer, and the output head's on the last stage.
 */
export interface LayerCosts {
  layers: readonly number[];
  head: number;
}

/**
 * The split of the layers into n contiguous stages whose most costly stage costs least (the last
 * one carries the head): a pipeline's pace is its slowest stage's. Ties go to the split whose
 * earlier stages hold more, so the last stage, beside the head, keeps fewer layers.
 */
export function balancedSplit(costs: LayerCosts, n: number): LayerRange[] {
  const nLayer = costs.layers.length;
  if (n < 1 || n > nLayer) throw new ModelError('bad_split', `cannot split ${nLayer} layers into ${n} stages`);
  const prefix = [0];
  for (const c of costs.layers) prefix.push(prefix.at(-1)! + c);
  const cost = (l0: number, l1: number) => prefix[l1]! - prefix[l0]! + (l1 === nLayer ? costs.head : 0);
  // best[s][l]: the least possible cost of the most costly of s stages that cover layers [l, nLayer)
  const best: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(nLayer + 1).fill(Infinity));
  const cut: number[][] = Array.from({ length: n + 1 }, () => new Array<number>(nLayer + 1).fill(-1));
  best[0]![nLayer] = 0;
  for (let s = 1; s <= n; s++) {
    for (let l = nLayer - s; l >= 0; l--) {
      // the first of these s stages is [l, m); the other s - 1 cover [m, nLayer); the last m wins ties
      for (let m = l + 1; m <= nLayer - s + 1; m++) {
        const worst = Math.max(cost(l, m), best[s - 1]![m]!);
        if (worst <= best[s]![l]!) {
          best[s]![l] = worst;
          cut[s]![l] = m;
        }
      }
    }
  }
  const out: LayerRange[] = [];
  for (let s = n, l = 0; s > 0; s--) {
    const m = cut[s]![l]!;
    out.push({ l0: l, l1: m });
    l = m;
  }
  return out;
}

/** '0:4' */
export function formatRange(r: LayerRange): string {
  return `${r.l0}:${r.l1}`;
}
