// Tool requests, prompts and grammars: what a request may say (each mistake a 400 naming the
// parameter), how tools, calls and results are written for each family, and grammars that
// libllama's own sampler holds to exactly the calls allowed.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Vocab, vocabDir } from '@strata/ggml';
import { ApiError } from './errors.ts';
import { grammarVerdict } from './grammar-verdict.ts';
import { parseChat } from './openai-request.ts';
import { enforceableTools, toolFormatOf, toolGrammar, toolTurns, ToolSchemaError } from './tool-format.ts';
import { parseToolRequest } from './tool-request.ts';

const vocab = Vocab.load(join(vocabDir(), 'ggml-vocab-llama-spm.gguf'));
after(() => vocab.dispose());

const WEATHER = { type: 'function', function: { name: 'get_weather', description: 'Weather now', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } };
const ADD = { type: 'function', function: { name: 'add', parameters: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'] } } };

/** The parameter a 400 names, from parsing a chat body with these extra fields. */
function refusal(extra: Record<string, unknown>, messages: unknown[] = [{ role: 'user', content: 'x' }]): string | null {
  try {
    parseChat({ model: 'm', messages, ...extra });
    return 'accepted';
  } catch (err) {
    assert.ok(err instanceof ApiError && err.status === 400, String(err));
    return err.param;
  }
}

describe('tool requests', () => {
  it('takes tools, every tool_choice form and the legacy functions', () => {
    const r = parseToolRequest({ tools: [WEATHER, ADD] });
    assert.deepEqual([r.choice, r.parallel, r.legacy], [{ mode: 'auto', allowed: ['get_weather', 'add'] }, true, false]);
    assert.deepEqual(parseToolRequest({ tools: [WEATHER, ADD], tool_choice: { type: 'function', function: { name: 'add' } } }).choice, { mode: 'required', allowed: ['add'] });
    assert.deepEqual(parseToolRequest({ tools: [WEATHER, ADD], tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'required', tools: [{ type: 'function', function: { name: 'get_weather' } }] } } }).choice, { mode: 'required', allowed: ['get_weather'] });
    assert.equal(parseToolRequest({ tools: [WEATHER], tool_choice: 'none' }).choice.mode, 'none');
    assert.equal(parseToolRequest({}).choice.mode, 'none');
    const legacy = parseToolRequest({ functions: [WEATHER.function], function_call: { name: 'get_weather' } });
    assert.deepEqual([legacy.choice, legacy.parallel, legacy.legacy], [{ mode: 'required', allowed: ['get_weather'] }, false, true]);
    assert.equal(parseToolRequest({ tools: [WEATHER], parallel_tool_calls: false }).parallel, false);
  });

  it('refuses what OpenAI refuses, naming the parameter', () => {
    assert.equal(refusal({ tools: [{ type: 'web_search' }] }), 'tools[0].type');
    assert.equal(refusal({ tools: [{ type: 'function', function: { name: 'bad name' } }] }), 'tools[0].function.name');
    assert.equal(refusal({ tools: [WEATHER, WEATHER] }), 'tools[1].function.name');
    assert.equal(refusal({ tools: [WEATHER], tool_choice: { type: 'function', function: { name: 'add' } } }), 'tool_choice.function.name');
    assert.equal(refusal({ tool_choice: 'required' }), 'tool_choice');
    assert.equal(refusal({ tools: [WEATHER], functions: [ADD.function] }), 'functions');
    assert.equal(refusal({ tools: [WEATHER], parallel_tool_calls: 'yes' }), 'parallel_tool_calls');
    assert.equal(refusal({ tools: [{ type: 'function', function: { name: 'f', parameters: [] } }] }), 'tools[0].function.parameters');
    // a tool result must answer an open call
    assert.equal(refusal({}, [{ role: 'user', content: 'x' }, { role: 'tool', tool_call_id: 'call_1', content: '1' }]), 'messages[1]');
    assert.equal(refusal({}, [{ role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function', function: { name: 'f' } }] }]), 'messages[0].tool_calls[0].function');
    assert.equal(refusal({}, [{ role: 'assistant', tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }] }, { role: 'tool', tool_call_id: 'c1', content: 'ok' }]), 'accepted');
  });
});

describe('tool prompts', () => {
  it('knows the families by their templates', () => {
    assert.equal(toolFormatOf('{% if tools %}<tool_call>{% endif %}<|im_start|>'), 'hermes');
    assert.equal(toolFormatOf('<|start_header_id|>'), 'llama3');
    assert.equal(toolFormatOf('[INST] [TOOL_CALLS]'), 'mistral');
    assert.equal(toolFormatOf('gemma'), 'hermes');
    assert.equal(toolFormatOf('chatml'), 'hermes');
  });

  it('hermes: tools in the system prompt, calls in tags, consecutive results in one user turn', () => {
    const spec = parseChat({
      model: 'm', tools: [WEATHER, ADD], tool_choice: { type: 'function', function: { name: 'get_weather' } },
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Weather in Paris and Rome?' },
        { role: 'assistant', content: null, tool_calls: [
          { id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{ "city": "Paris" }' } },
          { id: 'c2', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
        ] },
        { role: 'tool', tool_call_id: 'c1', content: 'sunny' },
        { role: 'tool', tool_call_id: 'c2', content: 'rain' },
      ],
    });
    const turns = toolTurns('hermes', (spec.prompt as { messages: never }).messages, spec.tools);
    assert.deepEqual(turns.map((t) => t.role), ['system', 'user', 'assistant', 'user']);
    assert.ok(turns[0]!.content.startsWith('Be brief.\n\n# Tools'));
    assert.ok(turns[0]!.content.includes('"name":"get_weather"') && !turns[0]!.content.includes('"name":"add"'), 'only the allowed tool is offered');
    assert.equal(turns[2]!.content, '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Rome"}}\n</tool_call>');
    assert.equal(turns[3]!.content, '<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>');
  });

  it('llama3 and mistral write calls and results their way; tool_choice none offers nothing', () => {
    const spec = parseChat({
      model: 'm', tools: [ADD], messages: [
        { role: 'user', content: '1+2?' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'c1', type: 'function', function: { name: 'add', arguments: '{"a":1,"b":2}' } }] },
        { role: 'tool', tool_call_id: 'c1', content: '3' },
      ],
    });
    const messages = (spec.prompt as { messages: never }).messages;
    const l3 = toolTurns('llama3', messages, spec.tools);
    assert.deepEqual(l3.map((t) => t.role), ['system', 'user', 'assistant', 'ipython']);
    assert.equal(l3[2]!.content, '{"name": "add", "parameters": {"a":1,"b":2}}');
    const mi = toolTurns('mistral', messages, spec.tools);
    assert.equal(mi[2]!.content, '[TOOL_CALLS][{"name": "add", "arguments": {"a":1,"b":2}}]');
    assert.equal(mi[3]!.content, '[TOOL_RESULTS]{"call_id":"c1","content":"3"}[/TOOL_RESULTS]');
    const none = toolTurns('hermes', messages, { ...spec.tools, choice: { mode: 'none', allowed: [] } });
    assert.deepEqual(none.map((t) => t.role), ['user', 'assistant', 'user']);
  });
});

describe('tool grammars', () => {
  const req = (choice: unknown, parallel = true) => parseToolRequest({ tools: [WEATHER, ADD], tool_choice: choice, parallel_tool_calls: parallel });

  it('hermes: only calls of allowed functions with arguments of their schemas', () => {
    const r = req('required', false);
    const g = toolGrammar('hermes', r, enforceableTools(r.tools));
    assert.equal(grammarVerdict(vocab, g, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'), 'complete');
    assert.equal(grammarVerdict(vocab, g, '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo"}}\n</tool_call>'), 'complete');
    assert.equal(grammarVerdict(vocab, g, '<tool_call>\n{"name": "add", "arguments": {"a": "1"'), 'rejected at 47');
    assert.equal(grammarVerdict(vocab, g, '<tool_call>\n{"name": "rm"'), 'rejected at 22');
    assert.equal(grammarVerdict(vocab, g, 'Sure'), 'rejected at 0');
    // one call only without parallel calls; several with
    const one = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>';
    assert.equal(grammarVerdict(vocab, g, `${one}\n`), `rejected at ${one.length}`);
    const p = req('required');
    const gp = toolGrammar('hermes', p, enforceableTools(p.tools));
    const two = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>';
    assert.equal(grammarVerdict(vocab, gp, two), 'complete');
  });

  it('a named function, llama3 and mistral shapes, and calls or a JSON answer', () => {
    const named = req({ type: 'function', function: { name: 'get_weather' } });
    const g = toolGrammar('llama3', named, enforceableTools(named.tools));
    assert.equal(grammarVerdict(vocab, g, '{"name": "get_weather", "parameters": {"city": "Oslo"}}'), 'complete');
    assert.equal(grammarVerdict(vocab, g, '{"name": "add"'), 'rejected at 10');
    const all = req('required');
    const gm = toolGrammar('mistral', all, enforceableTools(all.tools));
    assert.equal(grammarVerdict(vocab, gm, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "x"}}]'), 'complete');
    const either = toolGrammar('hermes', req('auto'), enforceableTools(all.tools), (b) => b.add('answer', '"{}"'));
    assert.equal(grammarVerdict(vocab, either, '{}'), 'complete');
    assert.equal(grammarVerdict(vocab, either, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'), 'complete');
  });

  it('a schema the grammar cannot enforce: any object for a tool, a refusal for a strict one', () => {
    const loose = { type: 'function', function: { name: 'find', parameters: { type: 'object', properties: { q: { type: 'string', pattern: '^a' } } } } };
    const r = parseToolRequest({ tools: [loose], tool_choice: 'required' });
    const enforced = enforceableTools(r.tools);
    assert.equal(enforced.size, 0);
    assert.equal(grammarVerdict(vocab, toolGrammar('hermes', r, enforced), '<tool_call>\n{"name": "find", "arguments": {"z": [1]}}\n</tool_call>'), 'complete');
    const strict = parseToolRequest({ tools: [WEATHER, { type: 'function', function: { ...loose.function, strict: true } }] });
    assert.throws(() => enforceableTools(strict.tools), (e: unknown) => e instanceof ToolSchemaError && e.index === 1);
  });
});
