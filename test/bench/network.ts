// A real network between stages (npm run bench -- --only network): one pipeline of two workers of
// the 134M bench model, every service on NATS through a fault proxy of its own (LocalCluster
// faultLinks); decode tokens/s of N concurrent streaming sessions with no added latency and with
// `--network-latency-ms` on every link of the workers, each way (0.5: a stage-to-stage hop through
// NATS takes 1 ms more, a round trip between the stages 2 ms), alternately, medians. Pipelining
// should hide the round trip at 8+ sessions (target: within 0.9 of no added latency).
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { benchModel, median, streamCompletion } from './common.ts';

/** One point: sessions, and tokens/s without and with the latency. */
export interface NetworkRow { sessions: number; base: number[]; delayed: number[]; ratio: number }

/** Runs the bench; prints its table. */
export async function runNetworkBench(o: { sessions: number[]; latencyMs: number; reps: number; tokens: number }): Promise<NetworkRow[]> {
  const model = benchModel('f16');
  const cluster = await LocalCluster.start({ model, pipelines: 1, workers: 2, port: 0, threads: 1, ctxSize: 4096, faultLinks: true, logLevel: process.env.BENCH_LOG ?? 'error' });
  const rows: NetworkRow[] = [];
  try {
    const id = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    const links = ['p0-s0', 'p0-s1'].map((w) => cluster.link(w, 'nats'));
    const decode = async (n: number) => {
      const runs = await Promise.all(Array.from({ length: n }, (_, i) => streamCompletion(cluster.url, { model: id, prompt: `Session ${i} says`, max_tokens: o.tokens, temperature: 0, ignore_eos: true })));
      // decode only: from each stream's first token to its last
      const tokens = runs.reduce((s, r) => s + r.times.length - 1, 0);
      const first = Math.min(...runs.map((r) => r.times[0]!)), last = Math.max(...runs.map((r) => r.times.at(-1)!));
      return (tokens * 1000) / (last - first);
    };
    await decode(2);
    for (const n of o.sessions) {
      const row: NetworkRow = { sessions: n, base: [], delayed: [], ratio: 0 };
      for (let r = 0; r < o.reps; r++) {
        for (const delayed of r % 2 === 0 ? [false, true] : [true, false]) {
          for (const l of links) l.set({ latencyMs: delayed ? o.latencyMs : 0 });
          (delayed ? row.delayed : row.base).push(await decode(n));
        }
      }
      for (const l of links) l.set({ latencyMs: 0 });
      row.ratio = median(row.delayed) / median(row.base);
      rows.push(row);
    }
  } finally {
    await cluster.stop();
  }
  console.log(`\nnetwork: one pipeline of two workers (134M f16, 1 thread each), ${o.latencyMs} ms added each way on every worker link to NATS (a stage-to-stage round trip ${4 * o.latencyMs} ms longer); decode tokens/s, medians of ${o.reps} alternating reps`);
  console.log('  sessions   no added latency   with it   ratio');
  for (const r of rows) console.log(`  ${String(r.sessions).padStart(8)} ${median(r.base).toFixed(1).padStart(18)} ${median(r.delayed).toFixed(1).padStart(9)}   ${r.ratio.toFixed(3)}`);
  return rows;
}
