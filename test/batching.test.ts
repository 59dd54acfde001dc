// Several sequences decoded in one batch (continuous batching) give each sequence exactly the
// logits it gets alone; a sequence dropped from the cache frees its cells for the next.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { Pipeline, prefill, topK } from '@strata/model';
import { LONG_TEXT, synthModel } from './helpers/models.ts';

const path = synthModel({ arch: 'llama', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 31 });

function greedyAlone(p: Pipeline, prompt: Int32Array, n: number, seq: number): number[] {
  let logits = prefill(p, prompt, seq);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = topK(logits, 1)[0]!.token;
    out.push(t);
    logits = p.forward({ tokens: Int32Array.of(t), pos: Int32Array.of(prompt.length + i), seq: Int32Array.of(seq) });
  }
  return out;
}

describe('continuous batching', () => {
  it('three sequences decoded together match each decoded alone, across a 2-stage split', () => {
    const vocab = Vocab.load(path);
    const words = LONG_TEXT.split(' ');
    const prompts = [5, 17, 29].map((k) => vocab.tokenize(words.slice(0, k).join(' ')));
    vocab.dispose();
    const split = [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }];
    const alone = Pipeline.open({ model: path, threads: 2, ctxSize: 512, split });
    const expected = prompts.map((pr, s) => greedyAlone(alone, pr, 12, s));
    alone.dispose();

    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 512, split });
    try {
      // one prefill batch holding all three prompts, outputs at each prompt's last token
      const n = prompts.reduce((a, pr) => a + pr.length, 0);
      const tokens = new Int32Array(n), pos = new Int32Array(n), seq = new Int32Array(n), outputs: number[] = [];
      let k = 0;
      prompts.forEach((pr, s) => {
        pr.forEach((t, i) => { tokens[k] = t; pos[k] = i; seq[k] = s; k++; });
        outputs.push(k - 1);
      });
      let logits = p.forward({ tokens, pos, seq, outputs: Int32Array.from(outputs) });
      const got: number[][] = [[], [], []];
      for (let step = 0; step < 12; step++) {
        const next = [0, 1, 2].map((s) => topK(logits.subarray(s * p.hp.nVocab, (s + 1) * p.hp.nVocab), 1)[0]!.token);
        next.forEach((t, s) => got[s]!.push(t));
        logits = p.forward({
          tokens: Int32Array.from(next),
          pos: Int32Array.from(prompts.map((pr) => pr.length + step)),
          seq: Int32Array.of(0, 1, 2),
        });
      }
      assert.deepEqual(got, expected);
      assert.ok(p.stages[0]!.counters.graphReuses >= 10, 'decode steps of one shape reuse the built graph');
      const used = p.stages[0]!.cache.cells.used;
      p.seqRemove(1);
      assert.equal(p.stages[0]!.cache.cells.used, used - (prompts[1]!.length + 12));
      assert.equal(p.stages[1]!.cache.cells.used, p.stages[0]!.cache.cells.used, 'every stage drops the same cells');
    } finally {
      p.dispose();
    }
  });

  it('reserves the compute memory of the largest batch at load', () => {
    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 512, maxBatch: 64, split: [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }] });
    try {
      const before = p.stages.map((s) => Object.values(s.memory().compute)[0]!);
      assert.ok(before.every((b) => b > 0), 'compute buffers exist before the first batch');
      assert.ok(before[1]! >= 64 * p.hp.nVocab * 4, 'the last stage holds room for 64 rows of logits');
      const n = 64, tokens = Int32Array.from({ length: n }, (_, i) => 100 + i);
      p.forward({ tokens, pos: Int32Array.from(tokens, (_, i) => i), seq: new Int32Array(n) });
      assert.deepEqual(p.stages.map((s) => Object.values(s.memory().compute)[0]!), before, 'a batch of that size needs no more');
    } finally {
      p.dispose();
    }
  });

  it('returns the logits of the requested tokens, in the requested order', () => {
    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256 });
    try {
      const tokens = Int32Array.of(1, 450, 2381, 338, 263), pos = Int32Array.of(0, 1, 2, 3, 4), seq = new Int32Array(5);
      const all = p.forward({ tokens, pos, seq });
      p.seqRemove(0);
      const some = p.forward({ tokens, pos, seq, outputs: Int32Array.of(4, 1) });
      const v = p.hp.nVocab;
      assert.deepEqual(some.subarray(0, v), all.subarray(4 * v, 5 * v));
      assert.deepEqual(some.subarray(v, 2 * v), all.subarray(v, 2 * v));
    } finally {
      p.dispose();
    }
  });
});
