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

  describe('tool calling', () => {
    // A model of random weights never decides to call by itself: tool_choice forces the calls,
    // and the grammar holds them to the schemas.
    const tools: OpenAI.ChatCompletionTool[] = [
      { type: 'function', function: { name: 'get_weather', description: 'Weather now', parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 16 } }, required: ['city'] } } },
      { type: 'function', function: { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 99 }, b: { type: 'integer', minimum: 0, maximum: 99 } }, required: ['a', 'b'], additionalProperties: false } } },
    ];
    const ask = { model: '', messages: [{ role: 'user' as const, content: 'What is 2 plus 3?' }], tools, max_tokens: 120, temperature: 0, parallel_tool_calls: false };

    it('a named tool_choice answers one call of that function, with schema-valid arguments, streamed as OpenAI streams it', async () => {
      const whole = await client.chat.completions.create({ ...ask, model: id, tool_choice: { type: 'function', function: { name: 'add' } } });
      const c = whole.choices[0]!;
      assert.equal(c.finish_reason, 'tool_calls');
      assert.equal(c.message.content, null);
      const call = c.message.tool_calls![0]!;
      assert.ok(call.type === 'function' && call.function.name === 'add' && /^call_[0-9a-f]{24}$/.test(call.id), JSON.stringify(call));
      const args = JSON.parse(call.function.arguments) as { a: number; b: number };
      assert.deepEqual(Object.keys(args).sort(), ['a', 'b']);
      assert.ok(Number.isInteger(args.a) && args.a >= 0 && args.a <= 99 && Number.isInteger(args.b), call.function.arguments);

      const stream = await client.chat.completions.create({ ...ask, model: id, tool_choice: { type: 'function', function: { name: 'add' } }, stream: true });
      const deltas = [];
      let finish = null;
      for await (const chunk of stream) {
        deltas.push(...(chunk.choices[0]?.delta.tool_calls ?? []));
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(finish, 'tool_calls');
      assert.equal(deltas[0]!.function!.name, 'add');
      assert.equal(deltas[0]!.function!.arguments, '', 'the name comes first, with empty arguments');
      assert.equal(deltas.map((d) => d.function?.arguments ?? '').join(''), call.function.arguments, 'streamed and whole calls agree (greedy)');
      assert.ok(deltas.every((d) => d.index === 0));
    });

    it('a call and its result go back into the conversation; tool_choice none answers text', async () => {
      const first = await client.chat.completions.create({ ...ask, model: id, tool_choice: 'required' });
      const call = first.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
      const messages: OpenAI.ChatCompletionMessageParam[] = [
        ...ask.messages, first.choices[0]!.message as OpenAI.ChatCompletionMessageParam, { role: 'tool', tool_call_id: call.id, content: '5' },
      ];
      const next = await client.chat.completions.create({ ...ask, model: id, messages, tool_choice: 'none', max_tokens: 8 });
      assert.equal(next.choices[0]!.message.tool_calls, undefined);
      assert.ok(next.choices[0]!.message.content, 'a text answer');
      const vocab = Vocab.load(ensureDefaultModel());
      try {
        const text = vocab.applyChatTemplate([
          { role: 'user', content: 'What is 2 plus 3?' },
          { role: 'assistant', content: `<tool_call>\n{"name": "${call.function.name}", "arguments": ${call.function.arguments}}\n</tool_call>` },
          { role: 'user', content: '<tool_response>\n5\n</tool_response>' },
        ]);
        assert.equal(next.usage!.prompt_tokens, vocab.tokenize(text).length, 'the call and its result are in the prompt, in the hermes format');
      } finally {
        vocab.dispose();
      }
      // legacy functions answer function_call
      const legacy = await fetch(`${cluster.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: id, messages: ask.messages, functions: [(tools[1] as OpenAI.ChatCompletionFunctionTool).function], function_call: { name: 'add' }, max_tokens: 120, temperature: 0 }),
      });
      const lj = (await legacy.json()) as { choices: { message: { function_call: { name: string } }; finish_reason: string }[] };
      assert.deepEqual([lj.choices[0]!.message.function_call.name, lj.choices[0]!.finish_reason], ['add', 'function_call']);
    });

    it('what cannot work is a 400 before any compute', async () => {
      const bad = async (extra: Record<string, unknown>, param: string) => {
        await assert.rejects(client.chat.completions.create({ ...ask, model: id, ...extra } as never), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === param, JSON.stringify(extra));
      };
      await bad({ tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice.function.name');
      await bad({ grammar: 'root ::= "x"' }, 'grammar');
      await bad({ tools: [{ type: 'function', function: { name: 'f', strict: true, parameters: { type: 'object', properties: { q: { type: 'string', pattern: 'a+' } } } } }] }, 'tools[0].function.parameters');
      await bad({ messages: [{ role: 'tool', tool_call_id: 'call_x', content: '1' }] }, 'messages[0]');
    });
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
