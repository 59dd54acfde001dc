// OpenAI request bodies, checked field by field into one internal shape. Every problem is an
// ApiError(400) naming the parameter, before anything reaches the cluster.
import { isId } from '@strata/wire';
import { ApiError } from './errors.ts';
import { messageCalls, parseToolRequest, type ToolCall, type ToolRequest } from './tool-request.ts';

/** A chat message as the request gave it. */
export interface ChatTurn {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  /** an assistant turn's tool calls */
  calls?: ToolCall[];
  /** a tool turn: the call it answers */
  callId?: string;
}

/** What to generate, from either endpoint. */
export interface GenerationSpec {
  kind: 'completion' | 'chat';
  model: string;
  /** completion: text or token ids; chat: the messages */
  prompt: { text: string } | { tokens: number[] } | { messages: ChatTurn[] };
  /** 0: up to the end of the context */
  maxTokens: number;
  stream: boolean;
  includeUsage: boolean;
  stop: string[];
  n: number;
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  repeatPenalty: number;
  frequencyPenalty: number;
  presencePenalty: number;
  seed: number | null;
  /** null: no log-probabilities; else the alternatives per token (0..20) */
  logprobs: number | null;
  responseFormat: { type: 'text' } | { type: 'json_object' } | { type: 'json_schema'; schema: unknown };
  /** GBNF grammar (extension, as llama.cpp's server) */
  grammar: string | null;
  /** keep generating past end-of-generation tokens until max_tokens (extension, as llama.cpp's server and vLLM) */
  ignoreEos: boolean;
  sessionId: string;
  /** requests share cached prompt prefixes only with the same salt (vLLM's cache_salt; '' none) */
  cacheSalt: string;
  /** OpenAI's prompt_cache_key: requests of one key go where that prefix was cached ('' none) */
  promptCacheKey: string;
  /** the prefix-cache scope (api-keys.ts cacheScope), set by the gateway for the caller */
  cacheScope: string;
  /** token id -> bias added to its logit (OpenAI's logit_bias) */
  logitBias: Map<number, number>;
  /** the functions the model may call, and how (chat; none for completions) */
  tools: ToolRequest;
  /** an embedding: the prompt's pooled final hidden state instead of generated tokens */
  embed: boolean;
}

type Body = Record<string, unknown>;

const COMMON = new Set(['model', 'max_tokens', 'stream', 'stream_options', 'stop', 'n', 'temperature', 'top_p', 'top_k', 'min_p',
  'repeat_penalty', 'frequency_penalty', 'presence_penalty', 'seed', 'logprobs', 'response_format', 'grammar', 'ignore_eos', 'session_id', 'user',
  'cache_salt', 'prompt_cache_key', 'metadata', 'store', 'service_tier', 'safety_identifier']);
const COMPLETION = new Set([...COMMON, 'prompt', 'echo', 'best_of', 'suffix', 'logit_bias']);
const CHAT = new Set([...COMMON, 'messages', 'top_logprobs', 'max_completion_tokens', 'logit_bias', 'parallel_tool_calls',
  'reasoning_effort', 'verbosity', 'modalities', 'audio', 'prediction', 'web_search_options', 'tools', 'tool_choice', 'functions', 'function_call']);

/**
 * OpenAI parameters taken without effect here, each checked as OpenAI checks it (docs/api.md):
 * what they ask of a stored completion, a tier, a reasoning model or a moderation log has no
 * counterpart in Strata. Answers carry service_tier 'default'.
 */
function accepted(b: Body): void {
  const m = b.metadata;
  if (m !== undefined && m !== null) {
    if (typeof m !== 'object' || Array.isArray(m)) throw bad('metadata', "'metadata' must be an object of strings");
    const entries = Object.entries(m as Body);
    if (entries.length > 16) throw bad('metadata', "'metadata' holds at most 16 keys");
    for (const [k, v] of entries) {
      if (k.length > 64 || typeof v !== 'string' || v.length > 512) throw bad('metadata', "'metadata' keys are at most 64 characters and values strings of at most 512");
    }
  }
  bool(b, 'store', false);
  oneOf(b, 'service_tier', ['auto', 'default', 'flex', 'scale', 'priority']);
  oneOf(b, 'reasoning_effort', ['none', 'minimal', 'low', 'medium', 'high']);
  oneOf(b, 'verbosity', ['low', 'medium', 'high']);
  short(b, 'safety_identifier');
  short(b, 'user');
  const mod = b.modalities;
  if (mod !== undefined && mod !== null) {
    if (!Array.isArray(mod) || mod.some((x) => typeof x !== 'string')) throw bad('modalities', "'modalities' must be an array of strings");
    if (mod.some((x) => x !== 'text')) throw new ApiError(400, 'unsupported_parameter', "only the 'text' modality is served (no audio)", 'modalities');
  }
  if (b.audio !== undefined && b.audio !== null) throw new ApiError(400, 'unsupported_parameter', "'audio' output is not served", 'audio');
  if (b.web_search_options !== undefined && b.web_search_options !== null) throw new ApiError(400, 'unsupported_parameter', "'web_search_options': no web search here", 'web_search_options');
  const p = b.prediction;
  if (p !== undefined && p !== null && (typeof p !== 'object' || (p as Body).type !== 'content')) throw bad('prediction', "'prediction' must be {\"type\": \"content\", \"content\": …}");
}

/** OpenAI's logit_bias: token ids (as keys) to biases from -100 to 100, at most 1024 of them. */
function logitBias(v: unknown): Map<number, number> {
  const out = new Map<number, number>();
  if (v === undefined || v === null) return out;
  if (typeof v !== 'object' || Array.isArray(v)) throw bad('logit_bias', "'logit_bias' must be an object of token ids to biases");
  const entries = Object.entries(v as Body);
  if (entries.length > 1024) throw bad('logit_bias', "'logit_bias' holds at most 1024 tokens");
  for (const [k, b] of entries) {
    if (!/^\d{1,9}$/.test(k)) throw bad('logit_bias', `'logit_bias' keys are token ids, got '${k}'`);
    if (typeof b !== 'number' || !Number.isFinite(b) || b < -100 || b > 100) throw bad('logit_bias', `'logit_bias' values are numbers from -100 to 100, got ${JSON.stringify(b)} for token ${k}`);
    out.set(Number(k), b);
  }
  return out;
}

function oneOf(b: Body, k: string, values: readonly string[]): void {
  const v = b[k];
  if (v === undefined || v === null) return;
  if (typeof v !== 'string' || !values.includes(v)) throw bad(k, `'${k}' must be one of ${values.join(', ')}`);
}

function bad(param: string, message: string): ApiError {
  return new ApiError(400, 'invalid_value', message, param);
}

function num(b: Body, k: string, fallback: number, min: number, max: number, int = false): number {
  const v = b[k];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || (int && !Number.isInteger(v))) throw bad(k, `'${k}' must be ${int ? 'an integer' : 'a number'}`);
  if (v < min || v > max) throw bad(k, `'${k}' must be between ${min} and ${max}, got ${v}`);
  return v;
}

function bool(b: Body, k: string, fallback: boolean): boolean {
  const v = b[k];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') throw bad(k, `'${k}' must be a boolean`);
  return v;
}

function str(b: Body, k: string): string | null {
  const v = b[k];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'string') throw bad(k, `'${k}' must be a string`);
  return v;
}

function stops(v: unknown): string[] {
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || list.some((s) => typeof s !== 'string' || s.length === 0)) {
    throw bad('stop', "'stop' is a non-empty string or up to 4 of them");
  }
  return list as string[];
}

function responseFormat(v: unknown): GenerationSpec['responseFormat'] {
  if (v === undefined || v === null) return { type: 'text' };
  if (typeof v !== 'object' || Array.isArray(v)) throw bad('response_format', "'response_format' must be an object");
  const t = (v as Body).type;
  if (t === 'text' || t === 'json_object') return { type: t };
  if (t === 'json_schema') {
    const js = (v as Body).json_schema;
    if (typeof js !== 'object' || js === null || Array.isArray(js)) throw bad('response_format.json_schema', "'json_schema' must be an object with a 'schema'");
    const schema = (js as Body).schema;
    if (typeof schema !== 'object' || schema === null) throw bad('response_format.json_schema.schema', "'json_schema.schema' must be a JSON schema object");
    return { type: 'json_schema', schema };
  }
  throw bad('response_format.type', "'response_format.type' must be text, json_object or json_schema");
}

/** A string parameter of at most 256 characters, '' when absent. */
function short(b: Body, key: string): string {
  const v = str(b, key) ?? '';
  if (v.length > 256) throw bad(key, `'${key}' must be at most 256 characters`);
  return v;
}

function common(b: Body, kind: GenerationSpec['kind'], prompt: GenerationSpec['prompt'], headerSession: string | undefined): GenerationSpec {
  const known = kind === 'chat' ? CHAT : COMPLETION;
  for (const k of Object.keys(b)) if (!known.has(k)) throw new ApiError(400, 'unknown_parameter', `unknown parameter '${k}'`, k);
  accepted(b);
  const model = str(b, 'model');
  if (!model) throw new ApiError(400, 'missing_required_parameter', "'model' is required", 'model');
  const so = b.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw bad('stream_options', "'stream_options' must be an object");
  const includeUsage = so ? bool(so as Body, 'include_usage', false) : false;
  const stream = bool(b, 'stream', false);
  if (so && !stream) throw bad('stream_options', "'stream_options' needs 'stream': true");
  const seed = b.seed === undefined || b.seed === null ? null : num(b, 'seed', 0, -(2 ** 63), 2 ** 64, true);
  const sessionId = str(b, 'session_id') ?? headerSession ?? '';
  if (sessionId && !isId(sessionId)) throw bad('session_id', "'session_id' must be 1-128 of A-Z a-z 0-9 _ -");
  const maxKey = kind === 'chat' && b.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens';
  return {
    kind, model, prompt,
    maxTokens: num(b, maxKey, kind === 'completion' ? 16 : 0, 1, 1 << 20, true),
    stream, includeUsage, stop: stops(b.stop),
    n: num(b, 'n', 1, 1, 16, true),
    temperature: num(b, 'temperature', 1, 0, 2),
    topP: num(b, 'top_p', 0.95, 0, 1),
    topK: num(b, 'top_k', 40, 0, 1 << 20, true),
    minP: num(b, 'min_p', 0.05, 0, 1),
    repeatPenalty: num(b, 'repeat_penalty', 1, 0, 10),
    frequencyPenalty: num(b, 'frequency_penalty', 0, -2, 2),
    presencePenalty: num(b, 'presence_penalty', 0, -2, 2),
    seed: seed === null ? null : Number(BigInt.asUintN(32, BigInt(seed))),
    logprobs: null,
    responseFormat: responseFormat(b.response_format),
    grammar: str(b, 'grammar'),
    ignoreEos: bool(b, 'ignore_eos', false),
    sessionId,
    cacheSalt: short(b, 'cache_salt'),
    promptCacheKey: short(b, 'prompt_cache_key'),
    cacheScope: '',
    logitBias: logitBias(b.logit_bias),
    tools: NO_TOOLS,
    embed: false,
  };
}

/** No tools: the answer is text. */
export const NO_TOOLS: ToolRequest = { tools: [], choice: { mode: 'none', allowed: [] }, parallel: false, legacy: false };

/** Reads a POST /v1/completions body. */
export function parseCompletion(body: unknown, headerSession?: string): GenerationSpec {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
  const b = body as Body;
  let prompt: GenerationSpec['prompt'];
  const p = b.prompt;
  if (typeof p === 'string') prompt = { text: p };
  else if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') prompt = { text: p[0] };
  else if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t) && t >= 0)) prompt = { tokens: p as number[] };
  else if (Array.isArray(p) && p.length === 1 && Array.isArray(p[0]) && p[0].length > 0 && p[0].every((t: unknown) => Number.isInteger(t) && (t as number) >= 0)) prompt = { tokens: p[0] as number[] };
  else if (p === undefined) throw new ApiError(400, 'missing_required_parameter', "'prompt' is required", 'prompt');
  else throw bad('prompt', "'prompt' must be a string, one string in an array, or token ids (one prompt per request)");
  if (b.echo === true) throw new ApiError(400, 'unsupported_parameter', "'echo' is not supported", 'echo');
  if (b.suffix !== undefined && b.suffix !== null) throw new ApiError(400, 'unsupported_parameter', "'suffix' is not supported", 'suffix');
  if (b.best_of !== undefined && b.best_of !== null && b.best_of !== 1) throw new ApiError(400, 'unsupported_parameter', "'best_of' is not supported", 'best_of');
  const spec = common(b, 'completion', prompt, headerSession);
  if (b.logprobs !== undefined && b.logprobs !== null) spec.logprobs = num(b, 'logprobs', 0, 0, 5, true);
  return spec;
}

/** Reads a POST /v1/chat/completions body. */
export function parseChat(body: unknown, headerSession?: string): GenerationSpec {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
  const b = body as Body;
  const ms = b.messages;
  if (!Array.isArray(ms) || ms.length === 0) throw new ApiError(400, 'missing_required_parameter', "'messages' must be a non-empty array", 'messages');
  const messages = ms.map((m, i) => chatTurn(m, i));
  checkToolResults(messages);
  const spec = common(b, 'chat', { messages }, headerSession);
  spec.tools = parseToolRequest(b);
  if (bool(b, 'logprobs', false)) spec.logprobs = num(b, 'top_logprobs', 0, 0, 20, true);
  else if (b.top_logprobs !== undefined && b.top_logprobs !== null) throw bad('top_logprobs', "'top_logprobs' needs 'logprobs': true");
  return spec;
}

const ROLES = ['system', 'developer', 'user', 'assistant', 'tool', 'function'];

/** A message's text: a string, or text parts joined (no images or audio). */
function messageText(content: unknown, param: string, nullable: boolean): string {
  if (typeof content === 'string') return content;
  if ((content === null || content === undefined) && nullable) return '';
  if (Array.isArray(content) && content.every((c) => typeof c === 'object' && c !== null && ['text', 'refusal'].includes((c as Body).type as string))) {
    return content.map((c) => ((c as Body).text ?? (c as Body).refusal ?? '') as string).join('');
  }
  throw bad(param, "'content' must be a string or text parts (no images or audio)");
}

/** One message of `messages`: developer counts as system, the legacy function role as tool. */
function chatTurn(m: unknown, i: number): ChatTurn {
  if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(`messages[${i}]`, 'a message is an object');
  const b = m as Body;
  const role = b.role;
  if (typeof role !== 'string' || !ROLES.includes(role)) throw bad(`messages[${i}].role`, "'role' must be system, developer, user, assistant or tool");
  if (role === 'assistant') {
    const calls = messageCalls(b, i);
    return { role, content: messageText(b.content, `messages[${i}].content`, true), ...(calls.length > 0 ? { calls } : {}) };
  }
  if (role === 'tool' || role === 'function') {
    const id = role === 'tool' ? b.tool_call_id : b.name;
    if (typeof id !== 'string' || id === '') throw bad(`messages[${i}].${role === 'tool' ? 'tool_call_id' : 'name'}`, `a ${role} message needs '${role === 'tool' ? 'tool_call_id' : 'name'}'`);
    return { role: 'tool', content: messageText(b.content, `messages[${i}].content`, false), callId: id };
  }
  return { role: role === 'developer' ? 'system' : (role as 'system' | 'user'), content: messageText(b.content, `messages[${i}].content`, false) };
}

/**
 * Each tool result answers a call of the assistant turn before it (by id; a legacy function
 * result by the function's name), as OpenAI requires.
 */
function checkToolResults(turns: readonly ChatTurn[]): void {
  let open: ToolCall[] = [];
  turns.forEach((t, i) => {
    if (t.role === 'assistant') open = t.calls ?? [];
    else if (t.role === 'tool') {
      if (!open.some((c) => c.id === t.callId || c.name === t.callId)) {
        throw bad(`messages[${i}]`, `a tool message must answer a call of the assistant message before it; no call '${t.callId ?? ''}' is open`);
      }
    } else open = [];
  });
}
