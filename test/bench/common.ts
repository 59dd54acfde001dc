// Shared pieces of the benchmarks: the benchmark model and argument parsing.
import { existsSync, mkdirSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { strataCacheDir } from '@strata/ggml';
import { synthesize } from '@strata/model';
import { Progress } from '../../services/cli/src/format.ts';

/** The ~134M-parameter llama the benchmarks run (llama.cpp's own figures were measured on one). */
export const BENCH_SPEC = { arch: 'llama', nLayer: 12, nEmbd: 768, nHead: 12, nHeadKv: 12, nFf: 2048, nCtxTrain: 2048, seed: 7 } as const;

/** Path of the benchmark model of a weight type, synthesized into the cache once. */
export function benchModel(type: 'f16' | 'q8_0'): string {
  const dir = join(strataCacheDir(), 'models');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `bench-llama-134m-${type}.gguf`);
  if (!existsSync(file)) {
    const bar = new Progress({ label: `synthesizing ${file}`, total: 0, amount: (d, t) => `${(d / 1e6).toFixed(1)}M/${(t / 1e6).toFixed(1)}M parameters` });
    const params = synthesize({ ...BENCH_SPEC, type, out: file, onProgress: (done, total) => {
      bar.total = total;
      bar.update(done);
    } });
    bar.finish();
    process.stdout.write(`  ${(params / 1e6).toFixed(1)}M parameters\n`);
  }
  return file;
}

/** `value` when it is one of `allowed`; else an error that names the flag. */
function oneOf<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new Error(`--${flag} must be one of ${allowed.join(', ')}, got '${value}'`);
  return value as T;
}

/**
 * Benchmark options from argv: --threads, --reps, --pp, --tg, --types f16,q8_0, --only
 * engine,kv,cluster,migration,load,responsive,grammar,serving; for serving also --serving-model
 * (default: the Gemma 3 270M of ensure-models), --clients 1,8,16,32, --serving-reps (3),
 * --serving-tokens (128), --serving-strata one,two (and two-nats: two workers over NATS only), --serving-flags '<coordinator flags>',
 * --serving-worker-flags '<worker flags>',
 * --serving-endpoint chat|completions, --serving-split balanced|even, --serving-kv streams|shared; for
 * kv-bandwidth --kv-prompt (tokens, 2000), --kv-mbits 0,1000,300,100 (Mbit/s per link, 0:
 * unlimited), --kv-reps (3); for models --models-pp (256), --models-tg (64), --models-reps (3),
 * --models <labels to keep, comma-separated substrings> (default: every one).
 */
export function parseBenchArgs(argv: string[]) {
  const get = (name: string, fallback: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] ? argv[i + 1]! : fallback;
  };
  return {
    threads: Number(get('threads', '2')),
    reps: Number(get('reps', '7')),
    pp: Number(get('pp', '512')),
    tg: Number(get('tg', '128')),
    types: get('types', 'f16,q8_0').split(',') as ('f16' | 'q8_0')[],
    only: new Set(get('only', 'engine,models,kv,cluster,migration,load,responsive,grammar,serving,prefix,scale,network,kv-bandwidth').split(',')),
    servingModel: get('serving-model', ''),
    clients: get('clients', '1,8,16,32').split(',').map(Number),
    servingReps: Number(get('serving-reps', '3')),
    servingTokens: Number(get('serving-tokens', '128')),
    servingStrata: get('serving-strata', 'one,two').split(',').map((k) => oneOf('serving-strata', k, ['one', 'two', 'two-nats'] as const)),
    servingFlags: get('serving-flags', '').split(' ').filter(Boolean),
    servingWorkerFlags: get('serving-worker-flags', '').split(' ').filter(Boolean),
    servingEndpoint: oneOf('serving-endpoint', get('serving-endpoint', 'chat'), ['chat', 'completions'] as const),
    servingSplit: oneOf('serving-split', get('serving-split', 'balanced'), ['balanced', 'even'] as const),
    servingKv: oneOf('serving-kv', get('serving-kv', 'streams'), ['streams', 'shared'] as const),
    prefixClients: Number(get('prefix-clients', '16')),
    prefixSentences: Number(get('prefix-sentences', '70')),
    prefixReps: Number(get('prefix-reps', '3')),
    prefixParts: get('prefix-parts', 'shared,routing,tiers,multiturn,disagg,choices').split(','),
    longPrompt: Number(get('long-prompt', '4000')),
    scalePipelines: Number(get('scale-pipelines', '256')),
    scaleStages: Number(get('scale-stages', '4')),
    scaleSessions: Number(get('scale-sessions', '10000')),
    scaleConcurrency: Number(get('scale-concurrency', '1024')),
    scaleSweep: get('scale-sweep', '64,256,1024,4096').split(',').map(Number),
    scaleSeconds: Number(get('scale-seconds', '10')),
    scaleStepMs: Number(get('scale-step-ms', '5')),
    scaleStepTokenMs: Number(get('scale-step-token-ms', '0.02')),
    networkSessions: get('network-sessions', '1,8,16').split(',').map(Number),
    networkLatencyMs: Number(get('network-latency-ms', '0.5')),
    kvPrompt: Number(get('kv-prompt', '2000')),
    kvMbits: get('kv-mbits', '0,1000,300,100').split(',').map(Number),
    kvReps: Number(get('kv-reps', '3')),
    modelsPp: Number(get('models-pp', '256')),
    modelsTg: Number(get('models-tg', '64')),
    modelsReps: Number(get('models-reps', '3')),
    models: get('models', '').split(',').filter(Boolean),
  };
}

export const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
/** Median: robust to the odd slow repetition on a shared machine. */
export const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
export const std = (xs: number[]) => {
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, xs.length - 1));
};

/** When a streamed completion started and when each of its tokens arrived (performance.now()). */
export interface StreamTiming {
  start: number;
  times: number[];
}

/**
 * One HTTP exchange on a connection of its own: no keep-alive pool, since a pooled socket that the
 * server closed while idle (or while in-process runs between cluster runs blocked this process)
 * fails the next request on it. `onData` sees the body as it comes; `signal` ends the exchange
 * early, which is then not an error. Resolves with the status.
 */
export function exchange(url: string, method: string, body: unknown, headers: Record<string, string>, onData: (text: string) => void, signal?: AbortSignal): Promise<number> {
  const text = body === undefined ? '' : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(url, { method, agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers } }, (res) => {
      res.setEncoding('utf8');
      res.on('data', onData);
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', (err) => (signal?.aborted ? resolve(res.statusCode ?? 0) : reject(err)));
    });
    req.on('error', (err) => (signal?.aborted ? resolve(0) : reject(err)));
    signal?.addEventListener('abort', () => req.destroy(), { once: true });
    req.end(text);
  });
}

/** A JSON request and its JSON answer; a status of 300 or more rejects. */
export async function getJson<T>(url: string, method = 'GET', body?: unknown): Promise<T> {
  let out = '';
  const status = await exchange(url, method, body, {}, (d) => (out += d));
  if (status >= 300) throw new Error(`${method} ${url}: HTTP ${status}: ${out.slice(0, 300)}`);
  return JSON.parse(out) as T;
}

/**
 * One streaming completion (`logprobs: 0`, so every event names its tokens): `onToken(n)` runs as
 * the n-th token arrives. An error event or a status other than 200 rejects; `signal` stops it
 * early without an error.
 */
export async function streamTokens(url: string, body: Record<string, unknown>, headers: Record<string, string>, onToken: (n: number) => void, signal?: AbortSignal): Promise<void> {
  let buf = '', n = 0, failure: Error | null = null;
  const status = await exchange(`${url}/v1/completions`, 'POST', { ...body, stream: true, logprobs: 0 }, headers, (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: {')) continue;
      const j = JSON.parse(ev.slice(6)) as { choices?: { logprobs: { tokens: string[] } | null }[]; error?: { message: string } };
      if (j.error) failure ??= new Error(j.error.message);
      for (const _ of j.choices?.[0]?.logprobs?.tokens ?? []) onToken(++n);
    }
  }, signal);
  if (failure) throw failure;
  if (status !== 200 && !signal?.aborted) throw new Error(`HTTP ${status}: ${buf.slice(0, 300)}`);
}

/** One streaming completion; when it started and when each token arrived (performance.now()). */
export async function streamCompletion(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}, onToken: (n: number) => void = () => {}): Promise<StreamTiming> {
  const start = performance.now();
  const times: number[] = [];
  await streamTokens(url, body, headers, (n) => {
    times.push(performance.now());
    onToken(n);
  });
  return { start, times };
}
