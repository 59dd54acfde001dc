// Responsiveness benchmark (npm run bench -- --only responsive): a worker that computes keeps
// answering. On the ~134M llama (16k context), two pipelines of two one-thread workers:
//  1. heartbeat intervals of every worker while a stage prefills a 4k-token prompt, against the
//     configured interval (target: p99 ≤ 1.5×);
//  2. time per output token of 8 decoding sessions while a 16k-token prompt prefills on their
//     pipeline, without and with the step budget (target with it: p99 ≤ 2 × p50);
//  3. KvTransfer: a session of 256 / 1k / 4k / 16k tokens moves to the other pipeline while 8
//     other sessions decode on both: MiB/s of the pre-copy, the pause, the total (targets:
//     ≥ 1 GiB/s at 16k, pause ≤ one decode step + 10 ms).
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'nats';
import { strataCacheDir } from '@strata/ggml';
import { synthesize } from '@strata/model';
import { HeartbeatSchema, decode, natsOptions, subjects } from '@strata/wire';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { BENCH_SPEC, getJson, median, streamTokens } from './common.ts';

const SPEC = { ...BENCH_SPEC, nCtxTrain: 32768 } as const;
const MODEL_ID = 'bench-llama-134m-f16-32k';
const CTX = 32768;
const HEARTBEAT_MS = 1000;
const LONG = 16384;
const BACKGROUND = 8;
/** bytes of K and V of one position over the whole model: layers × 2 × n_embd_kv × f16 */
const POSITION_BYTES = SPEC.nLayer * 2 * (SPEC.nEmbd / SPEC.nHead) * SPEC.nHeadKv * 2;
/** what issue 12 measured before the stage thread (docs/migration.md: the 8×256 model, one thread per worker) */
const BEFORE_MIB_S: Record<number, number> = { 256: 10, 1024: 35, 4096: 54, 16384: 39 };

function model(): string {
  const dir = join(strataCacheDir(), 'models');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${MODEL_ID}.gguf`);
  if (!existsSync(file)) synthesize({ ...SPEC, type: 'f16', out: file });
  return file;
}

const pct = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
};
const prompt = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 100 + ((i * 7919 + salt * 104729) % 20000));

/** A streamed completion: the arrival time of every token (Date.now()); stops early when `signal` aborts. */
async function decodeStream(url: string, body: Record<string, unknown>, session: string, signal?: AbortSignal): Promise<number[]> {
  const times: number[] = [];
  await streamTokens(url, { model: MODEL_ID, temperature: 0, ...body }, { 'x-session-id': session }, () => times.push(Date.now()), signal);
  return times;
}

interface Cluster {
  c: LocalCluster;
  pipelines: string[];
}

async function start(budgetMs: number): Promise<Cluster> {
  const c = await LocalCluster.start({
    model: model(), pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: CTX, logLevel: process.env.BENCH_LOG ?? 'error',
    workerFlags: ['--heartbeat-ms', String(HEARTBEAT_MS)], gatewayFlags: ['--timeout-ms', '900000'],
    coordinatorFlags: ['--step-budget-ms', String(budgetMs), '--rebalance-high', '0', '--default-max-tokens', '256'],
  });
  const state = await getJson<{ pipelines: { id: string }[] }>(`${c.url}/admin/v1/cluster`);
  return { c, pipelines: state.pipelines.map((p) => p.id).sort() };
}

async function migrate(url: string, session: string, to: string) {
  const m = await getJson<{ state: string; error: string | null; bytes: number; copy_ms: number; pause_ms: number; hold_ms: number; total_ms: number; positions: number; rounds: number }>(`${url}/admin/v1/sessions/${session}/migrate`, 'POST', { to, wait: true });
  if (m.state !== 'done') throw new Error(`migration of ${session}: ${m.state} ${m.error ?? JSON.stringify(m)}`);
  return m;
}

/** Makes `session` live on `pipeline`: a one-token request, then a move if it landed elsewhere. */
async function pin(k: Cluster, session: string, pipeline: string, tokens: number[]): Promise<void> {
  await decodeStream(k.c.url, { prompt: tokens, max_tokens: 1 }, session);
  const state = await getJson<{ data: { id: string; pipeline: string }[] }>(`${k.c.url}/admin/v1/sessions?limit=1000`);
  const at = state.data.find((s) => s.id === session);
  if (at?.pipeline !== pipeline) await migrate(k.c.url, session, pipeline);
}

/** 8 sessions decoding (on `where`), until stop(); their token times. */
async function background(k: Cluster, where: string[], tag: string): Promise<{ stop: () => Promise<number[][]> }> {
  const ctl = new AbortController();
  for (let i = 0; i < BACKGROUND; i++) await pin(k, `${tag}-${i}`, where[i % where.length]!, prompt(32, 1000 + i));
  const runs = Array.from({ length: BACKGROUND }, (_, i) => decodeStream(k.c.url, { prompt: prompt(33, 1000 + i), max_tokens: 900 }, `${tag}-${i}`, ctl.signal));
  await new Promise((r) => setTimeout(r, 3000));
  return {
    stop: async () => {
      ctl.abort();
      return Promise.all(runs);
    },
  };
}

/** Gaps between consecutive tokens whose later token arrived within [t0, t1]. */
function gapsIn(streams: number[][], t0: number, t1: number): number[] {
  return streams.flatMap((ts) => ts.slice(1).map((t, i) => [t, t - ts[i]!] as const).filter(([t]) => t >= t0 && t <= t1).map(([, g]) => g));
}

/** Runs the responsiveness benchmark; prints and returns its figures. */
export async function runResponsiveBench(onStep: (detail: string) => void = () => {}): Promise<unknown> {
  console.log(`\nresponsive: llama 134M f16 (12 layers, n_embd 768, ${SPEC.nCtxTrain} context), 2 pipelines of 2 one-thread workers (0:6,6:12 and 0:5,5:12), ${CTX} cells each, heartbeats every ${HEARTBEAT_MS} ms`);
  const out: Record<string, unknown> = {};
  const decodeRows: { budget: string; p50: number; p99: number; max: number; n: number; prefillS: number }[] = [];

  // 2 without the budget: one cluster that only does this.
  {
    const k = await start(0);
    try {
      decodeRows.push(await prefillUnderDecode(k, 'no budget (--step-budget-ms 0)'));
      onStep('16k prefill, no budget');
    } finally {
      await k.c.stop();
    }
  }
  const k = await start(200);
  const moves: Record<string, number>[] = [];
  try {
    // 1: heartbeats while a 4k prompt prefills; that session then moves with 8 decoding.
    const beats = new Map<string, number[]>();
    const nc = await connect(natsOptions(k.c.natsUrls.coordinator, 'bench')); // heartbeats are the coordinators' to read
    nc.subscribe(subjects.workerHeartbeat(), {
      callback: (err, m) => {
        if (err) return;
        const id = decode(HeartbeatSchema, m.data, m.subject).stage!.workerId;
        beats.set(id, [...(beats.get(id) ?? []), Date.now()]);
      },
    });
    await pin(k, 'resp-4k', k.pipelines[0]!, prompt(8, 4096));
    const t0 = Date.now();
    await decodeStream(k.c.url, { prompt: prompt(4096, 4096), max_tokens: 1 }, 'resp-4k');
    const t1 = Date.now();
    const hbGaps = [...beats.values()].flatMap((ts) => ts.slice(1).map((t, i) => [t, t - ts[i]!] as const).filter(([t]) => t > t0 && t <= t1).map(([, g]) => g));
    await nc.close();
    // (It leaves pipeline 0 to the 16k prompt's cells.)
    await migrate(k.c.url, 'resp-4k', k.pipelines[1]!);
    out.heartbeat = { prefillMs: t1 - t0, p50: pct(hbGaps, 0.5), p99: pct(hbGaps, 0.99), max: Math.max(...hbGaps), n: hbGaps.length };
    console.log(`\nheartbeats while a 4,096-token prompt prefilled (${((t1 - t0) / 1000).toFixed(1)} s, ${hbGaps.length} intervals over 4 workers): p50 ${pct(hbGaps, 0.5)} ms, p99 ${pct(hbGaps, 0.99)} ms, max ${Math.max(...hbGaps)} ms; p99 / interval ${(pct(hbGaps, 0.99) / HEARTBEAT_MS).toFixed(2)} (target ≤ 1.5)`);
    onStep('heartbeats');

    // 2 with the budget.
    decodeRows.push(await prefillUnderDecode(k, 'budget 200 ms (default)'));
    onStep('16k prefill, budget');

    // 3: moves with 8 sessions decoding on both pipelines. resp-16k was prefilled by step 2.
    const bg = await background(k, k.pipelines, 'mig-bg');
    for (const len of [256, 1024, 4096, LONG]) {
      const session = len === 4096 ? 'resp-4k' : len === LONG ? 'resp-16k' : `resp-${len}`;
      if (len < 4096) {
        await pin(k, session, k.pipelines[0]!, prompt(8, len));
        await decodeStream(k.c.url, { prompt: prompt(len, len), max_tokens: 1 }, session);
      }
      // It decodes while it moves: its step, and the pause the move caused.
      const held = await getJson<{ data: { id: string; positions: number }[] }>(`${k.c.url}/admin/v1/sessions?limit=1000`);
      const positions = held.data.find((s) => s.id === session)?.positions ?? len;
      const ctl = new AbortController();
      const tokens = decodeStream(k.c.url, { prompt: [...prompt(len, len), 7], max_tokens: 48 }, session, ctl.signal);
      await new Promise((r) => setTimeout(r, 1500));
      const from = k.pipelines[0]!, to = k.pipelines[1]!;
      const m = await migrate(k.c.url, session, (await where(k, session)) === from ? to : from);
      const times = await tokens;
      const gaps = times.slice(1).map((t, i) => t - times[i]!);
      moves.push({ len, positions, step: median(gaps), pause: m.pause_ms, hold: m.hold_ms, total: m.total_ms, copy: m.copy_ms, bytes: m.bytes, rounds: m.rounds, mibs: m.bytes / 2 ** 20 / (m.copy_ms / 1000) });
      onStep(`move at ${len}`);
    }
    await bg.stop();
  } finally {
    await k.c.stop();
  }

  console.log(`\ntime per output token of ${BACKGROUND} sessions decoding while a ${LONG.toLocaleString('en')}-token prompt prefills on their pipeline`);
  console.log(`${'step budget'.padEnd(28)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'max ms'.padStart(8)} ${'p99/p50'.padStart(8)} ${'prefill s'.padStart(10)} ${'tokens'.padStart(7)}`);
  for (const r of decodeRows) console.log(`${r.budget.padEnd(28)} ${r.p50.toFixed(0).padStart(8)} ${r.p99.toFixed(0).padStart(8)} ${r.max.toFixed(0).padStart(8)} ${(r.p99 / r.p50).toFixed(2).padStart(8)} ${r.prefillS.toFixed(1).padStart(10)} ${String(r.n).padStart(7)}`);
  console.log('  (target with the budget: p99 ≤ 2 × p50)');
  console.log(`\nKvTransfer: a decoding session moves between pipelines split at other layers while ${BACKGROUND} other sessions decode on both; K/V ${POSITION_BYTES.toLocaleString('en')} B per position`);
  console.log(`${'context'.padStart(8)} ${'step ms'.padStart(8)} ${'pause ms'.padStart(9)} ${'≤ step+10'.padStart(9)} ${'total ms'.padStart(9)} ${'MiB'.padStart(8)} ${'MiB/s'.padStart(7)} ${'target'.padStart(7)} ${'before'.padStart(7)}`);
  for (const r of moves) {
    console.log(`${String(r.len).padStart(8)} ${r.step!.toFixed(1).padStart(8)} ${r.pause!.toFixed(1).padStart(9)} ${(r.pause! <= r.step! + 10 ? 'yes' : 'NO').padStart(9)} ${r.total!.toFixed(0).padStart(9)} ${(r.bytes! / 2 ** 20).toFixed(1).padStart(8)} ${r.mibs!.toFixed(0).padStart(7)} ${(r.len === LONG ? '1024' : '').padStart(7)} ${String(BEFORE_MIB_S[r.len!] ?? '').padStart(7)}`);
  }
  console.log('  (MiB/s: bytes of the pre-copy rounds over their time; before: the 8-layer n_embd 256 model\'s figures in docs/migration.md, measured with the stage on the main thread)');
  return { ...out, decode: decodeRows, moves };
}

async function where(k: Cluster, session: string): Promise<string> {
  const s = await getJson<{ data: { id: string; pipeline: string }[] }>(`${k.c.url}/admin/v1/sessions?limit=1000`);
  const at = s.data.find((x) => x.id === session);
  return at?.pipeline ?? '';
}

/** 8 sessions decode on pipeline 0; a 16k-token prompt (session resp-16k) prefills there: their token gaps meanwhile. */
async function prefillUnderDecode(k: Cluster, budget: string): Promise<{ budget: string; p50: number; p99: number; max: number; n: number; prefillS: number }> {
  const bg = await background(k, [k.pipelines[0]!], `dec-${budget.length}`);
  await pin(k, 'resp-16k', k.pipelines[0]!, prompt(8, LONG));
  const t0 = Date.now();
  await decodeStream(k.c.url, { prompt: prompt(LONG, LONG), max_tokens: 1 }, 'resp-16k');
  const t1 = Date.now();
  const gaps = gapsIn(await bg.stop(), t0, t1);
  return { budget, p50: pct(gaps, 0.5), p99: pct(gaps, 0.99), max: Math.max(...gaps), n: gaps.length, prefillS: (t1 - t0) / 1000 };
}
