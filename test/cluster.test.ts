// End to end: a local cluster (real nats-server, redis-server, coordinator, two workers and a
// gateway, each its own process) answers the official openai client with exactly the tokens
// `strata generate` gives in one process.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { connect } from 'nats';
import { GenerateEventsSchema, GenerateReplySchema, GenerateRequestSchema, SeqOpReplySchema, decode, encode, subjects } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { strataGenerate, workerStats } from './helpers/cluster.ts';

const model = ensureDefaultModel();

describe('a cluster of two workers splitting the layers', () => {
  let cluster: LocalCluster;
  let client: OpenAI;
  let vocab: Vocab;
  let modelId: string;
  const piece = (t: number) => vocab.tokenBytes(t).toString('utf8');

  before(async () => {
    cluster = await LocalCluster.start({ model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 2048, natsAuth: false, signTerms: false }); // junk below comes from a client of no role
    client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    vocab = Vocab.load(model);
    modelId = (await client.models.list()).data[0]!.id;
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  it('lists the model it serves', async () => {
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [modelId]);
    assert.match(modelId, /^default-llama/);
  });

  it('greedy completion: the same tokens as strata generate', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '24', '--split', '0:4,4:8']);
    const r = await client.completions.create({ model: modelId, prompt: 'Once upon a time', max_tokens: 24, temperature: 0, logprobs: 0 });
    assert.deepEqual(r.choices[0]!.logprobs!.tokens, ref.tokens.map(piece));
    assert.equal(r.choices[0]!.text, ref.tokens.map(piece).join(''));
    assert.equal(r.choices[0]!.finish_reason, 'length');
    assert.equal(r.usage!.completion_tokens, 24);
    for (const lp of r.choices[0]!.logprobs!.token_logprobs!) assert.ok(lp <= 0 && lp > -50, `log-probability ${lp}`);
  });

  it('seeded sampling, streamed chat: the same tokens as strata generate --chat', async () => {
    const ref = await strataGenerate(['--prompt', 'Tell me about rivers.', '--chat', '--n-predict', '20', '--split', '0:4,4:8', '--temperature', '0.9', '--seed', '1234']);
    const stream = await client.chat.completions.create({
      model: modelId, messages: [{ role: 'user', content: 'Tell me about rivers.' }], max_tokens: 20, temperature: 0.9, seed: 1234, stream: true,
      logprobs: true, stream_options: { include_usage: true },
    });
    const tokens: string[] = [];
    let text = '';
    let finish: string | null = null;
    let usage;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const c = chunk.choices[0];
      if (!c) continue;
      text += c.delta.content ?? '';
      for (const t of c.logprobs?.content ?? []) tokens.push(t.token);
      finish = c.finish_reason ?? finish;
    }
    assert.deepEqual(tokens, ref.tokens.map(piece));
    assert.equal(text, ref.tokens.map(piece).join(''));
    assert.equal(finish, 'length');
    assert.equal(usage?.completion_tokens, 20);
  });

  it('a prompt longer than a prefill chunk is prefilled over several steps', async () => {
    const prompt = Array.from({ length: 40 }, () => 'The river ran past the old mill, where the miller kept his accounts.').join(' ');
    const ref = await strataGenerate(['--prompt', prompt, '--n-predict', '12', '--split', '0:4,4:8']);
    const r = await client.completions.create({ model: modelId, prompt, max_tokens: 12, temperature: 0, logprobs: 0 });
    assert.ok(r.usage!.prompt_tokens > 512, `${r.usage!.prompt_tokens} prompt tokens`);
    assert.deepEqual(r.choices[0]!.logprobs!.tokens, ref.tokens.map(piece));
  });

  it('a stop string ends the text before it', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '24', '--split', '0:4,4:8']);
    const full = ref.tokens.map(piece).join('');
    const stop = full.slice(10, 14);
    const r = await client.completions.create({ model: modelId, prompt: 'Once upon a time', max_tokens: 24, temperature: 0, stop });
    assert.equal(r.choices[0]!.text, full.slice(0, full.indexOf(stop)));
    assert.equal(r.choices[0]!.finish_reason, 'stop');
  });

  it('n choices are sampled with seed, seed+1, …', async () => {
    const r = await client.completions.create({ model: modelId, prompt: 'The river', max_tokens: 8, temperature: 1, seed: 5, n: 2 });
    for (const [i, seed] of [5, 6].entries()) {
      const ref = await strataGenerate(['--prompt', 'The river', '--n-predict', '8', '--split', '0:4,4:8', '--temperature', '1', '--seed', String(seed)]);
      assert.equal(r.choices[i]!.text, ref.tokens.map(piece).join(''), `choice ${i}`);
    }
  });

  it('n choices of a long prompt compute it once: the first up to its last token, the others a copy of it', async () => {
    const prompt = 'Far away, beyond the seven hills and the long grey river, an old miller kept a small house where travellers stopped';
    const ref = await strataGenerate(['--prompt', prompt, '--n-predict', '8', '--split', '0:4,4:8']);
    const before = await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)));
    const r = await client.completions.create({ model: modelId, prompt, max_tokens: 8, temperature: 0, n: 3 });
    const after = await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)));
    for (const c of r.choices) assert.equal(c.text, ref.tokens.map(piece).join(''), `choice ${c.index}`);
    assert.ok(r.usage!.prompt_tokens > 20, `${r.usage!.prompt_tokens} prompt tokens`);
    assert.equal(r.usage!.prompt_tokens_details?.cached_tokens ?? 0, 0);
    // Evaluated on every stage: the prompt but its last token once, then each choice's last prompt
    // token and every sample but its last (n × max_tokens), where three copies would be 3 × prompt.
    const expected = r.usage!.prompt_tokens - 1 + r.usage!.completion_tokens;
    for (const [i, s] of after.entries()) assert.equal(Number(s.counters!.tokens - before[i]!.counters!.tokens), expected, `stage ${i}`);
  });

  it('a session\'s second turn prefills only its new tokens', async () => {
    const first = [{ role: 'user' as const, content: 'Tell me a story about the old mill by the river.' }];
    const a = await client.chat.completions.create({ model: modelId, messages: first, max_tokens: 12, temperature: 0 }, { headers: { 'x-session-id': 'conv-1' } });
    assert.equal(a.usage!.prompt_tokens_details?.cached_tokens, 0);
    const second = [...first, { role: 'assistant' as const, content: a.choices[0]!.message.content! }, { role: 'user' as const, content: 'And then?' }];
    const before = await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)));
    const b = await client.chat.completions.create({ model: modelId, messages: second, max_tokens: 10, temperature: 0 }, { headers: { 'x-session-id': 'conv-1' } });
    const afterStats = await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)));
    const cached = b.usage!.prompt_tokens_details!.cached_tokens!;
    assert.ok(cached > 20, `cached ${cached} of ${b.usage!.prompt_tokens}`);
    // Evaluated on every stage: the new prompt tokens and every sample but the last.
    const expected = b.usage!.prompt_tokens - cached + b.usage!.completion_tokens - 1;
    for (const [i, s] of afterStats.entries()) assert.equal(Number(s.counters!.tokens - before[i]!.counters!.tokens), expected, `stage ${i}`);
    // And the answer is the one the whole conversation gets from scratch.
    const text = vocab.applyChatTemplate(second);
    const ref = await strataGenerate(['--prompt', text, '--n-predict', '10', '--split', '0:4,4:8']);
    assert.equal(b.choices[0]!.message.content, ref.tokens.map(piece).join(''));
  });

  it('refuses bad input with OpenAI-shaped errors', async () => {
    const post = (path: string, body: string, headers: Record<string, string> = {}) =>
      fetch(`${cluster.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
    const cases: [string, string, number, RegExp][] = [
      ['/v1/completions', '{"model":', 400, /not JSON/],
      ['/v1/completions', '[]', 400, /JSON object/],
      ['/v1/completions', JSON.stringify({ model: modelId }), 400, /'prompt' is required/],
      ['/v1/completions', JSON.stringify({ model: 'nope', prompt: 'x' }), 404, /does not exist/],
      ['/v1/completions', JSON.stringify({ model: modelId, prompt: 'x', temperature: 9 }), 400, /between 0 and 2/],
      ['/v1/completions', JSON.stringify({ model: modelId, prompt: 'x', max_tokens: 100000 }), 400, /exceed the context/],
      ['/v1/completions', JSON.stringify({ model: modelId, prompt: [999999] }), 400, /outside the vocabulary/],
      ['/v1/chat/completions', JSON.stringify({ model: modelId, messages: [{ role: 'robot', content: 'x' }] }), 400, /role/],
      ['/v1/chat/completions', JSON.stringify({ model: modelId, messages: [{ role: 'user', content: 'x' }], bogus: 1 }), 400, /unknown parameter 'bogus'/],
      ['/v1/chat/completions', JSON.stringify({ model: modelId, messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_schema', json_schema: { schema: { type: 'string', pattern: 'a+' } } } }), 400, /pattern/],
    ];
    for (const [path, body, status, re] of cases) {
      const r = await post(path, body);
      const j = (await r.json()) as { error: { message: string; type: string; code: string } };
      assert.equal(r.status, status, `${body}: ${j.error?.message}`);
      assert.match(j.error.message, re);
      assert.equal(typeof j.error.type, 'string');
    }
    const big = await post('/v1/completions', JSON.stringify({ model: modelId, prompt: 'x'.repeat(5 * 1024 * 1024) }));
    assert.equal(big.status, 413);
    assert.equal((await fetch(`${cluster.url}/v1/completions`)).status, 405);
    assert.equal((await fetch(`${cluster.url}/nowhere`)).status, 404);
    await assert.rejects(client.completions.create({ model: 'nope', prompt: 'x' }), (e: unknown) => e instanceof OpenAI.APIError && e.status === 404);
  });

  it('corrupt protobuf on NATS is answered with an error or dropped, and the cluster keeps serving', async () => {
    const nc = await connect({ servers: cluster.nats.url });
    try {
      const junk = Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0x7f, 0x12]);
      const gen = decode(GenerateReplySchema, (await nc.request(subjects.coordinatorGenerate(), junk, { timeout: 5000 })).data);
      assert.equal(gen.accepted, false);
      assert.equal(gen.error?.code, 'bad_request');
      const seq = decode(SeqOpReplySchema, (await nc.request(subjects.workerSeq('p0-s1'), junk, { timeout: 5000 })).data);
      assert.equal(seq.error?.code, 'bad_request');
      nc.publish(subjects.workerStep('p0-s0'), junk);
      nc.publish(subjects.workerHeartbeat(), junk);
      nc.publish(subjects.coordinatorResult('coordinator'), junk);
      await nc.flush();
    } finally {
      await nc.close();
    }
    const r = await client.completions.create({ model: modelId, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
    assert.equal(r.usage!.completion_tokens, 4);
  });

  it('events reach the gateway batched per step: one message for the requests a step served', async () => {
    const nc = await connect({ servers: cluster.nats.url });
    try {
      let batches = 0, perRequest = 0, gateway = '';
      const perBatch: number[] = [];
      const sub = nc.subscribe('strata.v1.gateway.events.*', {
        callback: (_err, m) => {
          if (m.subject.startsWith('strata.v1.gateway.events.batch-')) {
            batches++;
            gateway = m.subject;
            perBatch.push(decode(GenerateEventsSchema, m.data).events.length);
          } else {
            perRequest++;
          }
        },
      });
      await nc.flush();
      const N = 16;
      const answers = await Promise.all([0, 1, 2, 3].map((i) => client.completions.create({ model: modelId, prompt: `Story ${i}: once upon a time`, max_tokens: N, temperature: 0 })));
      for (const a of answers) assert.equal(a.usage!.completion_tokens, N);
      await nc.flush();
      sub.unsubscribe();
      assert.equal(perRequest, 0, 'no event went to a request\'s own subject');
      const events = perBatch.reduce((a, b) => a + b, 0);
      assert.ok(events >= 4 * N, `${events} events`);
      assert.ok(batches < events * 0.6, `${batches} messages for ${events} events: steps of several requests share one`);
      // On the gateway's subject, a batch that does not decode is dropped, and events of no
      // request of its change nothing.
      nc.publish(gateway, Uint8Array.from([0x0a, 0xff, 0xff, 0xff, 0x7f]));
      nc.publish(gateway, encode(GenerateEventsSchema, { events: [{ requestId: 'nobody', index: 0, offset: 0 }] }));
      await nc.flush();
      // Batched events go to a gateway's batch subject, nowhere else.
      const ask = (requestId: string, batchSubject: string) => nc.request(subjects.coordinatorGenerate(), encode(GenerateRequestSchema, {
        requestId, modelId, prompt: [1, 2, 3], maxTokens: 2, n: 1, eventsSubject: subjects.gatewayEvents(requestId), batchSubject,
      }), { timeout: 5000 }).then((m) => decode(GenerateReplySchema, m.data));
      for (const [id, to] of [['r-bad-batch', subjects.workerStep('p0-s0')], ['batch-posing', subjects.gatewayBatch('x')]]) {
        const reply = await ask(id!, to!);
        assert.equal(reply.accepted, false, `${id} → ${to}`);
        assert.equal(reply.error?.code, 'bad_request');
      }
    } finally {
      await nc.close();
    }
    const r = await client.completions.create({ model: modelId, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
    assert.equal(r.usage!.completion_tokens, 4);
  });

  it('json_object output follows the grammar', async () => {
    const r = await client.chat.completions.create({
      model: modelId, messages: [{ role: 'user', content: 'Give me JSON.' }], max_tokens: 60, temperature: 0.7, seed: 3,
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'boolean' } }, required: ['a', 'b'] } } },
    });
    const text = r.choices[0]!.message.content!;
    if (r.choices[0]!.finish_reason === 'stop') {
      const v = JSON.parse(text) as { a: unknown; b: unknown };
      assert.equal(typeof v.a, 'number');
      assert.equal(typeof v.b, 'boolean');
    } else {
      assert.match(text, /^\{\s*"a"\s*:\s*-?\d/, `a prefix of the schema's JSON: ${text}`);
    }
  });

  it('health and readiness', async () => {
    assert.equal((await fetch(`${cluster.url}/healthz`)).status, 200);
    const r = await fetch(`${cluster.url}/readyz`);
    assert.equal(r.status, 200);
    assert.deepEqual(await r.json(), { status: 'ready', pipelines: 1, draining: 0, models: { [modelId]: { pipelines: 1, draining: 0 } } });
  });
});
