// OpenAI response bodies and stream chunks for both endpoints, from one choice collector.
import type { FinishText, TokenOut, Usage } from './generation.ts';
import type { GenerationSpec } from './openai-request.ts';

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
  finish: FinishText | null;
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
      index, message: { role: 'assistant', content: c.text, refusal: null }, logprobs: lp ? chatLogprobs(c.tokens) : null, finish_reason: c.finish,
    })),
    usage: usageBody(usage),
  };
}

/** One stream chunk: new text of a choice, or its end. */
export function chunkBody(spec: GenerationSpec, meta: ResponseMeta, index: number, text: string, tokens: TokenOut[], finish: FinishText | null, first: boolean, offset: number): unknown {
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

/** The last chunk of a stream that asked for usage. */
export function usageChunk(spec: GenerationSpec, meta: ResponseMeta, usage: Usage): unknown {
  return {
    id: meta.id, object: spec.kind === 'completion' ? 'text_completion' : 'chat.completion.chunk', created: meta.created, model: meta.model,
    system_fingerprint: meta.fingerprint, choices: [], usage: usageBody(usage),
  };
}
