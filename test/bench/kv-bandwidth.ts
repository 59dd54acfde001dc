// KvTransfer on a limited link (npm run bench -- --only kv-bandwidth): does a live migration's KV
// stream use the bandwidth it is given? Two pipelines of two one-thread workers of the 134M f16
// bench model, split alike (0:6, 6:12), so each target stage gets its layers from one source over
// one gRPC connection; every push into a worker passes a fault proxy (LocalCluster faultLinks,
// link 'grpc'). An idle session of `--kv-prompt` tokens moves from one pipeline to the other and
// back, the workers' links limited to each of `--kv-mbits` (Mbit/s per link, 0: unlimited) in
// turn, the order alternating between repetitions; medians. Target: achieved / given ≥ 0.8.
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { BENCH_SPEC, benchModel, getJson, median, streamTokens } from './common.ts';

/** bytes of K and V of one position over the whole model: layers × 2 × n_embd_kv × f16 */
const POSITION_BYTES = BENCH_SPEC.nLayer * 2 * (BENCH_SPEC.nEmbd / BENCH_SPEC.nHead) * BENCH_SPEC.nHeadKv * 2;
const SPLIT = [{ l0: 0, l1: 6 }, { l0: 6, l1: 12 }];
const WORKERS = ['p0-s0', 'p0-s1', 'p1-s0', 'p1-s1'];
/** target stages a move pushes to, each over its own link */
const LINKS = SPLIT.length;

/** Options of {@link runKvBandwidthBench}. */
export interface KvBandwidthOptions {
  /** prompt tokens of the moved session (its positions) */
  promptTokens: number;
  /** link limits, Mbit/s (10^6 bits) per target link; 0: unlimited */
  mbits: number[];
  reps: number;
}

/** One limit's moves: what each carried and took. */
export interface KvBandwidthRow {
  mbits: number;
  /** bytes of K/V the move pushed (the ledger's bytes: payload, without gRPC framing) */
  bytes: number[];
  /** the pre-copy: reserving on the target and the one round that pushed every position, ms */
  copyMs: number[];
  /** the whole move, hold and switch included, ms */
  totalMs: number[];
  /** MB/s (10^6 bytes) over both target links */
  achieved: number;
  /** achieved / (2 × the limit), NaN when unlimited */
  ratio: number;
}

interface MigrationReply { state: string; error: string | null; bytes: number; copy_ms: number; total_ms: number; rounds: number; positions: number }

/** Runs the bench; prints its table. */
export async function runKvBandwidthBench(o: KvBandwidthOptions, onStep: (detail: string) => void = () => {}): Promise<KvBandwidthRow[]> {
  const cluster = await LocalCluster.start({
    model: benchModel('f16'), splits: [SPLIT, SPLIT], port: 0, threads: 1, ctxSize: 4096, faultLinks: true, logLevel: process.env.BENCH_LOG ?? 'error',
    coordinatorFlags: ['--rebalance-high', '0'], gatewayFlags: ['--timeout-ms', '600000'],
  });
  const rows: KvBandwidthRow[] = o.mbits.map((mbits) => ({ mbits, bytes: [], copyMs: [], totalMs: [], achieved: 0, ratio: NaN }));
  try {
    const model = (await getJson<{ data: { id: string }[] }>(`${cluster.url}/v1/models`)).data[0]!.id;
    const prompt = Array.from({ length: o.promptTokens }, (_, i) => 100 + ((i * 7919) % 20000));
    await streamTokens(cluster.url, { model, prompt, max_tokens: 1, temperature: 0 }, { 'x-session-id': 'kv-bw' }, () => {});
    onStep(`prefilled ${o.promptTokens} tokens`);
    const pipelines = (await getJson<{ pipelines: { id: string }[] }>(`${cluster.url}/admin/v1/cluster`)).pipelines.map((p) => p.id).sort();
    const sessions = await getJson<{ data: { id: string; pipeline: string }[] }>(`${cluster.url}/admin/v1/sessions?limit=100`);
    let at = sessions.data.find((s) => s.id === 'kv-bw')!.pipeline;
    const move = async (mbits: number) => {
      for (const w of WORKERS) cluster.link(w, 'grpc').set({ bytesPerSecond: (mbits * 1e6) / 8 });
      const to = pipelines.find((p) => p !== at)!;
      const m = await getJson<MigrationReply>(`${cluster.url}/admin/v1/sessions/kv-bw/migrate`, 'POST', { to, wait: true });
      if (m.state !== 'done') throw new Error(`the move at ${mbits} Mbit/s: ${m.state} ${m.error ?? ''}`);
      at = to;
      return m;
    };
    // Both ways once, unlimited: every source's channel to its target is connected before timing.
    await move(0);
    await move(0);
    for (let r = 0; r < o.reps; r++) {
      for (const row of r % 2 === 0 ? rows : [...rows].reverse()) {
        const m = await move(row.mbits);
        row.bytes.push(m.bytes);
        row.copyMs.push(m.copy_ms);
        row.totalMs.push(m.total_ms);
        onStep(`repetition ${r + 1}/${o.reps}: ${row.mbits || 'unlimited'} Mbit/s`);
      }
    }
  } finally {
    await cluster.stop();
  }
  for (const row of rows) {
    row.achieved = median(row.bytes.map((b, i) => b / 1e3 / row.copyMs[i]!));
    row.ratio = row.mbits > 0 ? row.achieved / ((LINKS * row.mbits) / 8) : NaN;
  }
  printTable(o, rows);
  return rows;
}

function printTable(o: KvBandwidthOptions, rows: KvBandwidthRow[]): void {
  console.log(`\nkv-bandwidth: an idle session of ${o.promptTokens} positions (${((o.promptTokens * POSITION_BYTES) / 1e6).toFixed(1)} MB of f16 K/V, 134M bench model) moves between two pipelines split 0:6,6:12 (1 thread per worker); each of the ${LINKS} target links limited; medians of ${o.reps} alternating reps`);
  console.log('  link limit       given (both links)   MB moved   copy ms   total ms   achieved MB/s   achieved / given');
  for (const r of rows) {
    const given = r.mbits > 0 ? `${((LINKS * r.mbits) / 8).toFixed(1)} MB/s` : '—';
    console.log(`  ${(r.mbits > 0 ? `${r.mbits} Mbit/s` : 'unlimited').padEnd(14)} ${given.padStart(20)} ${(median(r.bytes) / 1e6).toFixed(1).padStart(10)} ${median(r.copyMs).toFixed(0).padStart(9)} ${median(r.totalMs).toFixed(0).padStart(10)} ${r.achieved.toFixed(1).padStart(15)} ${(Number.isNaN(r.ratio) ? '—' : r.ratio.toFixed(3)).padStart(18)}`);
  }
  console.log('  (achieved: bytes the ledger counts over copy ms, the pre-copy: the target\'s reservation and the one round of pushes; median of the per-move rates; target ≥ 0.8 of given)');
}
