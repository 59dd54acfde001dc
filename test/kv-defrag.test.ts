// Defragmentation moves cells down into holes, keeping their order: every sequence's exported
// state (positions and K/V rows, in cell order) is byte for byte what it was, the cells end up
// packed, and decoding goes on with the same tokens. New tokens then land after the old cells
// instead of in the holes before them, so flash attention sums in another order: logits agree to
// f16 rounding (see kv-state.test.ts), which is what we allow.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Pipeline } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const path = synthModel({ arch: 'llama', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 91 });
const toks = (n: number, salt: number) => Int32Array.from({ length: n }, (_, i) => 150 + ((salt * 97 + i * 13) % 15000));

function fragmented(): Pipeline {
  const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256, split: [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }] });
  for (let round = 0; round < 3; round++) {
    for (let s = 0; s < 3; s++) {
      const start = p.seqPosMax(s) + 1, n = 7 + s * 3;
      p.forward({ tokens: toks(n, round * 3 + s), pos: Int32Array.from({ length: n }, (_, i) => start + i), seq: new Int32Array(n).fill(s), outputs: Int32Array.of(n - 1) });
    }
  }
  p.seqRemove(1);
  p.seqRemove(2, 5, 15);
  p.seqAdd(0, 10, -1, -3); // a pending K-shift travels with the cells
  return p;
}

describe('defragmentation', () => {
  it('packs the cells without changing any sequence, then decoding goes on', () => {
    const a = fragmented(), b = fragmented();
    try {
      const before = [0, 2].map((s) => b.exportState(s));
      const usedMax = b.stages[0]!.cache.cells.usedMaxP1();
      const moved = b.defrag();
      assert.ok(moved.every((m) => m > 0), 'cells moved on every stage');
      const cells = b.stages[0]!.cache.cells;
      assert.equal(cells.usedMaxP1(), cells.used, 'packed: no hole below the last used cell');
      assert.ok(cells.usedMaxP1() < usedMax);
      for (const [k, s] of [0, 2].entries()) {
        assert.equal(b.seqPosMin(s), a.seqPosMin(s));
        assert.equal(b.seqPosMax(s), a.seqPosMax(s));
        const after = b.exportState(s);
        after.forEach((blob, i) => assert.deepEqual(blob, before[k]![i], `sequence ${s} stage ${i}: same positions and rows`));
      }
      assert.equal(b.defrag().reduce((x, y) => x + y, 0), 0, 'a packed cache has nothing to move');
      for (let step = 0; step < 8; step++) {
        for (const s of [0, 2]) {
          const pos = Int32Array.of(a.seqPosMax(s) + 1), tok = toks(1, 100 + step * 2 + s);
          const la = a.forward({ tokens: tok, pos, seq: Int32Array.of(s) });
          const lb = b.forward({ tokens: tok, pos, seq: Int32Array.of(s) });
          let d = 0, scale = 0;
          for (let j = 0; j < la.length; j++) {
            d = Math.max(d, Math.abs(la[j]! - lb[j]!));
            scale = Math.max(scale, Math.abs(la[j]!));
          }
          assert.ok(d <= 2e-3 * scale, `step ${step}, seq ${s}: logits differ by ${d}`);
          assert.equal(la.indexOf(Math.max(...la)), lb.indexOf(Math.max(...lb)), 'same greedy token');
        }
      }
    } finally {
      a.dispose();
      b.dispose();
    }
  });
});
