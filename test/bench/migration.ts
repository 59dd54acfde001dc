// Migration benchmark: a session that keeps decoding moves between two pipelines split at other
// layers, at 256, 1k, 4k and 16k tokens of context. Prints the pause (ledger: hold to resume;
// client: the longest gap between two tokens) against the session's own decode step, the total
// time, bytes moved against what its cells hold, transfer throughput, and the time to rebuild the
// same session by re-prefill instead.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { strataCacheDir } from '@strata/ggml';
import { synthesize } from '@strata/model';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { median, streamCompletion, type StreamTiming } from './common.ts';

const SPEC = { arch: 'llama', nLayer: 8, nEmbd: 256, nHead: 8, nHeadKv: 4, nFf: 768, nCtxTrain: 32768, seed: 42, headScale: 4 } as const;
const LENGTHS = [256, 1024, 4096, 16384];
const ROW_BYTES = 128 * 2; // n_embd_kv 128, f16

function benchModel(): string {
  const dir = join(strataCacheDir(), 'models');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'bench-migration-llama-8x256-32k.gguf');
  if (!existsSync(file)) synthesize({ ...SPEC, out: file });
  return file;
}

/** Streams a session's completion; runs `at` once after `n` tokens and resolves with its result too. */
async function stream(url: string, session: string, prompt: number[], maxTokens: number, n: number, at: () => Promise<unknown>): Promise<StreamTiming & { result: unknown }> {
  let pending: Promise<unknown> | null = null;
  const t = await streamCompletion(url, { model: 'bench-migration-llama-8x256-32k', prompt, max_tokens: maxTokens, temperature: 0 }, { 'x-session-id': session }, (k) => {
    if (k === n) pending = at();
  });
  if (t.times.length < n) throw new Error(`the stream ended after ${t.times.length} tokens`);
  return { ...t, result: await (pending ?? Promise.resolve(null)) };
}

/** Runs the migration benchmark; prints and returns the rows. `onStep` is called after the warm-up and after each length. */
export async function runMigrationBench(onStep: (detail: string) => void = () => {}): Promise<unknown> {
  const model = benchModel();
  console.log(`\nmigration: llama 8 layers n_embd 256 (K/V ${ROW_BYTES} B per row, f16), pipelines 0:4,4:8 → 0:3,3:8, one thread per worker`);
  const cluster = await LocalCluster.start({ model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }], [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }]], port: 0, threads: 1, ctxSize: 20480, logLevel: process.env.BENCH_LOG ?? 'error' });
  const rows: Record<string, number>[] = [];
  try {
    // Warm-up: the first move between two pipelines opens their gRPC channels.
    const warm = () => fetch(`${cluster.url}/admin/v1/sessions/warm/migrate`, { method: 'POST', body: JSON.stringify({ to: 'p1-s0~p1-s1', wait: true }) }).then((r) => r.json());
    await stream(cluster.url, 'warm', Array.from({ length: 64 }, (_, t) => 200 + t), 32, 8, warm);
    onStep('warm-up');
    for (const len of LENGTHS) {
      const prompt = Array.from({ length: len }, (_, t) => 100 + ((t * 7919) % 20000));
      const session = `bench-${len}`;
      const migrate = () => fetch(`${cluster.url}/admin/v1/sessions/${session}/migrate`, { method: 'POST', body: JSON.stringify({ to: 'p1-s0~p1-s1', wait: true }) }).then((r) => r.json());
      const run = await stream(cluster.url, session, prompt, 64, 16, migrate);
      const m = run.result as { state: string; hold_ms: number; pause_ms: number; total_ms: number; copy_ms: number; bytes: number; positions: number; rounds: number; error: string | null };
      if (m.state !== 'done') throw new Error(`migration at ${len} tokens: ${m.state} ${m.error ?? ''}`);
      const gaps = run.times.slice(1).map((t, i) => t - run.times[i]!);
      const step = median(gaps.slice(2, 14));
      const worstGap = Math.max(...gaps.slice(14));
      // Rebuilding instead: the same prompt prefilled from nothing on the target pipeline.
      const rebuild = await stream(cluster.url, `rebuild-${len}`, prompt, 1, 1, async () => null);
      const reprefill = rebuild.times[0]! - rebuild.start;
      const cellBytes = m.positions * SPEC.nLayer * 2 * ROW_BYTES;
      onStep(`${len} tokens`);
      rows.push({ len, step, hold: m.hold_ms, pause: m.pause_ms, gap: worstGap, total: m.total_ms, copy: m.copy_ms, rounds: m.rounds, bytes: m.bytes, cellBytes, reprefill });
    }
  } finally {
    await cluster.stop();
  }
  console.log(`${'context'.padStart(8)} ${'step ms'.padStart(8)} ${'hold ms'.padStart(8)} ${'pause ms'.padStart(9)} ${'≤ step+10'.padStart(9)} ${'max gap'.padStart(8)} ${'total ms'.padStart(9)} ${'rounds'.padStart(6)} ${'MiB'.padStart(7)} ${'/ cells'.padStart(8)} ${'MiB/s'.padStart(7)} ${'re-prefill ms'.padStart(13)}`);
  for (const r of rows) {
    console.log(`${String(r.len).padStart(8)} ${r.step!.toFixed(1).padStart(8)} ${r.hold!.toFixed(1).padStart(8)} ${r.pause!.toFixed(1).padStart(9)} ${(r.pause! <= r.step! + 10 ? 'yes' : 'NO').padStart(9)} ${r.gap!.toFixed(1).padStart(8)} ${r.total!.toFixed(0).padStart(9)} ${String(r.rounds).padStart(6)} ` +
      `${(r.bytes! / 2 ** 20).toFixed(2).padStart(7)} ${(r.bytes! / r.cellBytes!).toFixed(3).padStart(8)} ${(r.bytes! / 2 ** 20 / (r.copy! / 1000)).toFixed(0).padStart(7)} ${r.reprefill!.toFixed(0).padStart(13)}`);
  }
  console.log('  (hold: waiting for the step in flight, which still yields its token; pause: from that step\'s return to the session decoding on the target, from the ledger; max gap: the longest wait between two tokens the client saw after the move began; / cells: bytes sent over the K/V bytes of the positions moved)');
  return rows;
}
