// gemma3 against libllama on a synthetic model of its shape: 8 layers where every sixth attends
// to everything and the others within a 32-position window (RoPE base 1e6 on the full layer, 1e4
// on the windowed ones), head dimension 64 with n_embd 128 (Q is wider than the residual, as in
// the 270M's 640/4×256), embeddings scaled by √n_embd, Q/K norms, norms before and after
// attention and the FFN, a GELU-gated FFN, Q scaled by 1/√head_dim after RoPE, and final logit
// soft-capping at 30. A 128-token prompt runs four times past the window.
//
// Compared: logits at every prompt position (libllama's defaults: repacked where the native
// build allows it; and both sides plain), whole and split (at an odd layer, with an all-windowed
// first stage whose cells are a windowed group, and in three stages), 48 greedy tokens;
// and two sequences batched together (prompt and decode steps in one batch each) against
// libllama decoding the same batches. Same kernels, same cell order: the same bits (we allow
// 1e-3; measured 0), also where a stage whose layers are all windowed takes over the cells its window
// dropped (new tokens still go after the older ones, as in libllama's windowed cache).
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { LlamaReference, Vocab, native } from '@strata/ggml';
import { Pipeline, generate, scoreAll, topK, type LayerRange } from '@strata/model';
import { LONG_TEXT, referenceGreedy, scoreUnsplit, synthModel } from './helpers/models.ts';

const THREADS = 2;
const REPACK = native().libs.kind === 'native';
const TOL = 1e-3;
const WINDOW = 32;
const N_GEN = 48;
const path = synthModel({
  arch: 'gemma3', nLayer: 8, nEmbd: 128, nHead: 4, nHeadKv: 1, headDim: 64, nFf: 384, nCtxTrain: 2048, seed: 17,
  slidingWindow: WINDOW, logitSoftcap: 30,
});

function maxAbsDiff(a: ArrayLike<number>[], b: ArrayLike<number>[]): { d: number; scale: number } {
  assert.equal(a.length, b.length);
  let d = 0, scale = 0;
  a.forEach((x, i) => {
    const y = b[i]!;
    assert.equal(x.length, y.length);
    for (let j = 0; j < x.length; j++) {
      d = Math.max(d, Math.abs(x[j]! - y[j]!));
      scale = Math.max(scale, Math.abs(y[j]!));
    }
  });
  return { d, scale };
}

describe('gemma3 against libllama (synthetic, interleaved sliding window)', () => {
  const vocab = Vocab.load(path);
  const prompt = vocab.tokenize(LONG_TEXT + ' ' + LONG_TEXT).subarray(0, 128);
  const ref = LlamaReference.load(path, { nCtx: 512, threads: THREADS });
  const plainRef = LlamaReference.load(path, { nCtx: 512, threads: THREADS, extraBufts: false });
  const all = (r: LlamaReference) => r.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: true })));
  const refRows = all(ref);
  const plainRows = all(plainRef);
  // libllama's greedy continuation and the smallest top-2 margin on it
  ref.clear();
  const { tokens: greedy, minMargin } = referenceGreedy(ref, prompt, N_GEN);
  let unsplit: Float32Array[] = [];
  after(() => {
    vocab.dispose();
    ref.dispose();
    plainRef.dispose();
  });

  it('reads gemma3\'s hyperparameters as libllama does', () => {
    const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split: [{ l0: 0, l1: 8 }] });
    try {
      assert.equal(p.hp.nSwa, WINDOW);
      assert.deepEqual(p.hp.swaLayers, [true, true, true, true, true, false, true, true]);
      assert.equal(p.hp.ropeFreqBase, 1e6);
      assert.equal(p.hp.ropeFreqBaseSwa, 1e4);
      assert.equal(p.hp.embdScale, Math.sqrt(128));
      assert.equal(p.hp.attnScale, 1 / 8);
      assert.equal(p.hp.logitSoftcap, 30);
    } finally {
      p.dispose();
    }
  });

  it('logits at all 128 positions match libllama (repacked and plain kernels)', (t) => {
    const score = (repack: boolean) => scoreUnsplit(path, prompt, THREADS, repack);
    unsplit = score(REPACK);
    const dDefault = maxAbsDiff(unsplit, refRows);
    const dPlain = maxAbsDiff(score(false), plainRows);
    t.diagnostic(`max |Δlogit|: ${dDefault.d.toExponential(2)} (libllama's defaults), ${dPlain.d.toExponential(2)} (plain kernels); largest |logit| ${dDefault.scale.toFixed(1)} (soft-capped at 30)`);
    assert.ok(dDefault.scale < 30, 'soft-capping holds the logits under 30');
    assert.ok(dDefault.d <= TOL, `default kernels: ${dDefault.d}`);
    assert.ok(dPlain.d <= TOL, `plain kernels: ${dPlain.d}`);
  });

  const splits: LayerRange[][] = [
    [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }],
    [{ l0: 0, l1: 5 }, { l0: 5, l1: 8 }],
    [{ l0: 0, l1: 1 }, { l0: 1, l1: 6 }, { l0: 6, l1: 8 }],
  ];
  for (const split of splits) {
    const label = split.map((r) => `${r.l0}:${r.l1}`).join(',');
    it(`split ${label}: the unsplit logits and libllama's ${N_GEN} greedy tokens`, (t) => {
      const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split, repack: REPACK });
      try {
        const { d } = maxAbsDiff(scoreAll(p, prompt), unsplit);
        assert.ok(d <= 1e-6, `split ${label} differs from the unsplit stage by ${d}`);
        p.seqRemove(0);
        const res = generate(p, vocab, prompt, { nPredict: N_GEN, temperature: 0, stopAtEog: false });
        t.diagnostic(`smallest top-2 margin on libllama's path: ${minMargin.toExponential(2)}; cells held per stage: ${p.stages.map((s) => s.cache.cells.used).join(', ')}`);
        assert.deepEqual(res.tokens, greedy);
        const windowedFirst = p.hp.swaLayers.slice(split[0]!.l0, split[0]!.l1).every((x) => x);
        if (windowedFirst) assert.ok(p.stages[0]!.cache.groups[0]!.windowed, 'the all-windowed stage\'s cells are a windowed group');
      } finally {
        p.dispose();
      }
    });
  }

  // only a stage that holds layer 5 keeps every cell: every split has a stage whose cells are a windowed group
  for (const split of [undefined, [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }]]) {
    const label = split ? `split ${split.map((r) => `${r.l0}:${r.l1}`).join(',')}` : 'one stage';
    it(`${label}: two sequences batched together match libllama decoding the same batches`, (t) => {
      const a = prompt.subarray(0, 48), b = prompt.subarray(60, 100);
      const batchRef = LlamaReference.load(path, { nCtx: 512, threads: THREADS, nSeqMax: 2 });
      const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split, repack: REPACK });
      try {
        const toks = [...Array.from(a, (token, pos) => ({ token, pos, seq: 0 })), ...Array.from(b, (token, pos) => ({ token, pos, seq: 1 }))];
        const outRows = (o: Float32Array, n: number) => Array.from({ length: n }, (_, i) => o.subarray(i * p.hp.nVocab, (i + 1) * p.hp.nVocab));
        const refFirst = batchRef.decode(toks.map((x) => ({ ...x, logits: true })));
        const first = outRows(p.forward({ tokens: Int32Array.from(toks, (x) => x.token), pos: Int32Array.from(toks, (x) => x.pos), seq: Int32Array.from(toks, (x) => x.seq) }), toks.length);
        let { d, scale } = maxAbsDiff(first, refFirst);
        assert.ok(d <= TOL, `the batched prompts differ by ${d}`);
        // then 16 steps, one token of each sequence per batch
        for (let i = 0; i < 16; i++) {
          const step = [{ token: 500 + i, pos: a.length + i, seq: 0 }, { token: 700 + i, pos: b.length + i, seq: 1 }];
          const r = batchRef.decode(step.map((x) => ({ ...x, logits: true })));
          const o = outRows(p.forward({ tokens: Int32Array.from(step, (x) => x.token), pos: Int32Array.from(step, (x) => x.pos), seq: Int32Array.from(step, (x) => x.seq) }), 2);
          const m = maxAbsDiff(o, r);
          d = Math.max(d, m.d);
          scale = Math.max(scale, m.scale);
          o.forEach((row, k) => assert.equal(topK(row, 1)[0]!.token, topK(r[k]!, 1)[0]!.token, `step ${i}, sequence ${k}: the same greedy token`));
        }
        t.diagnostic(`max |Δlogit| over the batched prompt and 16 batched steps: ${d.toExponential(2)} (largest |logit| ${scale.toFixed(1)}); cells per stage ${p.stages.map((s) => s.cache.cells.used).join(', ')}`);
        assert.ok(d <= TOL, `batched decoding differs by ${d} > ${TOL}`);
      } finally {
        p.dispose();
        batchRef.dispose();
      }
    });
  }
});
