// Workers whose windowed layers keep a small K/V cache of their own (`--kv-swa-full false`, as
// llama-server's default) on a real cluster (NATS, Redis, two ggml stages of a synthetic gemma3,
// split so the first stage is all windowed and the second mixed): the stages say so
// (StageInfo.kv_swa_cells), the coordinator then shares a cached prefix only where a cached
// sequence ends and continues a session only from its end; a session's turns past the windowed
// cache's 256 cells answer as libllama's semantics do in one process, a turn that extends the
// history computes only its new tokens, and one that changes it starts over, with the right
// answer; one-off requests (no session) that resend an earlier answer share all of it, and those
// that only begin alike (a system prompt) share it from the second one's checkpoint on.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { Pipeline, generate, type LayerRange } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { workerStats } from './helpers/cluster.ts';
import { LONG_TEXT, synthModel } from './helpers/models.ts';

const path = synthModel({
  arch: 'gemma3', nLayer: 8, nEmbd: 128, nHead: 4, nHeadKv: 1, headDim: 64, nFf: 384, nCtxTrain: 2048, seed: 17,
  slidingWindow: 32, logitSoftcap: 30,
});
const SPLIT: LayerRange[] = [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }];
const N = 12;

interface Answer { text: string; prompt: number; cached: number }

describe('a cluster whose workers keep windowed layers in a small cache of their own', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let model = '';
  /** a long text's tokens, to cut prompts from */
  let all: number[] = [];
  before(async () => {
    cluster = await LocalCluster.start({
      model: path, splits: [SPLIT], port: 0, threads: 1, ctxSize: 512,
      workerFlags: ['--kv-swa-full', 'false', '--n-seq-max', '4', '--max-batch', '64'],
    });
    vocab = Vocab.load(path);
    all = Array.from(vocab.tokenize(`${LONG_TEXT} ${LONG_TEXT} ${LONG_TEXT} ${LONG_TEXT}`));
    model = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  const complete = async (prompt: number[], session: string): Promise<Answer> => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': session },
      body: JSON.stringify({ model, prompt, max_tokens: N, temperature: 0, ignore_eos: true }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    const b = (await r.json()) as { choices: { text: string }[]; usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } };
    return { text: b.choices[0]!.text, prompt: b.usage.prompt_tokens, cached: b.usage.prompt_tokens_details.cached_tokens };
  };
  /** N greedy tokens after `prompt` in one process, from scratch, with the same small windowed caches. */
  const reference = (prompt: number[]) => {
    const p = Pipeline.open({ model: path, threads: 1, ctxSize: 512, split: SPLIT, maxBatch: 64, kvSwaFull: false, kvSwaSeqs: 2 });
    try {
      return generate(p, vocab, prompt, { nPredict: N, temperature: 0, stopAtEog: false, nBatch: 64 }).tokens;
    } finally {
      p.dispose();
    }
  };
  const text = (tokens: number[]) => tokens.map((t) => vocab.tokenBytes(t).toString('utf8')).join('');
  const evaluated = async () => (await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)))).map((s) => Number(s.counters!.tokens));
  /** `prompt` answered; asserts that each stage evaluated only what was not cached: the rest of the prompt and every sample but the last. */
  const completeComputingOnlyNew = async (prompt: number[], session: string): Promise<Answer> => {
    const before = await evaluated();
    const a = await complete(prompt, session);
    const after = await evaluated();
    for (const [i, n] of after.entries()) assert.equal(n - before[i]!, prompt.length - a.cached + N - 1, `stage ${i} computed only the new tokens`);
    return a;
  };

  it('the stages report their small windowed caches; turns extend, then change the history, each answered as from scratch', async () => {
    const stats = await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)));
    assert.deepEqual(stats.map((s) => [s.stage?.kvCells, s.stage?.kvSwaCells]), [[512, 256], [512, 256]], 'pad256(32 · 4 + 64) windowed cells beside 512');
    const first = all.slice(0, 300);
    const a1 = await complete(first, 'chat');
    const want1 = reference(first);
    assert.equal(a1.text, text(want1), 'past the windowed cache\'s 256 cells');
    // the next turn extends the whole history: only its new tokens are computed
    const second = [...first, ...want1, ...all.slice(300, 340)];
    const a2 = await completeComputingOnlyNew(second, 'chat');
    assert.equal(a2.cached, first.length + N - 1, 'the history the stages hold (the last sample was never evaluated)');
    assert.equal(a2.text, text(reference(second)));
    // a turn that changes the history: elsewhere it would go on from the common prefix; here it starts over
    const third = [...first.slice(0, 200), ...all.slice(400, 430)];
    const a3 = await complete(third, 'chat');
    assert.equal(a3.cached, 0);
    assert.equal(a3.text, text(reference(third)));
  });

  it('a one-off request\'s prompt and answer stay cached: a next turn that resends them shares them all, one that only begins the same does not', async () => {
    const start = all.slice(0, 280);
    const b1 = await complete(start, '');
    const want1 = reference(start);
    assert.equal(b1.text, text(want1));
    const next = [...start, ...want1, ...all.slice(500, 520)];
    const b2 = await completeComputingOnlyNew(next, '');
    assert.equal(b2.cached, start.length + N - 1, 'all the first request\'s sequence holds');
    assert.equal(b2.text, text(reference(next)), 'past the shared window, as from scratch');
    // the same start, then another question: the windowed cells it would need may be gone
    const other = [...start.slice(0, 200), ...all.slice(600, 620)];
    const b3 = await complete(other, '');
    assert.equal(b3.cached, 0);
    assert.equal(b3.text, text(reference(other)));
  });

  it('prompts that only begin alike: the second computes the common part again and is checkpointed there; the third shares it', async () => {
    // (The text repeats every 146 tokens: a start and questions at other places in it.)
    const system = all.slice(60, 180);
    const asks = [all.slice(200, 215), all.slice(250, 265), all.slice(300, 315)].map((q) => [...system, ...q]);
    const x1 = await complete(asks[0]!, '');
    assert.equal(x1.text, text(reference(asks[0]!)));
    const x2 = await complete(asks[1]!, '');
    assert.equal(x2.cached, 0, 'inside the first one\'s sequence: not shared');
    assert.equal(x2.text, text(reference(asks[1]!)), 'paused at its checkpoint, then on: as from scratch');
    const x3 = await completeComputingOnlyNew(asks[2]!, '');
    assert.equal(x3.cached, system.length, 'the checkpoint ends where the system prompt does');
    assert.equal(x3.text, text(reference(asks[2]!)), 'from the checkpoint\'s windowed cells, as from scratch');
  });
});
