import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ApiError } from './errors.ts';
import { parseChat, parseCompletion } from './openai-request.ts';

const refused = (param: string | null, re: RegExp) => (e: unknown) => e instanceof ApiError && e.status === 400 && e.param === param && re.test(e.message);

test('completion bodies: defaults, prompt forms, stop, logprobs, session', () => {
  const a = parseCompletion({ model: 'm', prompt: 'hi' });
  assert.deepEqual([a.maxTokens, a.temperature, a.topP, a.topK, a.minP, a.n, a.logprobs, a.stop, a.seed], [16, 1, 0.95, 40, 0.05, 1, null, [], null]);
  assert.deepEqual(parseCompletion({ model: 'm', prompt: ['hi'] }).prompt, { text: 'hi' });
  assert.deepEqual(parseCompletion({ model: 'm', prompt: [1, 2] }).prompt, { tokens: [1, 2] });
  assert.deepEqual(parseCompletion({ model: 'm', prompt: [[3]] }).prompt, { tokens: [3] });
  const b = parseCompletion({ model: 'm', prompt: 'x', stop: 'END', logprobs: 2, seed: -1, session_id: 'body' }, 'header');
  assert.deepEqual([b.stop, b.logprobs, b.seed, b.sessionId], [['END'], 2, 0xffffffff, 'body']);
  assert.equal(parseCompletion({ model: 'm', prompt: 'x' }, 'hdr').sessionId, 'hdr');
  assert.equal(a.ignoreEos, false);
  assert.equal(parseCompletion({ model: 'm', prompt: 'x', ignore_eos: true }).ignoreEos, true, "llama.cpp's and vLLM's extension");
  const cache = parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }], cache_salt: 'team-2', prompt_cache_key: 'faq' });
  assert.deepEqual([cache.cacheSalt, cache.promptCacheKey], ['team-2', 'faq'], "vLLM's cache_salt and OpenAI's prompt_cache_key");
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', cache_salt: 'x'.repeat(257) }), refused('cache_salt', /256/));
});

test('chat bodies: content parts, developer role, logprobs, max_completion_tokens', () => {
  const c = parseChat({ model: 'm', messages: [{ role: 'developer', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }], logprobs: true, top_logprobs: 3, max_completion_tokens: 7 });
  assert.deepEqual(c.prompt, { messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'ab' }] });
  assert.deepEqual([c.logprobs, c.maxTokens], [3, 7]);
  assert.equal(parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }] }).maxTokens, 0, 'the coordinator decides');
});

test('every bad field is a 400 naming it', () => {
  assert.throws(() => parseCompletion(null), (e) => e instanceof ApiError && e.code === 'invalid_body');
  assert.throws(() => parseCompletion({ prompt: 'x' }), refused('model', /required/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: ['a', 'b'] }), refused('prompt', /one prompt/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: [-1] }), refused('prompt', /token ids/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', n: 0 }), refused('n', /between 1 and 16/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', max_tokens: 1.5 }), refused('max_tokens', /integer/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }), refused('stop', /up to 4/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', stream: 'yes' }), refused('stream', /boolean/));
  assert.throws(() => parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }], ignore_eos: 1 }), refused('ignore_eos', /boolean/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', stream_options: { include_usage: true } }), refused('stream_options', /stream/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', echo: true }), refused('echo', /not supported/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', session_id: 'a.b' }), refused('session_id', /A-Z/));
  assert.deepEqual([...parseCompletion({ model: 'm', prompt: 'x', logit_bias: { 5: 1, 17: -100 } }).logitBias], [[5, 1], [17, -100]], "OpenAI's logit_bias");
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', logit_bias: { 5: 101 } }), refused('logit_bias', /-100 to 100/));
  assert.throws(() => parseCompletion({ model: 'm', prompt: 'x', logit_bias: { hello: 1 } }), refused('logit_bias', /token ids/));
  assert.throws(() => parseChat({ model: 'm', messages: [] }), refused('messages', /non-empty/));
  assert.throws(() => parseChat({ model: 'm', messages: [{ role: 'user', content: [{ type: 'image_url' }] }] }), refused('messages[0].content', /text/));
  assert.throws(() => parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }), refused('top_logprobs', /logprobs/));
  assert.throws(() => parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }], response_format: { type: 'xml' } }), refused('response_format.type', /json_schema/));
  assert.throws(() => parseChat({ model: 'm', messages: [{ role: 'user', content: 'x' }], prompt: 'x' }), (e) => e instanceof ApiError && e.code === 'unknown_parameter');
});
