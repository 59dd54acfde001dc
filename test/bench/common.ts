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

/** Benchmark options from argv: --threads, --reps, --pp, --tg, --types f16,q8_0, --only engine,kv,cluster,migration,load,responsive. */
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
    only: new Set(get('only', 'engine,kv,cluster,migration,load,responsive').split(',')),
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
 * One streaming completion (`logprobs: 0`, so every event names its tokens) on a connection of
 * its own: no keep-alive pool, since in-process runs between cluster runs block this process and
 * a pooled socket the server closed meanwhile would fail the next request. `onToken(n)` runs
 * after the n-th token; an error event or a status other than 200 rejects.
 */
export function streamCompletion(url: string, body: Record<string, unknown>, headers: Record<string, string> = {}, onToken: (n: number) => void = () => {}): Promise<StreamTiming> {
  const text = JSON.stringify({ ...body, stream: true, logprobs: 0 });
  const start = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(`${url}/v1/completions`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers } }, (res) => {
      const times: number[] = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!ev.startsWith('data: {')) continue;
          const j = JSON.parse(ev.slice(6)) as { choices: { logprobs: { tokens: string[] } | null }[]; error?: { message: string } };
          if (j.error) return reject(new Error(j.error.message));
          for (const _ of j.choices[0]?.logprobs?.tokens ?? []) {
            times.push(performance.now());
            onToken(times.length);
          }
        }
      });
      res.on('end', () => (res.statusCode === 200 ? resolve({ start, times }) : reject(new Error(`HTTP ${res.statusCode}: ${buf.slice(0, 300)}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(text);
  });
}
