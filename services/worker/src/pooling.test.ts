// Embedding pools: rows added over several micro-batches pool as if they came at once.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EmbeddingPools } from './pooling.ts';

const rows = Float32Array.of(1, 0, 3, 4, 0, 2); // three rows of width 2

describe('embedding pools', () => {
  it('mean, cls and last pool rows from several batches and scale to unit length', () => {
    for (const [pooling, want] of [['mean', [4, 6]], ['cls', [1, 0]], ['last', [0, 2]]] as const) {
      const p = new EmbeddingPools(2, pooling);
      p.reset(5);
      p.add(5, rows.subarray(0, 2));
      p.add(5, rows.subarray(2));
      const n = Math.hypot(...want);
      const got = p.finish(5);
      assert.ok(got.every((x, i) => Math.abs(x - want[i]! / n) < 1e-12), `${pooling}: ${got.join(', ')}`);
    }
  });

  it('a finished or dropped sequence has nothing left to pool', () => {
    const p = new EmbeddingPools(2, 'mean');
    p.add(1, rows);
    p.drop(1);
    assert.throws(() => p.finish(1), /no rows/);
  });
});
