// The serving path against llama.cpp's own server: `llama-server` built from the pinned snapshot
// and Strata (`strata up`'s cluster with one worker of all the threads, and with two workers of one
// thread each), all three up at once on the same GGUF, driven by the same client — greedy streaming
// chat completions of a fixed length at 1, 8, 16 and 32 concurrent clients — and measured
// alternately after a warm-up. Prints aggregate output tokens/s, time to first token and time per
// output token (p50/p99) and the ratios to llama-server, and where the CPU went: each process's
// CPU milliseconds per output token.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { ensureLlamaServer } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { formatRange } from '@strata/model';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { exchange, median } from './common.ts';
import { procCpu } from './quiet.ts';

/** Options of the serving benchmark. */
export interface ServingOptions {
  model: string;
  threads: number;
  clients: number[];
  reps: number;
  /** output tokens per request */
  tokens: number;
  /**
   * 'one' (one worker), 'two' (two workers, over a same-host stage link), 'two-nats' (two workers,
   * every step over NATS: LocalClusterOptions.stageLinks false), any of them, and llama-server always
   */
  strata: ('one' | 'two' | 'two-nats')[];
  /** extra flags for Strata's coordinator (to compare settings, e.g. --overlap-steps false) */
  coordinatorFlags: string[];
  /** added to every worker's flags */
  workerFlags: string[];
  /**
   * 'chat' (/v1/chat/completions, the model's template) or 'completions' (/v1/completions, the
   * prompt as is, for random-weight models: see {@link strayBytes})
   */
  endpoint: 'chat' | 'completions';
  /** how the two-worker cluster cuts the layers (LocalClusterOptions.split) */
  split: 'even' | 'balanced';
  /**
   * the workers' KV layout: 'streams', one stream of 512 cells per client (--kv-streams, --n-seq-max
   * the most clients: llama-server's layout here), or 'shared', one stream of them all
   */
  kv: 'streams' | 'shared';
}

/**
 * A random-weight model samples byte-fallback tokens at random, and a lone byte of 0x80-0xFF is
 * not UTF-8: llama-server's output parser then ends the stream with an error ("does not match the
 * expected Content-only format"). On the completions endpoint the bench bans those 128 tokens
 * (logit_bias -100) for every server alike.
 */
function strayBytes(model: string): Record<string, number> {
  const file = GgufFile.open(model);
  try {
    const tokens = (file.kv('tokenizer.ggml.tokens')?.value ?? []) as string[];
    const out: Record<string, number> = {};
    tokens.forEach((t, id) => {
      if (/^<0x[89A-F][0-9A-F]>$/.test(t)) out[String(id)] = -100;
    });
    return out;
  } finally {
    file.close();
  }
}

/** One request's timings (ms, performance.now()). */
interface Timing { start: number; first: number; last: number; tokens: number }

/** One run of `clients` clients against one server. */
interface Run { tokS: number; ttft: number[]; tpot: number[]; tokens: number; cpu: Map<string, number> }

interface Target { name: string; url: string; model: string; pids: () => Map<string, number[]> }

/** What the client asks: chat, or completions with the tokens it bans. */
type Endpoint = 'chat' | { ban: Record<string, number> };

const SUBJECTS = ['the sea', 'a clockmaker', 'winter in a mountain town', 'a lost letter', 'the first train', 'an old map', 'a garden at night', 'two rival bakers'];

/** A distinct prompt per request, so no server reuses another request's prefix. */
const promptOf = (i: number) => `Request ${i}. Write a long, detailed story about ${SUBJECTS[i % SUBJECTS.length]}, with many characters and places.`;

/**
 * POSTs a streaming request and hands each server-sent JSON event to `onEvent`; the HTTP status,
 * and the last 300 characters of the body on an error.
 */
export async function postStream(url: string, body: unknown, onEvent: (j: unknown) => void, headers: Record<string, string> = {}): Promise<{ status: number; tail: string }> {
  let buf = '', tail = '';
  const status = await exchange(url, 'POST', body, headers, (d) => {
    buf += d;
    tail = (tail + d).slice(-300);
    let k;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k).trim();
      buf = buf.slice(k + 2);
      if (ev.startsWith('data: {')) onEvent(JSON.parse(ev.slice(6)));
    }
  });
  return { status, tail };
}

/** One greedy streaming (chat) completion of exactly `tokens` tokens; its timings. */
async function chat(t: Target, i: number, tokens: number, endpoint: Endpoint): Promise<Timing> {
  const start = performance.now();
  let first = 0, last = 0, usage = 0;
  const input = endpoint === 'chat' ? { messages: [{ role: 'user', content: promptOf(i) }] } : { prompt: promptOf(i), logit_bias: endpoint.ban };
  const body = {
    model: t.model, ...input, max_tokens: tokens, temperature: 0,
    ignore_eos: true, stream: true, stream_options: { include_usage: true },
  };
  const path = endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const { status, tail } = await postStream(`${t.url}${path}`, body, (e) => {
    const j = e as { choices?: { delta?: { content?: string }; text?: string }[]; usage?: { completion_tokens: number } };
    if (j.usage) usage = j.usage.completion_tokens;
    if (j.choices?.[0]?.delta?.content || j.choices?.[0]?.text) {
      last = performance.now();
      if (!first) first = last;
    }
  });
  if (status !== 200) throw new Error(`${t.name}: HTTP ${status}: ${tail}`);
  if (usage !== tokens) throw new Error(`${t.name}: ${usage} tokens instead of ${tokens} (ignore_eos)`);
  return { start, first, last, tokens: usage };
}

function cpuOf(t: Target): Map<string, number> {
  const out = new Map<string, number>();
  for (const [name, pids] of t.pids()) out.set(name, pids.reduce((s, p) => s + (procCpu(p)?.cpuMs ?? 0), 0));
  return out;
}

/** The p-th percentile of `xs` (nearest rank). */
export const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** `clients` clients, each sending `perClient` requests back to back. */
async function run(t: Target, clients: number, perClient: number, tokens: number, base: number, endpoint: Endpoint): Promise<Run> {
  const cpu0 = cpuOf(t);
  const t0 = performance.now();
  const all = await Promise.all(Array.from({ length: clients }, async (_, c) => {
    const out: Timing[] = [];
    for (let r = 0; r < perClient; r++) out.push(await chat(t, base + c * perClient + r, tokens, endpoint));
    return out;
  }));
  const wall = performance.now() - t0;
  const cpu1 = cpuOf(t);
  const timings = all.flat();
  const n = timings.reduce((s, x) => s + x.tokens, 0);
  const cpu = new Map([...cpu1].map(([k, v]) => [k, (v - (cpu0.get(k) ?? 0)) / n]));
  return {
    tokS: (n * 1000) / wall, tokens: n, cpu,
    ttft: timings.map((x) => x.first - x.start),
    tpot: timings.map((x) => (x.last - x.first) / Math.max(1, x.tokens - 1)),
  };
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Starts llama-server on `model` with `slots` parallel slots (and `extra` flags); resolves once /health says ok. */
export async function startLlamaServer(bin: string, model: string, threads: number, slots: number, ctxPerSlot: number, extra: string[] = []): Promise<{ proc: ChildProcess; url: string }> {
  const port = await freePort();
  const args = ['-m', model, '--host', '127.0.0.1', '--port', String(port), '-t', String(threads), '-tb', String(threads),
    '-np', String(slots), '-c', String(slots * ctxPerSlot), '-fa', 'on', '--no-webui', '--log-disable', ...extra];
  const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + 120_000;
  while (Date.now() < until) {
    if (proc.exitCode !== null) throw new Error(`llama-server exited (${proc.exitCode}): ${err}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) return { proc, url };
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  proc.kill('SIGKILL');
  throw new Error(`llama-server did not become ready: ${err}`);
}

function strataPids(c: LocalCluster): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const add = (k: string, pid: number | undefined) => pid !== undefined && m.set(k, [...(m.get(k) ?? []), pid]);
  for (const s of c.services) add(s.role, s.proc.pid);
  add('nats-server', c.nats.pid);
  add('redis-server', c.redis.pid);
  return m;
}

/**
 * llama-server's binary for a section measured against it on `model`, or null (said) when the
 * model is missing or llama-server cannot be built: without a reference there is nothing to measure.
 */
export function referenceServer(section: string, model: string): string | null {
  if (!existsSync(model)) {
    console.log(`\n${section}: skipped: no ${model} (node scripts/ensure-models.mjs fetches the default, or pass --serving-model)`);
    return null;
  }
  try {
    return ensureLlamaServer();
  } catch (err) {
    console.log(`\n${section}: skipped: llama-server could not be built (${(err as Error).message})`);
    return null;
  }
}

/** Runs the serving benchmark; prints the table and returns the figures. */
export async function runServingBench(o: ServingOptions, step: (detail?: string) => void): Promise<unknown> {
  const bin = referenceServer('serving', o.model);
  if (!bin) return null;
  const maxClients = Math.max(...o.clients);
  const ctxPerSlot = 512;
  console.log(`\nserving: ${o.model.split('/').pop()}, greedy streaming ${o.endpoint === 'chat' ? 'chat' : 'completions'}, ${o.tokens} tokens per request (ignore_eos), ${o.threads} threads each, Strata's KV ${o.kv === 'streams' ? 'one stream per client' : 'one shared stream'}; ` +
    `alternating, medians of ${o.reps}`);
  const endpoint: Endpoint = o.endpoint === 'chat' ? 'chat' : { ban: strayBytes(o.model) };
  const ls = await startLlamaServer(bin, o.model, o.threads, maxClients, ctxPerSlot);
  const clusters: LocalCluster[] = [];
  const targets: Target[] = [{ name: 'llama-server', url: ls.url, model: 'model', pids: () => new Map([['llama-server', [ls.proc.pid!]]]) }];
  try {
    for (const kind of o.strata) {
      const workers = kind === 'one' ? 1 : 2;
      const c = await LocalCluster.start({
        model: o.model, workers, threads: Math.max(1, o.threads / workers), port: 0, ctxSize: maxClients * ctxPerSlot, stageLinks: kind !== 'two-nats',
        logLevel: process.env.BENCH_LOG ?? 'error', coordinatorFlags: o.coordinatorFlags, split: o.split,
        workerFlags: [...(o.kv === 'streams' ? ['--kv-streams', 'true', '--n-seq-max', String(maxClients)] : []), ...o.workerFlags],
      });
      clusters.push(c);
      const id = ((await (await fetch(`${c.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
      targets.push({ name: `strata ${workers}w${kind === 'two-nats' ? ' nats' : ''}`, url: c.url, model: id, pids: () => strataPids(c) });
      if (workers > 1) console.log(`strata ${workers}w: layers ${c.splits[0]!.map(formatRange).join(', ')} (${o.split} split)`);
    }
    for (const t of targets) await run(t, 2, 1, 16, 900_000, endpoint); // warm-up
    step('warm-up');
    const results = new Map<string, Map<number, Run[]>>(targets.map((t) => [t.name, new Map()]));
    let base = 0;
    for (const clients of o.clients) {
      const perClient = clients === 1 ? 4 : 2;
      for (let r = 0; r < o.reps; r++) {
        // Alternate the order so that the machine's drift hits every server alike.
        const order = r % 2 === 0 ? targets : [...targets].reverse();
        for (const t of order) {
          const runs = results.get(t.name)!;
          runs.set(clients, [...(runs.get(clients) ?? []), await run(t, clients, perClient, o.tokens, (base += 1000), endpoint)]);
        }
        step(`${clients} clients, repetition ${r + 1}/${o.reps}`);
      }
    }
    return report(o, targets, results);
  } finally {
    for (const c of clusters) await c.stop();
    ls.proc.kill('SIGTERM');
  }
}

function report(o: ServingOptions, targets: Target[], results: Map<string, Map<number, Run[]>>): unknown {
  const ref = results.get('llama-server')!;
  const rows: Record<string, unknown>[] = [];
  const f1 = (x: number) => x.toFixed(1);
  console.log(`${'server'.padEnd(14)} ${'clients'.padStart(7)} ${'tok/s'.padStart(7)} ${'(range)'.padStart(13)} ${'ratio'.padStart(6)} ${'TTFT p50/p99 ms'.padStart(17)} ${'TPOT p50/p99 ms'.padStart(17)} ${'ratio p50'.padStart(9)}`);
  for (const clients of o.clients) {
    const refRuns = ref.get(clients)!;
    const refTok = median(refRuns.map((r) => r.tokS));
    const refTpot = pct(refRuns.flatMap((r) => r.tpot), 50);
    for (const t of targets) {
      const runs = results.get(t.name)!.get(clients)!;
      const tok = median(runs.map((r) => r.tokS));
      const ttft = runs.flatMap((r) => r.ttft), tpot = runs.flatMap((r) => r.tpot);
      const row = {
        server: t.name, clients, tokS: tok, min: Math.min(...runs.map((r) => r.tokS)), max: Math.max(...runs.map((r) => r.tokS)),
        ratio: tok / refTok, ttftP50: pct(ttft, 50), ttftP99: pct(ttft, 99), tpotP50: pct(tpot, 50), tpotP99: pct(tpot, 99),
        tpotRatio: pct(tpot, 50) / refTpot,
        cpuMsPerToken: Object.fromEntries([...runs[0]!.cpu.keys()].map((k) => [k, median(runs.map((r) => r.cpu.get(k) ?? 0))])),
      };
      rows.push(row);
      console.log(`${t.name.padEnd(14)} ${String(clients).padStart(7)} ${f1(tok).padStart(7)} ${`(${f1(row.min)}–${f1(row.max)})`.padStart(13)} ${row.ratio.toFixed(3).padStart(6)} ` +
        `${`${Math.round(row.ttftP50)} / ${Math.round(row.ttftP99)}`.padStart(17)} ${`${f1(row.tpotP50)} / ${f1(row.tpotP99)}`.padStart(17)} ${row.tpotRatio.toFixed(3).padStart(9)}`);
    }
  }
  console.log('CPU ms per output token, by process (medians over the repetitions):');
  for (const r of rows) {
    const cpu = r.cpuMsPerToken as Record<string, number>;
    console.log(`  ${String(r.server).padEnd(14)} ${String(r.clients).padStart(3)} clients: ${Object.entries(cpu).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
  }
  return rows;
}
