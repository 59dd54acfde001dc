// Splits of a model's layers into stages.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ModelError } from './errors.ts';
import { evenSplit, parseSplit } from './layer-range.ts';

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
