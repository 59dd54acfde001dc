// Sampling through libllama's sampler chain: seeded draws repeat, libllama's chain on the
// reference's logits picks the same tokens, and a grammar constrains the output.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LlamaReference, Sampler, Vocab } from '@strata/ggml';
import { Pipeline, generate } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const path = synthModel({ arch: 'llama', nLayer: 2, nEmbd: 128, nHead: 4, nHeadKv: 4, nFf: 256, nCtxTrain: 512, seed: 41, headScale: 3 });
const SAMPLING = { temperature: 0.9, topK: 50, topP: 0.95, minP: 0.02, repeatPenalty: 1.1, seed: 1234 };

describe('sampling', () => {
  const vocab = Vocab.load(path);
  const prompt = vocab.tokenize('The weather today is');

  it('seeded sampling repeats itself and differs with another seed', () => {
    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256 });
    try {
      const a = generate(p, vocab, prompt, { ...SAMPLING, nPredict: 24, stopAtEog: false }).tokens;
      p.seqRemove(0);
      const b = generate(p, vocab, prompt, { ...SAMPLING, nPredict: 24, stopAtEog: false }).tokens;
      p.seqRemove(0);
      const c = generate(p, vocab, prompt, { ...SAMPLING, seed: 99, nPredict: 24, stopAtEog: false }).tokens;
      assert.deepEqual(a, b);
      assert.notDeepEqual(a, c);
      assert.ok(new Set(a).size > 3, 'a flat-ish head makes sampling actually sample');
    } finally {
      p.dispose();
    }
  });

  it('a fresh chain that replays the first samples continues exactly like the original', () => {
    const rows = Array.from({ length: 24 }, (_, r) => Float32Array.from({ length: vocab.size }, (_, i) => 4 * Math.sin(i * 0.37 + r * 1.3) * Math.cos(i * 0.011 * (r + 1))));
    for (const o of [SAMPLING, { ...SAMPLING, grammar: 'root ::= [a-z ]+' }]) {
      const a = Sampler.create(vocab.size, o, vocab);
      const drawn = rows.map((row) => a.sample(row));
      a.dispose();
      const b = Sampler.create(vocab.size, o, vocab);
      b.replay(drawn.slice(0, 10));
      assert.deepEqual(rows.slice(10).map((row) => b.sample(row)), drawn.slice(10), 'grammar' in o ? 'with a grammar' : 'seeded chain');
      b.dispose();
      const c = Sampler.create(vocab.size, o, vocab);
      assert.notDeepEqual(rows.slice(10).map((row) => c.sample(row)), drawn.slice(10), 'without the replay the draws differ');
      c.dispose();
    }
  });

  it('gives the tokens libllama gives with the same chain on its own logits', () => {
    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256 });
    const ref = LlamaReference.load(path, { nCtx: 256, threads: 2, extraBufts: false });
    try {
      const ours = generate(p, vocab, prompt, { ...SAMPLING, nPredict: 24, stopAtEog: false }).tokens;
      const s = Sampler.create(ref.nVocab, SAMPLING);
      let logits = ref.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: pos === prompt.length - 1 })))[0]!;
      const theirs: number[] = [];
      for (let i = 0; i < 24; i++) {
        const t = s.sample(logits);
        theirs.push(t);
        logits = ref.decode([{ token: t, pos: prompt.length + i, seq: 0, logits: true }])[0]!;
      }
      s.dispose();
      assert.deepEqual(ours, theirs);
    } finally {
      p.dispose();
      ref.dispose();
    }
  });

  it('a grammar constrains the output', () => {
    const p = Pipeline.open({ model: path, threads: 2, ctxSize: 256 });
    try {
      const grammar = 'root ::= ("yes" | "no") " " [0-9] [0-9]';
      const res = generate(p, vocab, prompt, { ...SAMPLING, grammar, nPredict: 12 });
      const text = vocab.detokenize(res.tokens, false, false);
      assert.match(text, /^(yes|no) [0-9]{2}$/);
    } finally {
      p.dispose();
    }
  });

  it('an invalid grammar is refused with an error', () => {
    assert.throws(() => Sampler.create(vocab.size, { grammar: 'root ::= (' }, vocab), /invalid grammar/);
  });
});
