// Load: how many concurrent streaming sessions the default local cluster (`strata up`: one
// pipeline of two workers, 4096 cells and 64 sequences each, a queue of 256) holds without loss,
// and what happens past it. Each level sends N sessions at once and counts what came back:
// served in full, told to retry (429), failed otherwise, or lost.
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { median, streamCompletion } from './common.ts';

const LEVELS = [32, 64, 128, 256, 512];
const MAX_TOKENS = 32;

interface Level { sessions: number; served: number; retry: number; failed: number; ttftP50: number; ttftP99: number; seconds: number }

export async function runLoadBench(): Promise<Level[]> {
  console.log(`\nload: the default local cluster, N streaming sessions at once, ${MAX_TOKENS} tokens each`);
  const cluster = await LocalCluster.start({ port: 0, logLevel: process.env.BENCH_LOG ?? 'error' });
  const rows: Level[] = [];
  try {
    const id = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    console.log('  sessions   served  429 (retry)  failed  TTFT p50   TTFT p99   wall');
    for (const n of LEVELS) {
      const t0 = performance.now();
      const runs = await Promise.all(Array.from({ length: n }, (_, i) =>
        streamCompletion(cluster.url, { model: id, prompt: `Session ${n}-${i} says`, max_tokens: MAX_TOKENS, temperature: 0 }, { 'x-session-id': `load-${n}-${i}` })
          .then((r) => ({ ok: r.times.length === MAX_TOKENS, retry: false, ttft: r.times[0]! - r.start }), (err: Error) => ({ ok: false, retry: /HTTP 429/.test(err.message), ttft: NaN }))));
      const ttft = runs.filter((r) => r.ok).map((r) => r.ttft).sort((a, b) => a - b);
      const row = {
        sessions: n, served: runs.filter((r) => r.ok).length, retry: runs.filter((r) => r.retry).length, failed: runs.filter((r) => !r.ok && !r.retry).length,
        ttftP50: median(ttft), ttftP99: ttft[Math.min(ttft.length - 1, Math.floor(ttft.length * 0.99))] ?? NaN, seconds: (performance.now() - t0) / 1000,
      };
      rows.push(row);
      console.log(`  ${String(n).padStart(8)} ${String(row.served).padStart(8)} ${String(row.retry).padStart(12)} ${String(row.failed).padStart(7)} ${row.ttftP50.toFixed(0).padStart(7)} ms ${row.ttftP99.toFixed(0).padStart(7)} ms ${row.seconds.toFixed(1).padStart(6)} s`);
    }
    const held = rows.filter((r) => r.served === r.sessions).map((r) => r.sessions);
    console.log(`  held without loss or refusal: ${held.length > 0 ? Math.max(...held) : 0} concurrent sessions; past it the surplus gets 429 (failed must stay 0)`);
  } finally {
    await cluster.stop();
  }
  return rows;
}
