// A last stage's samplers: settings libllama refuses fail only their own sequence.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { Vocab, vocabDir } from '@strata/ggml';
import { SamplingSchema } from '@strata/wire';
import { SamplerSet } from './samplers.ts';

const vocab = Vocab.load(join(vocabDir(), 'ggml-vocab-llama-spm.gguf'));
after(() => vocab.dispose());

describe('SamplerSet', () => {
  it('an invalid grammar fails its sequence with invalid_grammar; the others sample on', () => {
    const set = new SamplerSet(vocab.size, vocab);
    try {
      set.reset(0, create(SamplingSchema, { temperature: 0, grammar: 'root ::= (' }));
      set.reset(1, create(SamplingSchema, { temperature: 0, grammar: 'root ::= "a"' }));
      set.reset(2, create(SamplingSchema, { temperature: 0 }));
      const row = Float32Array.from({ length: vocab.size }, (_, i) => Math.sin(i));
      const bad = set.sample(0, row);
      assert.equal(bad.error?.code, 'invalid_grammar');
      assert.match(bad.error!.message, /^sequence 0: invalid grammar/);
      const good = set.sample(1, row);
      assert.equal(good.error, undefined);
      assert.equal(vocab.tokenBytes(good.token).toString(), 'a', 'the grammar holds');
      const free = set.sample(2, row);
      assert.equal(free.error, undefined);
      assert.equal(free.token, row.indexOf(Math.max(...row)));
    } finally {
      set.dispose();
    }
  });
});
