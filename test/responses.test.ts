// The Responses API with the official openai client: a text response is the chat answer of the
// same messages (greedy), streamed as typed events that add up to the whole response;
// previous_response_id continues a conversation on its session's cached KV; function tools give
// function_call items, and their outputs go back as input items; stored responses are read and
// deleted; what cannot be served is a 400 before any compute.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';

describe('the Responses API', () => {
  const model = ensureDefaultModel();
  let cluster: LocalCluster;
  let client: OpenAI;
  let id: string;
  let vocab: Vocab;
  before(async () => {
    cluster = await LocalCluster.start({ model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 2048 });
    client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    id = (await client.models.list()).data[0]!.id;
    vocab = Vocab.load(model);
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  const promptTokens = (messages: { role: string; content: string }[]) => vocab.tokenize(vocab.applyChatTemplate(messages)).length;

  it('a text response is the chat answer of the same messages, whole and streamed', async () => {
    const r = await client.responses.create({ model: id, instructions: 'Be brief.', input: 'Say hello.', max_output_tokens: 12, temperature: 0 });
    const chat = await client.chat.completions.create({ model: id, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello.' }], max_tokens: 12, temperature: 0 });
    assert.match(r.id, /^resp_[0-9a-f]{24}$/);
    assert.equal(r.object, 'response');
    assert.equal(r.output_text, chat.choices[0]!.message.content);
    assert.equal(r.status, chat.choices[0]!.finish_reason === 'length' ? 'incomplete' : 'completed');
    assert.equal(r.usage!.input_tokens, promptTokens([{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say hello.' }]));
    assert.equal(r.usage!.output_tokens, chat.usage!.completion_tokens);
    assert.equal(r.output[0]!.type, 'message');

    const types: string[] = [];
    let text = '';
    let last: OpenAI.Responses.Response | null = null;
    const stream = await client.responses.create({ model: id, instructions: 'Be brief.', input: 'Say hello.', max_output_tokens: 12, temperature: 0, stream: true, store: false });
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed' || ev.type === 'response.incomplete') last = ev.response;
    }
    assert.deepEqual(types.slice(0, 4), ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added']);
    assert.deepEqual(types.slice(-4), ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', `response.${r.status}`]);
    assert.equal(text, r.output_text);
    const finalText = (last?.output ?? []).flatMap((x) => (x.type === 'message' ? x.content : [])).map((c) => (c.type === 'output_text' ? c.text : '')).join('');
    assert.equal(finalText, r.output_text, 'the last event carries the whole response');
  });

  it('previous_response_id continues the conversation on its cached KV; stored responses are read and deleted', async () => {
    const first = await client.responses.create({ model: id, input: 'Name a river.', max_output_tokens: 8, temperature: 0 });
    const second = await client.responses.create({ model: id, previous_response_id: first.id, input: 'And a mountain?', max_output_tokens: 8, temperature: 0 });
    const history = [{ role: 'user', content: 'Name a river.' }, { role: 'assistant', content: first.output_text }, { role: 'user', content: 'And a mountain?' }];
    assert.equal(second.usage!.input_tokens, promptTokens(history), 'the first turn and its answer are in the prompt');
    assert.ok(second.usage!.input_tokens_details.cached_tokens >= first.usage!.input_tokens, `the first turn's cells are reused (${second.usage!.input_tokens_details.cached_tokens} cached)`);
    assert.equal(second.previous_response_id, first.id);

    const got = await client.responses.retrieve(second.id);
    assert.equal(got.output_text, second.output_text);
    await client.responses.delete(second.id);
    await assert.rejects(client.responses.retrieve(second.id), (e: unknown) => e instanceof OpenAI.NotFoundError);
    await assert.rejects(client.responses.create({ model: id, previous_response_id: second.id, input: 'x' }), (e: unknown) => e instanceof OpenAI.BadRequestError && e.param === 'previous_response_id');
    // the older response continues still: a branch of the conversation
    const branch = await client.responses.create({ model: id, previous_response_id: first.id, input: 'And a lake?', max_output_tokens: 4, temperature: 0 });
    assert.equal(branch.usage!.input_tokens, promptTokens([...history.slice(0, 2), { role: 'user', content: 'And a lake?' }]));
  });

  it('function tools: a function_call item, and its output as an input item', async () => {
    const tools: OpenAI.Responses.FunctionTool[] = [{
      type: 'function', name: 'add', description: 'Add two integers', strict: true,
      parameters: { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 9 }, b: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['a', 'b'], additionalProperties: false },
    }];
    const r = await client.responses.create({ model: id, input: 'What is 2 plus 3?', tools, tool_choice: 'required', parallel_tool_calls: false, max_output_tokens: 120, temperature: 0 });
    const call = r.output.find((x) => x.type === 'function_call') as OpenAI.Responses.ResponseFunctionToolCall;
    assert.ok(call, JSON.stringify(r.output));
    assert.equal(call.name, 'add');
    const args = JSON.parse(call.arguments) as { a: number; b: number };
    assert.ok(Number.isInteger(args.a) && Number.isInteger(args.b), call.arguments);
    const next = await client.responses.create({
      model: id, previous_response_id: r.id, tools, tool_choice: 'none', max_output_tokens: 6, temperature: 0,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: String(args.a + args.b) }],
    });
    assert.equal(next.output[0]!.type, 'message');
    assert.ok(next.output_text.length > 0);
  });

  it('what cannot be served is a 400 naming the parameter', async () => {
    const bad = async (body: Record<string, unknown>, param: string) => {
      const r = await fetch(`${cluster.url}/v1/responses`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: id, input: 'x', ...body }) });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(((await r.json()) as { error: { param: string } }).error.param, param);
    };
    await bad({ made_up: 1 }, 'made_up');
    await bad({ background: true }, 'background');
    await bad({ top_logprobs: 2 }, 'top_logprobs');
    await bad({ input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 'input[0].content');
    await bad({ tools: [{ type: 'web_search' }] }, 'tools[0].type');
    await bad({ previous_response_id: 'resp_000000000000000000000000' }, 'previous_response_id');
    await bad({ temperature: 5 }, 'temperature');
    await bad({ input: [{ type: 'function_call_output', call_id: 'call_nope', output: '1' }] }, 'messages[0]');
  });
});
