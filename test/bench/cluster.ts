// Cluster benchmarks: decode throughput of two stages over NATS (the whole path: HTTP, gateway,
// coordinator, workers, sampling on the last stage) against the same two stages chained in one
// process, at 1, 8 and 32 concurrent sessions; then time to first token and time per output
// token under a load of concurrent streaming clients.
import { Sampler } from '@strata/ggml';
import { Pipeline, prefill, type LayerRange } from '@strata/model';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { median, streamCompletion } from './common.ts';

const SPLIT: LayerRange[] = [{ l0: 0, l1: 6 }, { l0: 6, l1: 12 }];
const PROMPT = 16;
const DECODE = 40;

const promptOf = (i: number) => Array.from({ length: PROMPT }, (_, t) => 100 + ((i * 7919 + t * 104729) % 20000));

/** Decode tokens/s of `c` sequences decoded together in one process. */
function inProcess(model: string, c: number, threads: number): number {
  const p = Pipeline.open({ model, split: SPLIT, threads, ctxSize: 4096 });
  const samplers = Array.from({ length: c }, () => Sampler.create(p.hp.nVocab, { temperature: 0 }));
  try {
    const next = new Int32Array(c);
    for (let s = 0; s < c; s++) next[s] = samplers[s]!.sample(prefill(p, promptOf(s), s));
    const seq = Int32Array.from({ length: c }, (_, s) => s);
    const pos = new Int32Array(c);
    const t0 = performance.now();
    for (let step = 0; step < DECODE; step++) {
      pos.fill(PROMPT + step);
      const logits = p.forward({ tokens: next, pos, seq });
      for (let s = 0; s < c; s++) next[s] = samplers[s]!.sample(logits.subarray(s * p.hp.nVocab, (s + 1) * p.hp.nVocab));
    }
    return (c * DECODE * 1000) / (performance.now() - t0);
  } finally {
    for (const s of samplers) s.dispose();
    p.dispose();
  }
}

/** One greedy streaming completion of token ids. */
const streamed = (url: string, model: string, prompt: number[], maxTokens: number) =>
  streamCompletion(url, { model, prompt, max_tokens: maxTokens, temperature: 0 });

/** Decode tokens/s of `c` concurrent streams: tokens in the window where all of them decode. */
async function overCluster(url: string, model: string, c: number): Promise<number> {
  const runs = await Promise.all(Array.from({ length: c }, (_, i) => streamed(url, model, promptOf(1000 + i), DECODE + 1)));
  const t1 = Math.max(...runs.map((r) => r.times[0]!));
  const t2 = Math.min(...runs.map((r) => r.times.at(-1)!));
  const n = runs.reduce((s, r) => s + r.times.filter((t) => t > t1 && t <= t2).length, 0);
  return (n * 1000) / (t2 - t1);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** Runs the cluster benchmarks on `model` (12 layers); prints and returns the figures. */
export async function runClusterBench(model: string, reps: number): Promise<unknown> {
  console.log(`\ncluster: stages ${SPLIT.map((r) => `${r.l0}:${r.l1}`).join(', ')}, one thread each, ${PROMPT}-token prompts, greedy; medians of ${reps}`);
  const counts = [1, 8, 32];
  const cluster = await LocalCluster.start({ model, splits: [SPLIT], port: 0, threads: 1, logLevel: process.env.BENCH_LOG ?? 'error' });
  const rows: { sessions: number; nats: number; local1: number; local2: number }[] = [];
  try {
    const id = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    await overCluster(cluster.url, id, 2); // warm-up
    for (const c of counts) {
      const nats: number[] = [], local1: number[] = [], local2: number[] = [];
      // Alternate the three so that the machine's drift hits them alike.
      for (let r = 0; r < reps; r++) {
        nats.push(await overCluster(cluster.url, id, c));
        local1.push(inProcess(model, c, 1));
        local2.push(inProcess(model, c, 2));
      }
      rows.push({ sessions: c, nats: median(nats), local1: median(local1), local2: median(local2) });
    }
    console.log(`${'sessions'.padStart(8)} ${'over NATS'.padStart(10)} ${'1 process'.padStart(10)} ${'ratio'.padStart(6)} ${'1 proc 2T'.padStart(10)} ${'ratio'.padStart(6)}   decode tok/s`);
    for (const r of rows) {
      console.log(`${String(r.sessions).padStart(8)} ${r.nats.toFixed(1).padStart(10)} ${r.local1.toFixed(1).padStart(10)} ${(r.nats / r.local1).toFixed(3).padStart(6)} ${r.local2.toFixed(1).padStart(10)} ${(r.nats / r.local2).toFixed(3).padStart(6)}`);
    }
    console.log('  (1 process: the same two stages, one thread each, chained; 1 proc 2T: both stages with both threads)');
    // Latency under load: 16 streaming clients, 4 requests each, back to back.
    const clients = 16, perClient = 4, maxTokens = 32;
    const ttft: number[] = [], tpot: number[] = [];
    await Promise.all(Array.from({ length: clients }, async (_, k) => {
      for (let q = 0; q < perClient; q++) {
        const t = await streamed(cluster.url, id, promptOf(5000 + k * perClient + q), maxTokens);
        ttft.push(t.times[0]! - t.start);
        tpot.push((t.times.at(-1)! - t.times[0]!) / (t.times.length - 1));
      }
    }));
    console.log(`latency, ${clients} concurrent streaming clients × ${perClient} requests of ${maxTokens} tokens: ` +
      `TTFT p50 ${pct(ttft, 50).toFixed(1)} ms, p99 ${pct(ttft, 99).toFixed(1)} ms; TPOT p50 ${pct(tpot, 50).toFixed(1)} ms, p99 ${pct(tpot, 99).toFixed(1)} ms`);
    return { rows, latency: { clients, perClient, maxTokens, ttftP50: pct(ttft, 50), ttftP99: pct(ttft, 99), tpotP50: pct(tpot, 50), tpotP99: pct(tpot, 99) } };
  } finally {
    await cluster.stop();
  }
}
