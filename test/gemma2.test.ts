// gemma2 against libllama on a synthetic model of its shape: 6 layers, every other one attending
// within a 32-position window (libllama's default pattern for gemma2; one RoPE base for all),
// embeddings scaled by √n_embd, no Q/K norms, norms before and after attention and the FFN, a
// GELU-gated FFN, Q scaled by 1/√head_dim after RoPE, attention logits soft-capped at 50 inside
// the attention and final logits at 30. A 128-token prompt runs four times past the window.
// Compared: logits at every prompt position, whole and split (with an all-windowed first stage
// whose cells are a windowed group), and 32 greedy tokens.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { LlamaReference, Vocab, native } from '@strata/ggml';
import { Pipeline, generate, scoreAll, type LayerRange } from '@strata/model';
import { LONG_TEXT, maxAbsDiff, referenceGreedy, scoreUnsplit, synthModel } from './helpers/models.ts';

const THREADS = 2;
const REPACK = native().libs.kind === 'native';
const TOL = 1e-3;
const WINDOW = 32;
const N_GEN = 32;
const path = synthModel({
  arch: 'gemma2', nLayer: 6, nEmbd: 128, nHead: 4, nHeadKv: 2, headDim: 64, nFf: 384, nCtxTrain: 2048, seed: 23,
  slidingWindow: WINDOW, logitSoftcap: 30, attnSoftcap: 50,
});


describe('gemma2 against libllama (synthetic, every other layer windowed, attention soft-capping)', () => {
  const vocab = Vocab.load(path);
  const prompt = vocab.tokenize(LONG_TEXT + ' ' + LONG_TEXT).subarray(0, 128);
  const ref = LlamaReference.load(path, { nCtx: 512, threads: THREADS });
  const refRows = ref.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: true })));
  ref.clear();
  const { tokens: greedy } = referenceGreedy(ref, prompt, N_GEN);
  let unsplit: Float32Array[] = [];
  after(() => {
    vocab.dispose();
    ref.dispose();
  });

  it('reads gemma2\'s hyperparameters as libllama does', () => {
    const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split: [{ l0: 0, l1: 6 }] });
    try {
      assert.equal(p.hp.nSwa, WINDOW);
      assert.deepEqual(p.hp.swaLayers, [true, false, true, false, true, false]);
      assert.equal(p.hp.ropeFreqBase, 1e4);
      assert.equal(p.hp.ropeFreqBaseSwa, 1e4);
      assert.equal(p.hp.attnScale, 1 / 8);
      assert.deepEqual([p.hp.attnSoftcap, p.hp.logitSoftcap], [50, 30]);
    } finally {
      p.dispose();
    }
  });

  it('logits at all 128 positions match libllama', (t) => {
    unsplit = scoreUnsplit(path, prompt, THREADS, REPACK);
    const d = maxAbsDiff(unsplit, refRows);
    t.diagnostic(`max |Δlogit| vs libllama: ${d.toExponential(2)}`);
    assert.ok(d <= TOL, `${d}`);
  });

  const splits: LayerRange[][] = [
    [{ l0: 0, l1: 1 }, { l0: 1, l1: 6 }],
    [{ l0: 0, l1: 3 }, { l0: 3, l1: 4 }, { l0: 4, l1: 6 }],
  ];
  for (const split of splits) {
    const label = split.map((r) => `${r.l0}:${r.l1}`).join(',');
    it(`split ${label}: the unsplit logits and libllama's ${N_GEN} greedy tokens`, () => {
      const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split, repack: REPACK });
      try {
        const d = maxAbsDiff(scoreAll(p, prompt), unsplit);
        assert.ok(d <= 1e-6, `split ${label} differs from the unsplit stage by ${d}`);
        p.seqRemove(0);
        assert.deepEqual(generate(p, vocab, prompt, { nPredict: N_GEN, temperature: 0, stopAtEog: false }).tokens, greedy);
        if (split[0]!.l1 === 1) assert.ok(p.stages[0]!.cache.groups[0]!.windowed, 'the all-windowed stage\'s cells are a windowed group');
      } finally {
        p.dispose();
      }
    });
  }
});
