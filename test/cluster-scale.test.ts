// Two pipelines of one model, split at different layers, serve 32 concurrent sessions; every
// answer equals its single-process reference, activations cross NATS in several chunks, and each
// session's owner, epoch and token history are in Redis.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel, prefill, topK } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { LONG_TEXT } from './helpers/models.ts';
import { clusterState, workerStats } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const SESSIONS = 32;
const N_PREDICT = 12;
/**
 * Batching changes the order of float sums (ggml's batched kernels tile differently from the
 * one-token ones), so where the reference's two best logits are closer than this, the cluster may
 * rightly pick the other one; tokens are compared up to the first such near tie.
 */
const NEAR_TIE = 0.05;

/** Greedy tokens of one prompt alone in one process, with the margin of each choice. */
function reference(p: Pipeline, prompt: Int32Array): { tokens: number[]; margins: number[] } {
  p.seqRemove(0);
  let logits = prefill(p, prompt, 0);
  const tokens: number[] = [], margins: number[] = [];
  for (let k = 0; k < N_PREDICT; k++) {
    const [a, b] = topK(logits, 2);
    tokens.push(a!.token);
    margins.push(a!.logit - b!.logit);
    logits = p.forward({ tokens: Int32Array.of(a!.token), pos: Int32Array.of(prompt.length + k), seq: Int32Array.of(0) });
  }
  return { tokens, margins };
}

describe('two pipelines split differently, 32 concurrent sessions', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  const words = LONG_TEXT.split(' ');
  // Prompts of 6 to 99 words; the longest prefill needs several 64 KiB chunks between stages.
  const prompts = Array.from({ length: SESSIONS }, (_, i) => words.slice(i % 7, (i % 7) + 6 + ((i * 29) % 94)).join(' '));

  before(async () => {
    // Steps over NATS (not same-host stage links), to cut activations into several messages.
    cluster = await LocalCluster.start({ model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 4096, natsMaxPayload: 64 * 1024, stageLinks: false });
    vocab = Vocab.load(model);
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  it('the pipelines are split at different layers', () => {
    assert.deepEqual(cluster.splits.map((s) => s.map((r) => `${r.l0}:${r.l1}`).join(',')), ['0:4,4:8', '0:3,3:8']);
  });

  it('every answer equals the single-process reference', async () => {
    const ref = Pipeline.open({ model, threads: 2, ctxSize: 1024 });
    const expected = prompts.map((p) => reference(ref, vocab.tokenize(p, true, true)));
    ref.dispose();
    const client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const id = (await client.models.list()).data[0]!.id;
    const answers = await Promise.all(prompts.map((prompt, i) =>
      client.completions.create({ model: id, prompt, max_tokens: N_PREDICT, temperature: 0, logprobs: 0 }, { headers: { 'x-session-id': `s-${i}` } })));
    let whole = 0;
    for (const [i, a] of answers.entries()) {
      const { tokens, margins } = expected[i]!;
      const tie = margins.findIndex((m) => m < NEAR_TIE);
      const n = tie < 0 ? N_PREDICT : tie;
      if (tie < 0) whole++;
      const want = tokens.slice(0, n).map((t) => vocab.tokenBytes(t).toString('utf8'));
      assert.deepEqual(a.choices[0]!.logprobs!.tokens!.slice(0, n), want, `session ${i} (compared ${n} tokens)`);
    }
    console.log(`compared ${whole} of ${SESSIONS} answers whole`);
    assert.ok(whole >= SESSIONS / 2, `only ${whole} answers had no near tie to compare whole`);

    // Both pipelines served sessions, and they stay resident.
    const state = await clusterState(cluster.natsUrl);
    assert.equal(state.pipelines.length, 2);
    assert.equal(state.pipelines.reduce((n, p) => n + p.sessions, 0), SESSIONS);
    for (const p of state.pipelines) assert.ok(p.sessions >= 8, `pipeline ${p.id} holds ${p.sessions} sessions`);

    // Activations crossed NATS in chunks: more step messages than steps would be single ones.
    const stats = await workerStats(cluster.natsUrl, 'p0-s1');
    assert.ok(stats.counters!.bytesIn > 64n * 1024n, `stage 1 received ${stats.counters!.bytesIn} bytes`);

    // Redis holds each session's owner, epoch and whole token history (prompt + every sample).
    const redis = new Redis(cluster.redisUrl);
    try {
      for (const i of [0, 17, 31]) {
        const h = await redis.hgetall(`strata:session:s-${i}`);
        assert.equal(h.owner, 'coordinator');
        assert.equal(h.epoch, '1');
        assert.ok(state.pipelines.some((p) => p.id === h.pipeline));
        const tokens = (await redis.lrange(`strata:session:s-${i}:tokens`, 0, -1)).map(Number);
        const answer = answers[i]!.choices[0]!.logprobs!.tokens;
        assert.deepEqual(tokens.slice(0, -N_PREDICT), [...vocab.tokenize(prompts[i]!, true, true)]);
        assert.deepEqual(tokens.slice(-N_PREDICT).map((t) => vocab.tokenBytes(t).toString('utf8')), answer);
      }
    } finally {
      redis.disconnect();
    }
  });
});
