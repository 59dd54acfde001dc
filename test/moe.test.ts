// Mixtures of experts as layer shards. Parity of logits and greedy tokens, whole and at every
// split, is in test/parity.test.ts; here two sequences batched together (their tokens routed to
// experts each on its own, in one ggml_mul_mat_id) match libllama decoding the same batches, and a
// qwen3moe split across two worker processes answers through the cluster exactly as `strata
// generate` does, streamed, with a session migrated mid-stream to a pipeline split elsewhere.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LlamaReference, Vocab, native } from '@strata/ggml';
import { Pipeline, modelIdOf, topK, type LayerRange } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { readStream, strataGenerate } from './helpers/cluster.ts';
import { LONG_TEXT, maxAbsDiff, synthModel } from './helpers/models.ts';

const THREADS = 2;
const REPACK = native().libs.kind === 'native';
const qwen3moe = synthModel({ arch: 'qwen3moe', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 2048, seed: 41, nExpert: 8, nExpertUsed: 2, nFfExp: 128 });


// gpt-oss: sinks, biases, SwiGLU-OAI, softmax over the chosen experts, every other layer windowed (the prompts cross it)
const gptOss = synthModel({ arch: 'gpt-oss', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, headDim: 32, nFf: 256, nCtxTrain: 2048, seed: 63, nExpert: 4, nExpertUsed: 2, nFfExp: 64, slidingWindow: 32, expertType: 'mxfp4' });

for (const [name, path] of [['qwen3moe, 8 experts, 2 used', qwen3moe], ['gpt-oss, 4 MXFP4 experts, 2 used, window 32', gptOss]] as const) describe(`a mixture of experts (${name}) against libllama`, () => {
  const vocab = Vocab.load(path);
  const prompt = vocab.tokenize(LONG_TEXT + ' ' + LONG_TEXT).subarray(0, 128);
  after(() => vocab.dispose());

  for (const split of [[{ l0: 0, l1: 4 }], [{ l0: 0, l1: 1 }, { l0: 1, l1: 3 }, { l0: 3, l1: 4 }]] as LayerRange[][]) {
    const label = split.map((r) => `${r.l0}:${r.l1}`).join(',');
    it(`${label}: two sequences batched together match libllama decoding the same batches, bit for bit`, (t) => {
      const a = prompt.subarray(0, 48), b = prompt.subarray(60, 100);
      const ref = LlamaReference.load(path, { nCtx: 512, threads: THREADS, nSeqMax: 2 });
      const p = Pipeline.open({ model: path, threads: THREADS, ctxSize: 512, split, repack: REPACK });
      try {
        const run = (toks: { token: number; pos: number; seq: number }[]) => {
          const want = ref.decode(toks.map((x) => ({ ...x, logits: true })));
          const o = p.forward({ tokens: Int32Array.from(toks, (x) => x.token), pos: Int32Array.from(toks, (x) => x.pos), seq: Int32Array.from(toks, (x) => x.seq) });
          const got = Array.from({ length: toks.length }, (_, i) => o.subarray(i * p.hp.nVocab, (i + 1) * p.hp.nVocab));
          return { got, want };
        };
        const first = run([...Array.from(a, (token, pos) => ({ token, pos, seq: 0 })), ...Array.from(b, (token, pos) => ({ token, pos, seq: 1 }))]);
        let d = maxAbsDiff(first.got, first.want);
        for (let i = 0; i < 16; i++) {
          const step = run([{ token: 500 + i, pos: a.length + i, seq: 0 }, { token: 700 + i, pos: b.length + i, seq: 1 }]);
          d = Math.max(d, maxAbsDiff(step.got, step.want));
          step.got.forEach((row, k) => assert.equal(topK(row, 1)[0]!.token, topK(step.want[k]!, 1)[0]!.token, `step ${i}, sequence ${k}`));
        }
        t.diagnostic(`max |Δlogit| over the batched prompts and 16 batched steps: ${d}`);
        assert.equal(d, 0, 'the same bits');
      } finally {
        p.dispose();
        ref.dispose();
      }
    });
  }
});

describe('a mixture of experts through the cluster', () => {
  const P0 = 'p0-s0~p0-s1', P1 = 'p1-s0~p1-s1';
  let cluster: LocalCluster;
  let vocab: Vocab;
  before(async () => {
    cluster = await LocalCluster.start({ model: qwen3moe, splits: [[{ l0: 0, l1: 1 }, { l0: 1, l1: 4 }], [{ l0: 0, l1: 3 }, { l0: 3, l1: 4 }]], port: 0, threads: 1, ctxSize: 1024 });
    vocab = Vocab.load(qwen3moe);
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  it('streams the tokens strata generate gives, across a migration between pipelines split at other layers', async () => {
    const ref = await strataGenerate(['--model', qwen3moe, '--prompt', 'The miller counted', '--n-predict', '48']);
    let moved: Record<string, unknown> = {};
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'moe-1' },
      body: JSON.stringify({ model: modelIdOf(qwen3moe), prompt: 'The miller counted', max_tokens: 48, temperature: 0, stream: true, logprobs: 0 }),
    });
    const { tokens } = await readStream(r, async (n) => {
      if (n !== 16) return;
      const sessions = (await (await fetch(`${cluster.url}/admin/v1/sessions?limit=10`)).json()) as { data: { id: string; pipeline: string }[] };
      const from = sessions.data.find((s) => s.id === 'moe-1')!.pipeline;
      const m = await fetch(`${cluster.url}/admin/v1/sessions/moe-1/migrate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ to: from === P0 ? P1 : P0, wait: true }) });
      moved = (await m.json()) as Record<string, unknown>;
    });
    assert.equal(moved.state, 'done', JSON.stringify(moved));
    assert.ok((moved.bytes as number) > 0);
    assert.deepEqual(tokens, ref.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), 'no token lost, none changed');
  });
});
