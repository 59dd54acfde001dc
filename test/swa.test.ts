// Sliding-window attention against libllama on an architecture it runs with a window: a synthetic
// exaone4 of 64 layers (libllama windows exaone4 at that depth only; every fourth layer attends to
// everything and uses no positions). Window 16, a 60-token prompt, then 20 single-token steps:
// logits match libllama to the bit (we allow 1e-3). A stage whose layers all use the window keeps
// the cells that fell out of it until a slot search takes them over, as libllama's windowed cache
// does (KvCells.window), so new tokens take the cells they take there and flash attention (which
// visits cells in index order and accumulates V in f16) sums in libllama's order.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { LlamaReference } from '@strata/ggml';
import { Pipeline, type LayerRange } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const TOL = 1e-3;
const WINDOW = 16;
const path = synthModel({ arch: 'exaone4', nLayer: 64, nEmbd: 64, nHead: 2, nHeadKv: 1, nFf: 128, nCtxTrain: 512, seed: 101, slidingWindow: WINDOW });
const PROMPT = Array.from({ length: 60 }, (_, i) => 300 + ((i * 37) % 9000));
const NEXT = Array.from({ length: 20 }, (_, i) => 900 + i * 3);

describe('sliding-window attention against libllama (exaone4)', () => {
  const ref = LlamaReference.load(path, { nCtx: 256, threads: 2 });
  const refPrompt = ref.decode(PROMPT.map((token, pos) => ({ token, pos, seq: 0, logits: true })));
  const refNext = NEXT.map((token, i) => ref.decode([{ token, pos: PROMPT.length + i, seq: 0, logits: true }])[0]!);
  after(() => ref.dispose());

  const splits: [string, LayerRange[] | undefined][] = [
    ['one stage', undefined],
    ['0:3,3:64 (the first stage is all windowed)', [{ l0: 0, l1: 3 }, { l0: 3, l1: 64 }]],
    ['0:32,32:64', [{ l0: 0, l1: 32 }, { l0: 32, l1: 64 }]],
  ];
  for (const [label, split] of splits) {
    it(`${label}: prompt and decoding match`, (t) => {
      const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256, split });
      try {
        assert.equal(p.hp.nSwa, WINDOW);
        const v = p.hp.nVocab;
        const out = p.forward({ tokens: Int32Array.from(PROMPT), pos: Int32Array.from(PROMPT, (_, i) => i), seq: new Int32Array(PROMPT.length) });
        let worst = 0, scale = 0;
        refPrompt.forEach((row, i) => row.forEach((x, j) => { worst = Math.max(worst, Math.abs(x - out[i * v + j]!)); }));
        assert.ok(worst <= TOL, `prompt logits differ by ${worst}`);
        const argmax = (r: ArrayLike<number>) => { let b = 0; for (let j = 1; j < r.length; j++) if (r[j]! > r[b]!) b = j; return b; };
        NEXT.forEach((token, i) => {
          const o = p.forward({ tokens: Int32Array.of(token), pos: Int32Array.of(PROMPT.length + i), seq: Int32Array.of(0) });
          refNext[i]!.forEach((x, j) => { worst = Math.max(worst, Math.abs(x - o[j]!)); scale = Math.max(scale, Math.abs(x)); });
          assert.equal(argmax(o), argmax(refNext[i]!), `step ${i}: the same greedy token`);
        });
        t.diagnostic(`largest |Δlogit| ${worst.toExponential(2)} (largest |logit| ${scale.toFixed(1)}); cells held per stage: ${p.stages.map((s) => s.cache.cells.used).join(', ')}`);
        assert.ok(worst <= TOL, `logits differ by ${worst} > ${TOL}`);
        const total = PROMPT.length + NEXT.length;
        assert.equal(p.seqPosMin(0), ref.seqPosMin(0), 'the positions every stage still holds, as libllama says');
        p.stages.forEach((s) => {
          const windowed = p.hp.swaLayers.slice(s.range.l0, s.range.l1).every((x) => x);
          assert.equal(s.cache.groups[0]!.windowed, windowed, `stage ${s.range.l0}:${s.range.l1}: a windowed group exactly when every layer is windowed`);
          // nothing is taken over before the 256-cell cache wraps
          assert.equal(s.cache.cells.used, total, `stage ${s.range.l0}:${s.range.l1} cells`);
        });
      } finally {
        p.dispose();
      }
    });
  }
});
