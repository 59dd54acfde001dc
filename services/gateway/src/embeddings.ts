// OpenAI's embeddings endpoint: the request checked into inputs, the specs that run them on the
// cluster (one prompt each, evaluated, pooled by the model's pooling type on the last stage), and
// the response in OpenAI's shape, floats or base64.
import { ApiError } from './errors.ts';
import { NO_TOOLS, type GenerationSpec } from './openai-request.ts';

/** Most inputs in one request (OpenAI's limit). */
export const MAX_INPUTS = 2048;

/** A checked POST /v1/embeddings body. */
export interface EmbeddingRequest {
  model: string;
  /** text or token ids, one per embedding */
  inputs: ({ text: string } | { tokens: number[] })[];
  /** the vectors' length (cut, then scaled back to unit length), or null: the model's width */
  dimensions: number | null;
  encoding: 'float' | 'base64';
}

type Body = Record<string, unknown>;

function bad(param: string, message: string): ApiError {
  return new ApiError(400, 'invalid_value', message, param);
}

const isTokens = (v: unknown): v is number[] => Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t) && (t as number) >= 0);

/** Reads a POST /v1/embeddings body. */
export function parseEmbeddings(body: unknown): EmbeddingRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'invalid_body', 'the body must be a JSON object');
  const b = body as Body;
  for (const k of Object.keys(b)) {
    if (!['model', 'input', 'dimensions', 'encoding_format', 'user'].includes(k)) throw new ApiError(400, 'unknown_parameter', `unknown parameter '${k}'`, k);
  }
  if (typeof b.model !== 'string' || b.model === '') throw new ApiError(400, 'missing_required_parameter', "'model' is required", 'model');
  const input = b.input;
  let inputs: EmbeddingRequest['inputs'];
  if (typeof input === 'string') inputs = [{ text: input }];
  else if (isTokens(input)) inputs = [{ tokens: input }];
  else if (Array.isArray(input) && input.length > 0 && input.every((x) => typeof x === 'string')) inputs = (input as string[]).map((text) => ({ text }));
  else if (Array.isArray(input) && input.length > 0 && input.every(isTokens)) inputs = (input as number[][]).map((tokens) => ({ tokens }));
  else if (input === undefined) throw new ApiError(400, 'missing_required_parameter', "'input' is required", 'input');
  else throw bad('input', "'input' is a string, an array of strings, token ids, or an array of token id arrays (non-empty)");
  if (inputs.length > MAX_INPUTS) throw bad('input', `'input' holds at most ${MAX_INPUTS} items`);
  inputs.forEach((x, i) => {
    if ('text' in x && x.text === '') throw bad('input', `input ${i} is an empty string`);
  });
  const d = b.dimensions;
  if (d !== undefined && d !== null && (typeof d !== 'number' || !Number.isInteger(d) || d < 1)) throw bad('dimensions', "'dimensions' must be a positive integer");
  const e = b.encoding_format ?? 'float';
  if (e !== 'float' && e !== 'base64') throw bad('encoding_format', "'encoding_format' must be float or base64");
  if (b.user !== undefined && b.user !== null && (typeof b.user !== 'string' || b.user.length > 256)) throw bad('user', "'user' must be a string of at most 256 characters");
  return { model: b.model, inputs, dimensions: (d as number | undefined) ?? null, encoding: e };
}

/** The spec that runs one embedding on the cluster: the prompt evaluated, one answer, nothing sampled. */
export function embeddingSpec(model: string, cacheScope: string): GenerationSpec {
  return {
    kind: 'completion', model, prompt: { tokens: [] }, maxTokens: 1, stream: false, includeUsage: false, stop: [], n: 1,
    temperature: 0, topP: 1, topK: 0, minP: 0, repeatPenalty: 1, frequencyPenalty: 0, presencePenalty: 0, seed: 0, logprobs: null,
    responseFormat: { type: 'text' }, grammar: null, ignoreEos: false, sessionId: '', cacheSalt: '', promptCacheKey: '', cacheScope,
    logitBias: new Map(), tools: NO_TOOLS, embed: true,
  };
}

/** A unit vector cut to `dimensions` and scaled back to unit length (OpenAI's shortened embeddings). */
export function shorten(v: readonly number[], dimensions: number | null): number[] {
  if (dimensions === null || dimensions >= v.length) return [...v];
  const cut = v.slice(0, dimensions);
  const norm = Math.sqrt(cut.reduce((s, x) => s + x * x, 0));
  return cut.map((x) => (norm > 0 ? x / norm : 0));
}

/** One embedding as the response carries it: numbers, or base64 of little-endian float32s. */
export function encodeEmbedding(v: readonly number[], encoding: EmbeddingRequest['encoding']): number[] | string {
  if (encoding === 'float') return [...v];
  const buf = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => buf.writeFloatLE(x, i * 4));
  return buf.toString('base64');
}
