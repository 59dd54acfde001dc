// OpenAI response bodies and stream chunks for both endpoints, from one choice collector.
import type { FinishText, TokenOut, Usage } from './generation.ts';
import type { GenerationSpec } from './openai-request.ts';
import type { ToolCall } from './tool-request.ts';

/** Fields every response and chunk of one request shares. */
export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
  fingerprint: string;
}

/** A choice as it accumulates. */
export interface ChoiceState {
  text: string;
  tokens: TokenOut[];
  /** the tool calls the model made */
  calls: ToolCall[];
  finish: FinishReasonText | null;
}

/** A choice's finish_reason: why generation ended, or that it ended in tool calls. */
export type FinishReasonText = FinishText | 'tool_calls' | 'function_call';

/** The assistant message of a chat choice: its text (null when it only called tools) and calls. */
function chatMessage(spec: GenerationSpec, c: ChoiceState) {
  const message: Record<string, unknown> = { role: 'assistant', content: c.calls.length > 0 && c.text === '' ? null : c.text, refusal: null };
  if (c.calls.length > 0 && spec.tools.legacy) {
    message.function_call = { name: c.calls[0]!.name, arguments: c.calls[0]!.arguments };
  } else if (c.calls.length > 0) {
    message.tool_calls = c.calls.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.arguments } }));
  }
  return message;
}

function usageBody(u: Usage) {
  return { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens, prompt_tokens_details: { cached_tokens: u.cachedTokens } };
}

function completionLogprobs(tokens: TokenOut[], offset0: number) {
  let off = offset0;
  const text_offset: number[] = [];
  for (const t of tokens) {
    text_offset.push(off);
    off += t.text.length;
  }
  return {
    tokens: tokens.map((t) => t.text),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map((x) => [x.text, x.logprob]))),
    text_offset,
  };
}

function chatLogprobs(tokens: TokenOut[]) {
  return {
    content: tokens.map((t) => ({
      token: t.text, logprob: t.logprob, bytes: t.bytes,
      top_logprobs: t.top.map((x) => ({ token: x.text, logprob: x.logprob, bytes: x.bytes })),
    })),
  };
}

/** The whole response of a request that did not stream. */
export function finalBody(spec: GenerationSpec, meta: ResponseMeta, choices: ChoiceState[], usage: Usage): unknown {
  const lp = spec.logprobs !== null;
  if (spec.kind === 'completion') {
    return {
      id: meta.id, object: 'text_completion', created: meta.created, model: meta.model, system_fingerprint: meta.fingerprint,
      choices: choices.map((c, index) => ({ index, text: c.text, logprobs: lp ? completionLogprobs(c.tokens, 0) : null, finish_reason: c.finish })),
      usage: usageBody(usage),
    };
  }
  return {
    id: meta.id, object: 'chat.completion', created: meta.created, model: meta.model, system_fingerprint: meta.fingerprint, service_tier: 'default',
    choices: choices.map((c, index) => ({
      index, message: chatMessage(spec, c), logprobs: lp ? chatLogprobs(c.tokens) : null, finish_reason: c.finish,
    })),
    usage: usageBody(usage),
  };
}

/** One stream chunk: new text of a choice, or its end. */
export function chunkBody(spec: GenerationSpec, meta: ResponseMeta, index: number, text: string, tokens: TokenOut[], finish: FinishReasonText | null, first: boolean, offset: number): unknown {
  const lp = spec.logprobs !== null && tokens.length > 0;
  if (spec.kind === 'completion') {
    return {
      id: meta.id, object: 'text_completion', created: meta.created, model: meta.model, system_fingerprint: meta.fingerprint,
      choices: [{ index, text, logprobs: lp ? completionLogprobs(tokens, offset) : null, finish_reason: finish }],
    };
  }
  const delta: Record<string, string> = {};
  if (first) delta.role = 'assistant';
  if (finish === null) delta.content = text;
  return {
    id: meta.id, object: 'chat.completion.chunk', created: meta.created, model: meta.model, system_fingerprint: meta.fingerprint, service_tier: 'default',
    choices: [{ index, delta, logprobs: lp ? chatLogprobs(tokens) : null, finish_reason: finish }],
  };
}

/**
 * The chunks of one tool call, as OpenAI streams them: the call's id, type and name with empty
 * arguments, then its arguments (`k`: the call's place among the choice's calls).
 */
export function toolCallChunks(spec: GenerationSpec, meta: ResponseMeta, index: number, k: number, call: ToolCall): unknown[] {
  const chunk = (delta: unknown) => ({
    id: meta.id, object: 'chat.completion.chunk', created: meta.created, model: meta.model, system_fingerprint: meta.fingerprint, service_tier: 'default',
    choices: [{ index, delta, logprobs: null, finish_reason: null }],
  });
  if (spec.tools.legacy) return [chunk({ function_call: { name: call.name, arguments: '' } }), chunk({ function_call: { arguments: call.arguments } })];
  return [
    chunk({ tool_calls: [{ index: k, id: call.id, type: 'function', function: { name: call.name, arguments: '' } }] }),
    chunk({ tool_calls: [{ index: k, function: { arguments: call.arguments } }] }),
  ];
}

/** The last chunk of a stream that asked for usage. */
export function usageChunk(spec: GenerationSpec, meta: ResponseMeta, usage: Usage): unknown {
  return {
    id: meta.id, object: spec.kind === 'completion' ? 'text_completion' : 'chat.completion.chunk', created: meta.created, model: meta.model,
    system_fingerprint: meta.fingerprint, choices: [], usage: usageBody(usage),
  };
}
