// The vocabulary through libllama: a synthetic model carries a real tokenizer.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { synthModel } from './helpers/models.ts';

describe('vocabulary', () => {
  for (const arch of ['llama', 'qwen2'] as const) {
    it(`${arch}: tokenizes real words into few tokens and detokenizes them back`, () => {
      const path = synthModel({ arch, nLayer: 1, nEmbd: 64, nHead: 2, nHeadKv: 2, nFf: 128, nCtxTrain: 256, seed: 51 });
      const v = Vocab.load(path);
      try {
        const text = 'Hello world, this is a sentence with ordinary English words.';
        const ids = v.tokenize(text, false);
        assert.ok(ids.length < text.split(' ').length * 2, `${ids.length} tokens for ${text.split(' ').length} words`);
        assert.equal(v.detokenize(ids), text);
        assert.equal(v.size, arch === 'llama' ? 32000 : 151936);
        const chat = v.applyChatTemplate([{ role: 'user', content: 'hi there' }]);
        assert.match(chat, /user/);
        assert.match(chat, /hi there/);
        assert.ok(v.isEog(v.eos));
      } finally {
        v.dispose();
        v.dispose();
      }
    });
  }
});
