// How a request's output reaches its client: stream chunks as tokens come (server-sent events), or
// one body at the end; with tools offered, each choice's text goes through its family's call
// parser first, and what it finds is answered as tool calls.
import { randomBytes } from 'node:crypto';
import type { GenerationSink, TokenOut, Usage } from './generation.ts';
import type { GenerationSpec } from './openai-request.ts';
import { chunkBody, finalBody, toolCallChunks, usageChunk, type ChoiceState, type ResponseMeta } from './responses.ts';
import { ToolCallParser, type ParsedPiece } from './tool-calls.ts';
import type { ToolFormat } from './tool-format.ts';

/** Writes one server-sent event. */
export type SseWrite = (obj: unknown) => void;

/** A call id as OpenAI spells them. */
const callId = () => `call_${randomBytes(12).toString('hex')}`;

/** One request's output as it is answered. */
export class Answer {
  readonly #spec: GenerationSpec;
  readonly #meta: ResponseMeta;
  readonly #sse: SseWrite | null;
  readonly #choices: ChoiceState[];
  readonly #parsers: (ToolCallParser | null)[];
  /** tokens whose text the parser holds: they go with the text when it is shown */
  readonly #pending: TokenOut[][];
  readonly #started: boolean[];
  /** characters streamed per choice (a completion's logprobs text_offset) */
  readonly #offsets: number[];

  /** `sse`: stream the answer (null: one body at the end, from {@link body}). */
  constructor(spec: GenerationSpec, meta: ResponseMeta, format: ToolFormat, sse: SseWrite | null) {
    this.#spec = spec;
    this.#meta = meta;
    this.#sse = sse;
    const n = spec.n;
    this.#choices = Array.from({ length: n }, () => ({ text: '', tokens: [], calls: [], finish: null }));
    const tools = spec.tools;
    this.#parsers = Array.from({ length: n }, () => (tools.choice.mode === 'none' ? null : new ToolCallParser(format, tools.choice.allowed)));
    this.#pending = Array.from({ length: n }, () => []);
    this.#started = new Array<boolean>(n).fill(false);
    this.#offsets = new Array<number>(n).fill(0);
  }

  /** The sink generation feeds. */
  readonly sink: GenerationSink = {
    delta: (i, text, tokens) => {
      const parser = this.#parsers[i];
      if (!parser) return this.#text(i, text, tokens);
      this.#pending[i]!.push(...tokens);
      this.#pieces(i, parser.push(text));
    },
    end: (i, finish) => {
      const parser = this.#parsers[i];
      if (parser) this.#pieces(i, parser.end());
      const called = this.#choices[i]!.calls.length > 0 && finish === 'stop';
      const reason = called ? (this.#spec.tools.legacy ? 'function_call' : 'tool_calls') : finish;
      this.#choices[i]!.finish = reason;
      if (this.#sse) {
        this.#open(i);
        this.#sse(chunkBody(this.#spec, this.#meta, i, '', [], reason, false, this.#offsets[i]!));
      }
    },
  };

  #pieces(i: number, pieces: ParsedPiece[]): void {
    for (const p of pieces) {
      if ('text' in p) {
        const tokens = this.#pending[i]!.splice(0);
        this.#text(i, p.text, tokens);
        continue;
      }
      this.#pending[i]!.length = 0;
      const c = this.#choices[i]!;
      // The legacy function_call answers one call a turn.
      if (this.#spec.tools.legacy && c.calls.length > 0) continue;
      const call = { id: callId(), ...p.call };
      c.calls.push(call);
      if (this.#sse) {
        this.#open(i);
        for (const chunk of toolCallChunks(this.#spec, this.#meta, i, c.calls.length - 1, call)) this.#sse(chunk);
      }
    }
  }

  #text(i: number, text: string, tokens: TokenOut[]): void {
    if (!this.#sse) {
      this.#choices[i]!.text += text;
      this.#choices[i]!.tokens.push(...tokens);
      return;
    }
    if (text === '' && tokens.length === 0) return;
    this.#open(i);
    this.#sse(chunkBody(this.#spec, this.#meta, i, text, tokens, null, false, this.#offsets[i]!));
    this.#offsets[i]! += text.length;
  }

  /** A chat stream opens each choice as OpenAI does: a chunk with the role alone. */
  #open(i: number): void {
    if (this.#started[i]) return;
    this.#started[i] = true;
    if (this.#spec.kind === 'chat') this.#sse!(chunkBody(this.#spec, this.#meta, i, '', [], null, true, 0));
  }

  /** The whole response (a request that did not stream). */
  body(usage: Usage): unknown {
    return finalBody(this.#spec, this.#meta, this.#choices, usage);
  }

  /** The stream's usage chunk. */
  usageChunk(usage: Usage): unknown {
    return usageChunk(this.#spec, this.#meta, usage);
  }
}
