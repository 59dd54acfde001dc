// /v1/embeddings through a cluster split into two stages, with the official openai client (which
// asks for base64 and decodes it): each vector equals libllama's pooled embedding of the same
// tokens (mean pooling, scaled to unit length) within f16 K/V rounding, for inputs of a few tokens
// and for one longer than a micro-batch's prompt chunk (pooled across micro-batches); embeddings
// computed next to a streaming chat leave its tokens as they are alone; `dimensions` cuts and
// rescales; what cannot be served is a 400 before any compute.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { LlamaReference, Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { LONG_TEXT } from './helpers/models.ts';

/** llama_pooling_type's mean */
const MEAN = 1;

/** Unit length. */
function unit(v: ArrayLike<number>): number[] {
  const a = Array.from(v);
  const n = Math.sqrt(a.reduce((s, x) => s + x * x, 0));
  return a.map((x) => x / n);
}

function maxDiff(a: readonly number[], b: readonly number[]): number {
  assert.equal(a.length, b.length);
  return a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
}

describe('embeddings', () => {
  const model = ensureDefaultModel();
  let cluster: LocalCluster;
  let client: OpenAI;
  let id: string;
  let vocab: Vocab;
  let ref: LlamaReference;
  before(async () => {
    cluster = await LocalCluster.start({ model, splits: [[{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }]], port: 0, threads: 1, ctxSize: 2048 });
    client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    id = (await client.models.list()).data[0]!.id;
    vocab = Vocab.load(model);
    ref = LlamaReference.load(model, { nCtx: 2048, nBatch: 1024, threads: 2, pooling: MEAN });
  });
  after(async () => {
    ref?.dispose();
    vocab?.dispose();
    await cluster?.stop();
  });

  /** libllama's embedding of `text`, tokenized as the gateway does, unit length. */
  const reference = (text: string): number[] => {
    const tokens = vocab.tokenize(text, true, false);
    ref.clear();
    ref.decode(Array.from(tokens, (token, pos) => ({ token, pos, seq: 0, logits: true })));
    return unit(ref.embedding(0));
  };

  it('equals libllama\'s pooled embedding, for short inputs and one pooled across micro-batches', async () => {
    const long = [LONG_TEXT, LONG_TEXT, LONG_TEXT].join(' ');
    const inputs = ['The river ran past the old mill.', 'Hello', long];
    assert.ok(vocab.tokenize(long, true, false).length > 256, 'the long input spans two prompt chunks of 256');
    const r = await client.embeddings.create({ model: id, input: inputs });
    assert.equal(r.data.length, 3);
    assert.equal(r.model, id);
    const width = ref.nEmbd;
    r.data.forEach((d, i) => {
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, width);
      const norm = Math.sqrt(d.embedding.reduce((s, x) => s + x * x, 0));
      assert.ok(Math.abs(norm - 1) < 1e-5, `unit length, got ${norm}`);
      const diff = maxDiff(d.embedding, reference(inputs[i]!));
      assert.ok(diff < 2e-3, `input ${i}: differs from libllama by ${diff}`);
    });
    const want = inputs.reduce((n, t) => n + vocab.tokenize(t, true, false).length, 0);
    assert.deepEqual([r.usage.prompt_tokens, r.usage.total_tokens], [want, want]);
  });

  it('next to a streaming chat: the chat\'s tokens are those it has alone, the embeddings unchanged', async () => {
    const ask = () => client.chat.completions.create({ model: id, messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 24, temperature: 0 });
    const alone = (await ask()).choices[0]!.message.content;
    const inputs = Array.from({ length: 6 }, (_, i) => LONG_TEXT.slice(i * 40, i * 40 + 30 + 20 * i));
    const [chat, emb] = await Promise.all([ask(), client.embeddings.create({ model: id, input: inputs })]);
    assert.equal(chat.choices[0]!.message.content, alone);
    emb.data.forEach((d, i) => assert.ok(maxDiff(d.embedding, reference(inputs[i]!)) < 2e-3, `input ${i}`));
  });

  it('dimensions cut and rescale; floats and base64 carry the same numbers; token ids are taken', async () => {
    const text = 'The miller kept his accounts.';
    const full = (await client.embeddings.create({ model: id, input: text, encoding_format: 'float' })).data[0]!.embedding;
    const cut = (await client.embeddings.create({ model: id, input: text, dimensions: 16 })).data[0]!.embedding;
    assert.equal(cut.length, 16);
    assert.ok(maxDiff(cut, unit(full.slice(0, 16))) < 1e-6);
    const raw = await fetch(`${cluster.url}/v1/embeddings`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: id, input: [Array.from(vocab.tokenize(text, true, false))], encoding_format: 'base64' }),
    });
    const b64 = ((await raw.json()) as { data: { embedding: string }[] }).data[0]!.embedding;
    const bytes = Buffer.from(b64, 'base64');
    const decoded = Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
    assert.ok(maxDiff(decoded, full) < 1e-6, 'token ids give the text\'s embedding');
  });

  it('what cannot be served is a 400 naming the parameter', async () => {
    const bad = async (body: Record<string, unknown>, param: string) => {
      const r = await fetch(`${cluster.url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: id, input: 'x', ...body }) });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(((await r.json()) as { error: { param: string } }).error.param, param);
    };
    await bad({ input: '' }, 'input');
    await bad({ input: [] }, 'input');
    await bad({ input: [[1, 2], 'x'] }, 'input');
    await bad({ dimensions: 100_000 }, 'dimensions');
    await bad({ encoding_format: 'int8' }, 'encoding_format');
    await bad({ input: [99_999_999] }, 'input');
    await bad({ pooling: 'max' }, 'pooling');
    const wrong = await fetch(`${cluster.url}/v1/embeddings`);
    assert.equal(wrong.status, 405);
  });
});
