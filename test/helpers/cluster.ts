// Helpers for end-to-end tests against a local cluster: the single-process reference (what
// `strata generate` prints) and a worker's counters read over NATS.
import { Writable } from 'node:stream';
import { prefill, topK, type Pipeline } from '@strata/model';
import { main } from '../../services/cli/src/main.ts';
import {
  ClusterRequestSchema, ClusterStateSchema, StageStatsSchema, StatsRequestSchema, requestOnce, subjects, type ClusterState, type StageStats,
} from '@strata/wire';

/** Runs `strata generate … --json` in this process; returns its token ids and text. */
export async function strataGenerate(args: string[]): Promise<{ tokens: number[]; text: string }> {
  let text = '';
  const out = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  const code = await main(['generate', ...args, '--json'], out);
  if (code !== 0) throw new Error(`strata generate ${args.join(' ')} exited ${code}`);
  return JSON.parse(text) as { tokens: number[]; text: string };
}

/** A worker's StageStats, asked over NATS. */
export function workerStats(natsUrl: string, worker: string): Promise<StageStats> {
  return requestOnce(natsUrl, 'test', subjects.workerStats(worker), StatsRequestSchema, {}, StageStatsSchema, 5000);
}

/** The coordinator's ClusterState, asked over NATS. */
export function clusterState(natsUrl: string): Promise<ClusterState> {
  return requestOnce(natsUrl, 'test', subjects.coordinatorCluster(), ClusterRequestSchema, {}, ClusterStateSchema, 5000);
}

/**
 * How many of `got` match `want` up to the first near tie of the reference (`margins[i]`, the
 * gap between its two best logits at token i, below `tie`): batching, cell order and re-prefill
 * change float sums, and where two logits are (nearly) equal either token is right.
 */
export function matchedUntilTie(got: readonly string[], want: readonly string[], margins: readonly number[], tie = 0.05): { compared: number; equal: boolean } {
  let compared = margins.findIndex((m) => m < tie);
  if (compared < 0) compared = want.length;
  const equal = got.length >= compared && got.slice(0, compared).every((t, i) => t === want[i]);
  return { compared, equal };
}

/** What a streamed completion delivered. */
export interface Streamed {
  /** token texts (from logprobs: request `logprobs: 0`) */
  tokens: string[];
  /** arrival time of each token (performance.now()) */
  times: number[];
  finish: string | null;
}

/** The JSON of every `data: {…}` server-sent event of a streamed response, as they come. */
export async function* sseEvents<T>(body: AsyncIterable<unknown>): AsyncGenerator<T> {
  const dec = new TextDecoder();
  let buf = '';
  for await (const part of body) {
    buf += dec.decode(part as Uint8Array, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (ev.startsWith('data: {')) yield JSON.parse(ev.slice(6)) as T;
    }
  }
}

/** A completion chunk as the gateway streams it (`logprobs: 0` names the tokens). */
export interface CompletionChunk {
  choices?: { text?: string; logprobs: { tokens: string[] } | null; finish_reason: string | null }[];
  error?: { code: string; message: string };
}

/**
 * Reads a completion's server-sent events to the end; `onToken(n)` runs, and is awaited, after
 * the n-th token arrived (the stream waits meanwhile). An error event fails the read.
 */
export async function readStream(r: Response, onToken: (n: number) => unknown = () => {}): Promise<Streamed> {
  if (r.status !== 200 || !r.body) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const out: Streamed = { tokens: [], times: [], finish: null };
  for await (const j of sseEvents<CompletionChunk>(r.body)) {
    if (j.error) throw new Error(`error event: ${j.error.message}`);
    for (const t of j.choices?.[0]?.logprobs?.tokens ?? []) {
      out.tokens.push(t);
      out.times.push(performance.now());
      await onToken(out.tokens.length);
    }
    out.finish = j.choices?.[0]?.finish_reason ?? out.finish;
  }
  return out;
}

/**
 * Greedy tokens of `prompt` in one process, and the margin of each choice; from token `k` on, as
 * a pipeline rebuilt by re-prefill at k computes them (a lost worker or coordinator).
 */
export function rebuiltReference(p: Pipeline, prompt: Int32Array, n: number, k: number): { tokens: number[]; margins: number[] } {
  const margins: number[] = [];
  const greedy = (tokens: number[], out: number[]) => {
    p.seqRemove(0);
    let logits = prefill(p, tokens, 0);
    let pos = tokens.length;
    while (out.length < n) {
      const [a, b] = topK(logits, 2);
      out.push(a!.token);
      margins[out.length - 1] = a!.logit - b!.logit;
      if (out.length < n) logits = p.forward({ tokens: Int32Array.of(out.at(-1)!), pos: Int32Array.of(pos++), seq: Int32Array.of(0) });
    }
    return out;
  };
  const whole = greedy([...prompt], []);
  return { tokens: greedy([...prompt, ...whole.slice(0, k)], whole.slice(0, k)), margins };
}
