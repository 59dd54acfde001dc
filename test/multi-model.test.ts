// One gateway serving two models on their own pipelines (gateway --model a.gguf,b.gguf): a llama
// with llama's SentencePiece vocabulary and a qwen2 with its byte-level BPE one, of different
// widths. Each request is tokenized, placed and detokenized as its model's: greedy completions
// and chats equal `strata generate` on that model; /v1/models and /readyz name both; an
// embedding's `dimensions` is held to the named model's width; a model not served is a 404
// naming those that are.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel, modelIdOf } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { strataGenerate } from './helpers/cluster.ts';
import { synthModel } from './helpers/models.ts';

describe('a gateway serving two models', () => {
  const llama = ensureDefaultModel();
  const qwen = synthModel({ arch: 'qwen2', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 91 });
  const ids = [modelIdOf(llama), modelIdOf(qwen)];
  let cluster: LocalCluster;
  let client: OpenAI;
  before(async () => {
    cluster = await LocalCluster.start({ pipelineModels: [llama, qwen], workers: 1, port: 0, threads: 1, ctxSize: 1024 });
    client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('lists both models, and is ready with a pipeline of each', async () => {
    assert.deepEqual((await client.models.list()).data.map((m) => m.id), ids);
    for (const id of ids) assert.equal((await client.models.retrieve(id)).id, id);
    const ready = (await (await fetch(`${cluster.url}/readyz`)).json()) as { pipelines: number; models: Record<string, { pipelines: number; draining: number }> };
    assert.equal(ready.pipelines, 2);
    assert.deepEqual(ready.models, Object.fromEntries(ids.map((id) => [id, { pipelines: 1, draining: 0 }])));
  });

  it('answers each model with its own weights and vocabulary: the text strata generate gives for it', async () => {
    for (const [i, path] of [llama, qwen].entries()) {
      const vocab = Vocab.load(path);
      // the text of the tokens one by one, as a stream gives them
      const text = (tokens: number[]) => tokens.map((t) => vocab.tokenBytes(t).toString('utf8')).join('');
      try {
        const ref = await strataGenerate(['--model', path, '--prompt', 'Once upon a time', '--n-predict', '16']);
        const r = await client.completions.create({ model: ids[i]!, prompt: 'Once upon a time', max_tokens: 16, temperature: 0 });
        assert.equal(r.choices[0]!.text, text(ref.tokens), `${ids[i]}: completion`);
        assert.equal(r.usage!.completion_tokens, 16);
        const chatRef = await strataGenerate(['--model', path, '--prompt', 'Tell me about rivers.', '--chat', '--n-predict', '12']);
        const chat = await client.chat.completions.create({ model: ids[i]!, messages: [{ role: 'user', content: 'Tell me about rivers.' }], max_tokens: 12, temperature: 0 });
        assert.equal(chat.choices[0]!.message.content, text(chatRef.tokens), `${ids[i]}: chat under its own template`);
        assert.equal(chat.system_fingerprint, `strata-${ids[i]}`);
      } finally {
        vocab.dispose();
      }
    }
  });

  it('holds an embedding\'s dimensions to the named model\'s width', async () => {
    const wide = await client.embeddings.create({ model: ids[0]!, input: 'rivers', dimensions: 200, encoding_format: 'float' });
    assert.equal(wide.data[0]!.embedding.length, 200);
    await assert.rejects(client.embeddings.create({ model: ids[1]!, input: 'rivers', dimensions: 200 }), (e: unknown) => e instanceof OpenAI.BadRequestError && /at most 128/.test(e.message));
    const narrow = await client.embeddings.create({ model: ids[1]!, input: 'rivers', encoding_format: 'float' });
    assert.equal(narrow.data[0]!.embedding.length, 128);
  });

  it('a model it does not serve is a 404 that names those it does', async () => {
    await assert.rejects(client.completions.create({ model: 'gpt-4', prompt: 'x', max_tokens: 1 }), (e: unknown) => {
      assert.ok(e instanceof OpenAI.NotFoundError);
      for (const id of ids) assert.ok(e.message.includes(`'${id}'`), e.message);
      return true;
    });
  });
});
