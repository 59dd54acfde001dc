// Splits of a model's layers into stages.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ModelError } from './errors.ts';
import { balancedSplit, evenSplit, parseSplit, type LayerCosts, type LayerRange } from './layer-range.ts';

describe('layer ranges', () => {
  it('parses a split that tiles the layers', () => {
    assert.deepEqual(parseSplit('0:4,4:8', 8), [{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]);
    assert.deepEqual(evenSplit(12, 3), [{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }, { l0: 8, l1: 12 }]);
  });

  for (const [text, why] of [
    ['0:4,5:8', /uncovered/],
    ['0:5,4:8', /overlaps/],
    ['0:4', /covers layers 0:4 but the model has 8/],
    ['0:4,4:9', /only 8/],
    ['0-4', /not of the form/],
    ['3:3,3:8', /empty/],
  ] as const) {
    it(`refuses '${text}' with a clear reason`, () => {
      assert.throws(() => parseSplit(text, 8), (e: unknown) => e instanceof ModelError && e.code === 'bad_split' && why.test(e.message));
    });
  }
});

/** The most costly stage of `split`. */
function worstStage(costs: LayerCosts, split: LayerRange[]): number {
  return Math.max(...split.map((r) => costs.layers.slice(r.l0, r.l1).reduce((a, b) => a + b, 0) + (r.l1 === costs.layers.length ? costs.head : 0)));
}

/** Every split of nLayer layers into n contiguous non-empty stages. */
function* allSplits(nLayer: number, n: number, l0 = 0): Generator<LayerRange[]> {
  if (n === 1) {
    yield [{ l0, l1: nLayer }];
    return;
  }
  for (let m = l0 + 1; m <= nLayer - n + 1; m++) for (const rest of allSplits(nLayer, n - 1, m)) yield [{ l0, l1: m }, ...rest];
}

describe('balanced splits', () => {
  it('is the even split when every layer costs the same and there is no head', () => {
    assert.deepEqual(balancedSplit({ layers: new Array(12).fill(5), head: 0 }, 2), evenSplit(12, 2));
    assert.deepEqual(balancedSplit({ layers: new Array(12).fill(5), head: 0 }, 3), evenSplit(12, 3));
  });

  it('gives the stage with the head fewer layers', () => {
    // 12 layers of 3, a head of 17 (the bench llama in Q8_0, in MiB): 6/6 costs 35, 9/3 costs 27
    assert.deepEqual(balancedSplit({ layers: new Array(12).fill(3), head: 17 }, 2), [{ l0: 0, l1: 9 }, { l0: 9, l1: 12 }]);
  });

  it('leaves one layer beside a head that outweighs all the others (Gemma 3 270M)', () => {
    const costs = { layers: new Array(18).fill(5), head: 178 };
    assert.deepEqual(balancedSplit(costs, 2), [{ l0: 0, l1: 17 }, { l0: 17, l1: 18 }]);
    assert.deepEqual(balancedSplit(costs, 3).at(-1), { l0: 17, l1: 18 });
  });

  it('finds a split as good as the best of all splits, on random costs', () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let trial = 0; trial < 200; trial++) {
      const nLayer = 1 + Math.floor(rand() * 9), n = 1 + Math.floor(rand() * nLayer);
      const costs = { layers: Array.from({ length: nLayer }, () => Math.floor(rand() * 20)), head: Math.floor(rand() * 40) };
      const split = balancedSplit(costs, n);
      assert.equal(split.length, n);
      assert.doesNotThrow(() => parseSplit(split.map((r) => `${r.l0}:${r.l1}`).join(','), nLayer));
      const best = Math.min(...[...allSplits(nLayer, n)].map((s) => worstStage(costs, s)));
      assert.equal(worstStage(costs, split), best, JSON.stringify({ costs, n, split }));
    }
  });

  it('refuses more stages than layers', () => {
    assert.throws(() => balancedSplit({ layers: [1, 2], head: 0 }, 3), (e: unknown) => e instanceof ModelError && e.code === 'bad_split');
  });
});
