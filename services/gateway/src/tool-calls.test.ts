// The tool-call parser: the same pieces whether the text comes whole or a character at a time;
// text that merely looks like a call, an unknown function or broken JSON stays text.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jsonValues, ToolCallParser, type ParsedPiece } from './tool-calls.ts';
import type { ToolFormat } from './tool-format.ts';

const NAMES = ['get_weather', 'add'];

/** Text and calls, with adjacent text merged. */
function run(format: ToolFormat, chunks: string[]): (string | { name: string; arguments: string })[] {
  const p = new ToolCallParser(format, NAMES);
  const pieces: ParsedPiece[] = [...chunks.flatMap((c) => p.push(c)), ...p.end()];
  const out: (string | { name: string; arguments: string })[] = [];
  for (const x of pieces) {
    if ('call' in x) out.push(x.call);
    else if (typeof out.at(-1) === 'string') out[out.length - 1] += x.text;
    else out.push(x.text);
  }
  return out;
}

/** Asserts `text` parses to `want`, fed whole and one character at a time. */
function same(format: ToolFormat, text: string, want: ReturnType<typeof run>): void {
  assert.deepEqual(run(format, [text]), want, `whole: ${JSON.stringify(text)}`);
  assert.deepEqual(run(format, [...text]), want, `by character: ${JSON.stringify(text)}`);
}

describe('tool-call parser', () => {
  it('hermes: text, then calls with compact JSON arguments; whitespace around calls dropped', () => {
    same('hermes', 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n', [
      'Let me check.', { name: 'get_weather', arguments: '{"city":"Paris"}' }, { name: 'add', arguments: '{"a":1,"b":2}' },
    ]);
    same('hermes', '<tool_call>{"name":"add","arguments":"{\\"a\\": 3}"}</tool_call>', [{ name: 'add', arguments: '{"a":3}' }]);
  });

  it('hermes: what is not a call stays text, nothing lost', () => {
    same('hermes', 'a < b and <tool_ is not a tag', ['a < b and <tool_ is not a tag']);
    same('hermes', 'x <tool_call>{"name": "rm_rf", "arguments": {}}</tool_call> y', ['x <tool_call>{"name": "rm_rf", "arguments": {}}</tool_call> y']);
    same('hermes', '<tool_call>{"name": "add", "arguments": {"a": </tool_call>', ['<tool_call>{"name": "add", "arguments": {"a": </tool_call>']);
    // cut off by max_tokens: an unclosed call that parses is still a call; one that does not is text
    same('hermes', '<tool_call>\n{"name": "add", "arguments": {"a": 1}}', [{ name: 'add', arguments: '{"a":1}' }]);
    same('hermes', '<tool_call>\n{"name": "add", "argu', ['<tool_call>\n{"name": "add", "argu']);
    // plain answers keep their trailing whitespace
    same('hermes', 'Hello there \n', ['Hello there \n']);
  });

  it('hermes: holds back only what could begin a call', () => {
    const p = new ToolCallParser('hermes', NAMES);
    assert.deepEqual(p.push('Sure <tool'), [{ text: 'Sure' }]);
    assert.deepEqual(p.push('box> done'), [{ text: ' <toolbox> done' }]);
  });

  it('llama3: a JSON answer of calls, or text', () => {
    same('llama3', '{"name": "get_weather", "parameters": {"city": "Oslo"}}', [{ name: 'get_weather', arguments: '{"city":"Oslo"}' }]);
    same('llama3', '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}; {"name": "add", "parameters": {"a": 3, "b": 4}}', [
      { name: 'add', arguments: '{"a":1,"b":2}' }, { name: 'add', arguments: '{"a":3,"b":4}' },
    ]);
    same('llama3', 'The weather is {"nice"}.', ['The weather is {"nice"}.']);
    same('llama3', '{"answer": 42}', ['{"answer": 42}']);
  });

  it('mistral: calls after [TOOL_CALLS]', () => {
    same('mistral', 'Checking.[TOOL_CALLS][{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]', [
      'Checking.', { name: 'add', arguments: '{"a":1,"b":2}' }, { name: 'get_weather', arguments: '{"city":"Rome"}' },
    ]);
    same('mistral', '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}', ['[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}']);
  });

  it('jsonValues splits values written one after another and refuses anything else', () => {
    assert.deepEqual(jsonValues('{"a": "}"} ; [1, {"b": "\\"]"}]'), [{ a: '}' }, [1, { b: '"]' }]]);
    assert.equal(jsonValues('{"a": 1} tail'), null);
    assert.equal(jsonValues('{"a": 1'), null);
    assert.equal(jsonValues('{"a": 1,}'), null);
  });
});
