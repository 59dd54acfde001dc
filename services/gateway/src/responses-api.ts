// OpenAI's Responses API on top of chat completions: a request is read into chat messages and
// chat parameters (which parseChat then checks like any chat request), and the answer is written
// as response items — output_text messages and function_call items — whole or as the typed
// stream events OpenAI's clients read.
import { randomBytes } from 'node:crypto';
import { ApiError } from './errors.ts';
import type { FinishText, GenerationSink, Usage } from './generation.ts';
import { ToolCallParser, type ParsedPiece } from './tool-calls.ts';
import type { ToolFormat } from './tool-format.ts';
import type { ToolRequest } from './tool-request.ts';

type Body = Record<string, unknown>;

/** A Responses request read into chat terms. */
export interface ResponsesRequest {
  model: string;
  /** the request's input as chat messages (instructions not included) */
  input: Body[];
  /** a system message put first, for this response only (OpenAI's instructions do not carry over) */
  instructions: string | null;
  /** chat-completions parameters it maps to (messages, model and session added by the caller) */
  chat: Body;
  previousId: string | null;
  store: boolean;
  stream: boolean;
  /** what the response object echoes of the request */
  echo: Body;
}

/** Parameters that mean the same in both APIs. */
const SAME = ['temperature', 'top_p', 'parallel_tool_calls', 'metadata', 'user', 'safety_identifier', 'prompt_cache_key', 'service_tier', 'stream', 'top_k', 'min_p', 'seed', 'cache_salt'];
/** Parameters of the Responses API that Strata does not serve: a 400 that says so (docs/api.md). */
const REFUSED = ['top_logprobs', 'conversation', 'prompt', 'max_tool_calls'];
/** Parameters taken without effect (no counterpart here; docs/api.md). */
const ACCEPTED = ['truncation', 'include', 'reasoning', 'store', 'previous_response_id', 'instructions', 'input', 'model', 'max_output_tokens', 'tools', 'tool_choice', 'text', 'background', 'stream_options'];

function bad(param: string, message: string): ApiError {
  return new ApiError(400, 'invalid_value', message, param);
}

function isRecord(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Text of a message's content: a string or input/output text parts. */
function contentText(c: unknown, param: string): string {
  if (typeof c === 'string') return c;
  if (Array.isArray(c) && c.every((p) => isRecord(p) && ['input_text', 'output_text', 'text'].includes(p.type as string) && typeof p.text === 'string')) {
    return c.map((p) => (p as Body).text as string).join('');
  }
  throw new ApiError(400, 'unsupported_parameter', `'${param}' must be text (input_text parts); images, files and audio are not served`, param);
}

/** `input`: a string, or items (messages, function calls and their outputs) as chat messages. */
function inputMessages(v: unknown): Body[] {
  if (typeof v === 'string') return [{ role: 'user', content: v }];
  if (!Array.isArray(v) || v.length === 0) throw bad('input', "'input' is a string or a non-empty array of items");
  const out: Body[] = [];
  v.forEach((item, i) => {
    const param = `input[${i}]`;
    if (!isRecord(item)) throw bad(param, 'an input item is an object');
    const type = item.type ?? 'message';
    if (type === 'message') {
      const role = item.role;
      if (typeof role !== 'string' || !['user', 'system', 'developer', 'assistant'].includes(role)) throw bad(`${param}.role`, "'role' is user, system, developer or assistant");
      out.push({ role, content: contentText(item.content, `${param}.content`) });
    } else if (type === 'function_call') {
      if (typeof item.call_id !== 'string' || typeof item.name !== 'string' || typeof item.arguments !== 'string') throw bad(param, 'a function_call item has call_id, name and arguments');
      const call = { id: item.call_id, type: 'function', function: { name: item.name, arguments: item.arguments } };
      // Calls in a row are one assistant turn.
      const prev = out[out.length - 1];
      if (prev?.role === 'assistant' && Array.isArray(prev.tool_calls)) (prev.tool_calls as unknown[]).push(call);
      else out.push({ role: 'assistant', content: null, tool_calls: [call] });
    } else if (type === 'function_call_output') {
      if (typeof item.call_id !== 'string') throw bad(`${param}.call_id`, "a function_call_output item has the 'call_id' it answers");
      const output = typeof item.output === 'string' ? item.output : contentText(item.output, `${param}.output`);
      out.push({ role: 'tool', tool_call_id: item.call_id, content: output });
    } else {
      throw new ApiError(400, 'unsupported_parameter', `input items of type '${String(type)}' are not served`, `${param}.type`);
    }
  });
  return out;
}

/** Responses tools ({type: 'function', name, …}) as chat tools. */
function chatTools(v: unknown): unknown[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw bad('tools', "'tools' must be an array");
  return v.map((t, i) => {
    if (!isRecord(t)) throw bad(`tools[${i}]`, 'a tool is an object');
    if (t.type !== 'function') throw new ApiError(400, 'unsupported_parameter', `only tools of type 'function' are served, got '${String(t.type)}'`, `tools[${i}].type`);
    const { type: _type, ...fn } = t;
    return { type: 'function', function: fn };
  });
}

/** Responses tool_choice as chat's. */
function chatToolChoice(v: unknown): unknown {
  if (isRecord(v) && v.type === 'function') return { type: 'function', function: { name: v.name } };
  return v;
}

/** Responses text.format as chat's response_format. */
function responseFormat(text: unknown): unknown {
  if (text === undefined || text === null) return undefined;
  if (!isRecord(text)) throw bad('text', "'text' must be an object");
  const f = text.format;
  if (f === undefined || f === null) return undefined;
  if (!isRecord(f)) throw bad('text.format', "'text.format' must be an object");
  if (f.type === 'json_schema') return { type: 'json_schema', json_schema: { name: f.name, schema: f.schema, strict: f.strict } };
  return { type: f.type };
}

/** Reads a POST /v1/responses body. */
export function parseResponses(body: unknown): ResponsesRequest {
  if (!isRecord(body)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
  for (const k of Object.keys(body)) {
    if (REFUSED.includes(k) && body[k] !== null) throw new ApiError(400, 'unsupported_parameter', `'${k}' is not served by this Responses API`, k);
    if (!SAME.includes(k) && !ACCEPTED.includes(k) && !REFUSED.includes(k)) throw new ApiError(400, 'unknown_parameter', `unknown parameter '${k}'`, k);
  }
  if (typeof body.model !== 'string' || body.model === '') throw new ApiError(400, 'missing_required_parameter', "'model' is required", 'model');
  if (body.input === undefined) throw new ApiError(400, 'missing_required_parameter', "'input' is required", 'input');
  if (body.background === true) throw new ApiError(400, 'unsupported_parameter', "'background' responses are not served", 'background');
  const instructions = body.instructions ?? null;
  if (instructions !== null && typeof instructions !== 'string') throw bad('instructions', "'instructions' must be a string");
  const prev = body.previous_response_id ?? null;
  if (prev !== null && (typeof prev !== 'string' || !/^resp_[0-9a-f]{24}$/.test(prev))) throw bad('previous_response_id', "'previous_response_id' is the id of a response of this API (resp_…)");
  if (body.store !== undefined && typeof body.store !== 'boolean') throw bad('store', "'store' must be a boolean");
  if (body.truncation !== undefined && body.truncation !== null && body.truncation !== 'disabled' && body.truncation !== 'auto') throw bad('truncation', "'truncation' is disabled or auto");
  if (body.include !== undefined && body.include !== null && !Array.isArray(body.include)) throw bad('include', "'include' must be an array");
  if (body.reasoning !== undefined && body.reasoning !== null && !isRecord(body.reasoning)) throw bad('reasoning', "'reasoning' must be an object");
  const chat: Body = {};
  for (const k of SAME) if (body[k] !== undefined) chat[k] = body[k];
  if (body.max_output_tokens !== undefined && body.max_output_tokens !== null) chat.max_tokens = body.max_output_tokens;
  const tools = chatTools(body.tools);
  if (tools) chat.tools = tools;
  if (body.tool_choice !== undefined) chat.tool_choice = chatToolChoice(body.tool_choice);
  const rf = responseFormat(body.text);
  if (rf) chat.response_format = rf;
  const echo: Body = {
    instructions, max_output_tokens: body.max_output_tokens ?? null, temperature: body.temperature ?? 1, top_p: body.top_p ?? 0.95,
    tools: body.tools ?? [], tool_choice: body.tool_choice ?? 'auto', parallel_tool_calls: body.parallel_tool_calls ?? true,
    text: body.text ?? { format: { type: 'text' } }, metadata: body.metadata ?? {}, truncation: body.truncation ?? 'disabled',
    reasoning: { effort: null, summary: null }, user: body.user ?? null, previous_response_id: prev, store: body.store !== false,
    service_tier: 'default', error: null,
  };
  return { model: body.model, input: inputMessages(body.input), instructions, chat, previousId: prev, store: body.store !== false, stream: body.stream === true, echo };
}

/** A response id as OpenAI spells them. */
export const responseId = () => `resp_${randomBytes(12).toString('hex')}`;

/** An output item of a response. */
type Item = Body & { type: 'message' | 'function_call'; id: string };

/** Writes one typed stream event. */
export type EventWrite = (type: string, data: Body) => void;

/**
 * One response's output as it comes: text into output_text messages, calls (parsed in the
 * model's family format when tools are offered) into function_call items; with `emit`, as the
 * stream events of each item.
 */
export class ResponseOutput {
  readonly items: Item[] = [];
  readonly #parser: ToolCallParser | null;
  readonly #emit: EventWrite | null;
  /** the message item text goes into now, or null */
  #open: (Item & { content: Body[] }) | null = null;
  finish: FinishText | null = null;

  constructor(format: ToolFormat, tools: ToolRequest, emit: EventWrite | null) {
    this.#parser = tools.choice.mode === 'none' ? null : new ToolCallParser(format, tools.choice.allowed);
    this.#emit = emit;
  }

  /** The sink generation feeds (one choice). */
  readonly sink: GenerationSink = {
    delta: (_i, text) => (this.#parser ? this.#pieces(this.#parser.push(text)) : this.#text(text)),
    end: (_i, finish) => {
      if (this.#parser) this.#pieces(this.#parser.end());
      this.#close();
      this.finish = finish;
    },
  };

  #pieces(pieces: ParsedPiece[]): void {
    for (const p of pieces) {
      if ('text' in p) {
        this.#text(p.text);
        continue;
      }
      this.#close();
      const item: Item = { type: 'function_call', id: `fc_${randomBytes(12).toString('hex')}`, call_id: `call_${randomBytes(12).toString('hex')}`, name: p.call.name, arguments: p.call.arguments, status: 'completed' };
      this.items.push(item);
      const at = this.items.length - 1;
      this.#emit?.('response.output_item.added', { output_index: at, item: { ...item, arguments: '', status: 'in_progress' } });
      this.#emit?.('response.function_call_arguments.delta', { item_id: item.id, output_index: at, delta: item.arguments });
      this.#emit?.('response.function_call_arguments.done', { item_id: item.id, output_index: at, arguments: item.arguments });
      this.#emit?.('response.output_item.done', { output_index: at, item });
    }
  }

  #text(text: string): void {
    if (text === '') return;
    if (!this.#open) {
      this.#open = { type: 'message', id: `msg_${randomBytes(12).toString('hex')}`, status: 'in_progress', role: 'assistant', content: [{ type: 'output_text', text: '', annotations: [] }] };
      this.items.push(this.#open);
      const at = this.items.length - 1;
      this.#emit?.('response.output_item.added', { output_index: at, item: { ...this.#open, content: [] } });
      this.#emit?.('response.content_part.added', { item_id: this.#open.id, output_index: at, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } });
    }
    const part = this.#open.content[0]!;
    part.text = (part.text as string) + text;
    this.#emit?.('response.output_text.delta', { item_id: this.#open.id, output_index: this.items.length - 1, content_index: 0, delta: text });
  }

  #close(): void {
    const m = this.#open;
    if (!m) return;
    this.#open = null;
    m.status = 'completed';
    const at = this.items.indexOf(m);
    const part = m.content[0]!;
    this.#emit?.('response.output_text.done', { item_id: m.id, output_index: at, content_index: 0, text: part.text });
    this.#emit?.('response.content_part.done', { item_id: m.id, output_index: at, content_index: 0, part });
    this.#emit?.('response.output_item.done', { output_index: at, item: m });
  }

  /** The output as a chat assistant message, for the conversation a later response continues. */
  assistantMessage(): Body {
    const text = this.items.filter((x) => x.type === 'message').map((x) => ((x.content as Body[])[0]!.text as string)).join('');
    const calls = this.items.filter((x) => x.type === 'function_call').map((x) => ({ id: x.call_id, type: 'function', function: { name: x.name, arguments: x.arguments } }));
    return calls.length > 0 ? { role: 'assistant', content: text || null, tool_calls: calls } : { role: 'assistant', content: text };
  }
}

/** The response object: its items, status and usage, with what it echoes of its request. */
export function responseBody(id: string, createdAt: number, model: string, echo: Body, out: ResponseOutput | null, usage: Usage | null): Body {
  const done = out?.finish ?? null;
  return {
    id, object: 'response', created_at: createdAt, model,
    status: done === null ? 'in_progress' : done === 'length' ? 'incomplete' : 'completed',
    incomplete_details: done === 'length' ? { reason: 'max_output_tokens' } : null,
    output: out && done !== null ? out.items : [],
    usage: usage ? {
      input_tokens: usage.promptTokens, input_tokens_details: { cached_tokens: usage.cachedTokens },
      output_tokens: usage.completionTokens, output_tokens_details: { reasoning_tokens: 0 },
      total_tokens: usage.promptTokens + usage.completionTokens,
    } : null,
    ...echo,
  };
}
