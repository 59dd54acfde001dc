// What an OpenAI client or a browser app meets at the gateway, beyond completions: the official
// openai package's model lookup and streams (a role-only first chunk, no empty end-of-turn
// delta), OpenAI parameters Strata takes without effect, CORS preflights, 405s that name what is
// allowed, /health, and --help on every command.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { main } from '../services/cli/src/main.ts';
import { strataGenerate } from './helpers/cluster.ts';

const APP = 'https://app.example.com';

describe('OpenAI clients and browsers at the gateway', () => {
  let cluster: LocalCluster;
  let client: OpenAI;
  let id: string;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 8 }]], port: 0, threads: 1, ctxSize: 1024, gatewayFlags: ['--cors-origins', APP],
    });
    client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    id = (await client.models.list()).data[0]!.id;
  });
  after(async () => {
    await cluster?.stop();
  });

  it('GET /v1/models/{id} answers the model, and 404 for another', async () => {
    const m = await client.models.retrieve(id);
    assert.deepEqual([m.id, m.object], [id, 'model']);
    await assert.rejects(client.models.retrieve('gpt-nothing'), (e: unknown) => e instanceof OpenAI.NotFoundError);
  });

  it('a chat stream opens with the role alone and carries no empty delta for the end of the turn', async () => {
    const stream = await client.chat.completions.create({
      model: id, messages: [{ role: 'user', content: 'Say hello.' }], max_tokens: 40, temperature: 0, stream: true, logprobs: true,
      // taken without effect (docs/api.md)
      store: false, metadata: { app: 'test' }, service_tier: 'auto', reasoning_effort: 'low', verbosity: 'low', safety_identifier: 'user-1', modalities: ['text'],
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.deepEqual(chunks[0]!.choices[0]!.delta, { role: 'assistant', content: '' }, 'the first chunk is the role alone');
    assert.equal(chunks[0]!.service_tier, 'default');
    const body = chunks.slice(1, -1);
    assert.ok(body.length > 0);
    for (const c of body) {
      assert.equal(c.choices[0]!.delta.role, undefined);
      assert.ok(c.choices[0]!.delta.content, 'no empty content delta');
      for (const lp of c.choices[0]!.logprobs?.content ?? []) assert.notEqual(lp.token, '', 'no empty token in logprobs');
    }
    assert.ok(chunks.at(-1)!.choices[0]!.finish_reason);
  });

  it('OpenAI parameters without a counterpart are checked as OpenAI checks them', async () => {
    const post = (body: Record<string, unknown>) => fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: id, messages: [{ role: 'user', content: 'x' }], max_tokens: 1, ...body }),
    });
    for (const [body, param] of [
      [{ modalities: ['text', 'audio'] }, 'modalities'], [{ service_tier: 'fastest' }, 'service_tier'], [{ metadata: { a: 1 } }, 'metadata'],
      [{ reasoning_effort: 'extreme' }, 'reasoning_effort'], [{ audio: { voice: 'x' } }, 'audio'], [{ made_up: 1 }, 'made_up'],
    ] as const) {
      const r = await post(body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(((await r.json()) as { error: { param: string } }).error.param, param);
    }
  });

  it('logit_bias bans a token or forces one', async () => {
    const ask = async (bias: Record<string, number>) => {
      const r = await client.completions.create({ model: id, prompt: 'The river ran past the old', max_tokens: 1, temperature: 0, logprobs: 0, logit_bias: bias });
      return r.choices[0]!.logprobs!.tokens![0]!;
    };
    const free = await ask({});
    const greedy = (await strataGenerate(['--prompt', 'The river ran past the old', '--n-predict', '1', '--split', '0:8'])).tokens[0]!;
    const vocab = Vocab.load(ensureDefaultModel());
    try {
      assert.equal(free, vocab.tokenBytes(greedy).toString('utf8'), 'without a bias: the greedy token');
      assert.notEqual(await ask({ [greedy]: -100 }), free, 'the greedy token, banned, is not chosen');
      const forced = greedy === 300 ? 301 : 300;
      assert.equal(await ask({ [forced]: 100 }), vocab.tokenBytes(forced).toString('utf8'), 'a token raised by 100 is chosen');
    } finally {
      vocab.dispose();
    }
    await assert.rejects(client.completions.create({ model: id, prompt: 'x', max_tokens: 1, logit_bias: { 99999999: 5 } }), (e: unknown) => e instanceof OpenAI.BadRequestError && /outside the vocabulary/.test(e.message));
  });

  it('a browser app of an allowed origin gets through a CORS preflight; 405s say what is allowed', async () => {
    const pre = await fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'OPTIONS', headers: { origin: APP, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), APP);
    assert.match(pre.headers.get('access-control-allow-methods') ?? '', /POST/);
    assert.equal(pre.headers.get('access-control-allow-headers'), 'authorization, content-type');
    const models = await fetch(`${cluster.url}/v1/models`, { headers: { origin: APP } });
    assert.equal(models.headers.get('access-control-allow-origin'), APP);
    const other = await fetch(`${cluster.url}/v1/models`, { headers: { origin: 'https://evil.example' } });
    assert.equal(other.headers.get('access-control-allow-origin'), null, 'another origin gets no CORS header');
    const wrong = await fetch(`${cluster.url}/v1/chat/completions`);
    assert.equal(wrong.status, 405);
    assert.equal(wrong.headers.get('allow'), 'POST, OPTIONS');
    assert.equal((await fetch(`${cluster.url}/health`)).status, 200, '/health is /healthz');
  });

  it('every command answers --help with its usage and exit code 0', async () => {
    for (const argv of [['up', '--help'], ['status', '-h'], ['model', 'synth', '--help'], ['migrate', '--help'], ['gateway', '--help']]) {
      let text = '';
      const out = new Writable({ write: (c, _e, cb) => { text += String(c); cb(); } });
      assert.equal(await main(argv, out), 0, argv.join(' '));
      assert.match(text, /^usage: strata /, argv.join(' '));
    }
  });
});
