// Decode bursts on a one-stage pipeline (services/coordinator/src/decode-burst.ts): one worker
// holding every layer, NATS and Redis real. A request decoding alone takes several tokens per
// step (the stage feeds its own samples back), its stream is the single-process reference's token
// for token, a stop string still ends it where it appears, and bursts stop while other work waits.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel, generate } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { matchedUntilTie, rebuiltReference, sseEvents, workerStats, type CompletionChunk } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const MODEL_ID = 'default-llama-8x256-s42-f16';

describe('decode bursts on a one-stage pipeline', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  before(async () => {
    cluster = await LocalCluster.start({ model, pipelines: 1, workers: 1, port: 0, threads: 1, ctxSize: 1024 });
    vocab = Vocab.load(model);
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  const stream = async (body: Record<string, unknown>) => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_ID, temperature: 0, stream: true, logprobs: 0, ...body }),
    });
    assert.equal(r.status, 200);
    const tokens: string[] = [];
    let text = '', finish: string | null = null, error = '';
    for await (const j of sseEvents<CompletionChunk>(r.body!)) {
      if (j.error) error = j.error.code;
      tokens.push(...(j.choices?.[0]?.logprobs?.tokens ?? []));
      text += j.choices?.[0]?.text ?? '';
      finish = j.choices?.[0]?.finish_reason ?? finish;
    }
    return { tokens, text, finish, error };
  };
  const steps = async () => Number((await workerStats(cluster.natsUrl, 'p0-s0')).counters!.steps);

  it('a request alone decodes several tokens a step, token for token the reference', async () => {
    const prompt = Array.from(vocab.tokenize('Once upon a time'));
    const p = Pipeline.open({ model, threads: 1, ctxSize: 1024 });
    const want = generate(p, vocab, prompt, { nPredict: 60, temperature: 0, stopAtEog: false }).tokens.map((t) => vocab.tokenBytes(t).toString('utf8'));
    p.dispose();
    // (a first request teaches the coordinator what a step costs here)
    await stream({ prompt: 'The river ran', max_tokens: 20 });
    const before = await steps();
    const got = await stream({ prompt, max_tokens: 60, ignore_eos: true });
    const taken = (await steps()) - before;
    assert.deepEqual(got.tokens, want);
    assert.equal(got.finish, 'length');
    assert.ok(taken < 30, `${taken} steps for 60 tokens: bursts of several`);
  });

  it('a stop string ends the text where it appears, whatever the burst computed past it', async () => {
    const all = await stream({ prompt: 'Every morning he', max_tokens: 40, ignore_eos: true });
    const stop = all.text.slice(12, 15);
    const at = all.text.indexOf(stop);
    const got = await stream({ prompt: 'Every morning he', max_tokens: 40, ignore_eos: true, stop: [stop] });
    assert.equal(got.error, '');
    assert.equal(got.finish, 'stop');
    assert.equal(got.text, all.text.slice(0, at));
    // the cluster goes on answering, exactly
    assert.deepEqual((await stream({ prompt: 'Every morning he', max_tokens: 40, ignore_eos: true })).tokens, all.tokens);
  });

  it("a session's turn ended by a stop string keeps exactly what it fed: its next turn answers as from scratch", async () => {
    const p = Pipeline.open({ model, threads: 1, ctxSize: 1024 });
    try {
      const prompt = Array.from(vocab.tokenize('book bound with', true, true));
      const want = rebuiltReference(p, Int32Array.from(prompt), 30, 0).tokens;
      const texts = want.map((t) => vocab.tokenBytes(t).toString('utf8'));
      // a token whose text first appears where it is: the stop string ends the turn there
      const k = [...texts.keys()].find((i) => i >= 6 && texts[i]!.trim().length >= 2 && texts.slice(0, i + 1).join('').indexOf(texts[i]!) === texts.slice(0, i).join('').length)!;
      assert.ok(k !== undefined, 'a stop string to use');
      const session = { 'content-type': 'application/json', 'x-session-id': 'burst-stop' };
      const first = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: session, body: JSON.stringify({ model: MODEL_ID, prompt, max_tokens: 30, temperature: 0, ignore_eos: true, stop: [texts[k]] }) });
      const a = (await first.json()) as { choices: { text: string; finish_reason: string }[] };
      assert.deepEqual([a.choices[0]!.text, a.choices[0]!.finish_reason], [texts.slice(0, k).join(''), 'stop']);
      const next = [...prompt, ...want.slice(0, k), ...vocab.tokenize(' and then')];
      const second = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: session, body: JSON.stringify({ model: MODEL_ID, prompt: next, max_tokens: 20, temperature: 0, ignore_eos: true, logprobs: 0 }) });
      const b = (await second.json()) as { choices: { logprobs: { tokens: string[] } }[] };
      const ref = rebuiltReference(p, Int32Array.from(next), 20, 0);
      const m = matchedUntilTie(b.choices[0]!.logprobs.tokens, ref.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), ref.margins);
      assert.ok(m.equal && m.compared >= 5, `the next turn: ${m.compared} tokens compared`);
    } finally {
      p.dispose();
    }
  });

  it('requests that arrive together are each answered as the reference, up to a near tie', async () => {
    const prompts = ['book bound with', 'She opened the door', 'old mill, where'];
    const together = await Promise.all(prompts.map((prompt) => stream({ prompt, max_tokens: 30, ignore_eos: true })));
    const p = Pipeline.open({ model, threads: 1, ctxSize: 1024 });
    try {
      for (const [i, prompt] of prompts.entries()) {
        const want = rebuiltReference(p, vocab.tokenize(prompt, true, true), 30, 0);
        // (batched, sums run in another order: where the two best logits are that close, either is right)
        const m = matchedUntilTie(together[i]!.tokens, want.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), want.margins);
        assert.ok(m.equal && m.compared >= 5, `${prompt}: ${m.compared} tokens compared`);
        assert.equal(together[i]!.tokens.length, 30);
      }
    } finally {
      p.dispose();
    }
  });
});
