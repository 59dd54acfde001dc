// The coordinator at scale (npm run bench -- --only scale): one real coordinator process drives
// simulated stages (sim-stages.ts, in a process of their own: every stage its own NATS
// subscriptions, steps answered after a modelled delay) over a real nats-server and Redis. Load
// comes straight over NATS (GenerateRequests, events on one wildcard subscription), so no
// gateway stands between. Printed: the session phase (sessions turned once each and kept:
// coordinator CPU per step and per token, memory per kept session, NATS messages per token) and a
// sweep of concurrent one-off requests (tokens/s, CPU shares, the turnaround from a token's
// sample leaving the last stage to the step with it reaching the first stage, p50/p99) showing
// where it saturates.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type NatsConnection } from 'nats';
import { freePort, startNats, startRedis, type LocalServer } from '@strata/local-servers';
import {
  ClusterRequestSchema, ClusterStateSchema, FinishReason, GenerateEventSchema, GenerateReplySchema, GenerateRequestSchema, decode, natsOptions, request, subjects,
} from '@strata/wire';
import { procCpu } from './quiet.ts';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = join(here, '..', '..', 'bin', 'strata.mjs');
const MODEL_ID = 'sim-model';

/** What the scale bench runs. */
export interface ScaleOptions {
  pipelines: number;
  stages: number;
  sessions: number;
  /** concurrent requests while the sessions are made */
  sessionConcurrency: number;
  /** concurrent one-off requests of each sweep point */
  sweep: number[];
  /** seconds each sweep point runs */
  sweepSeconds: number;
  /** modelled step time of a stage: base + perToken × tokens, milliseconds */
  stepBaseMs: number;
  stepPerTokenMs: number;
  promptTokens: number;
  genTokens: number;
}

/** One sweep point's figures. */
export interface SweepRow {
  concurrency: number;
  tokensPerS: number;
  stepsPerS: number;
  coordinatorCpu: number;
  simCpu: number;
  /** time per output token seen by the requests, ms */
  tpotP50: number;
  tpotP99: number;
  /** sample -> next step of its sequence reaching the first stage, for tokens sent unchained, ms */
  turnaroundP50: number;
  turnaroundP99: number;
}

/** The bench's figures. */
export interface ScaleResult {
  options: ScaleOptions;
  sessionPhase: { seconds: number; steps: number; tokens: number; cpuMsPerStep: number; cpuMsPerToken: number; bytesPerSession: number; natsMsgsPerToken: number; failed: number };
  sweep: SweepRow[];
}

interface SimReport { counters: { steps: number; samples: number; tokens: number; seqOps: number }; cpuMs: number; turnaround: number[] }

/** CPU milliseconds and resident bytes of a process, from /proc. */
function procStats(pid: number): { cpuMs: number; rssBytes: number } {
  const cpu = procCpu(pid);
  if (!cpu) throw new Error(`process ${pid} is gone`);
  const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return { cpuMs: cpu.cpuMs, rssBytes: Number(rss ?? 0) * 1024 };
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
}

async function natsMessages(monitorPort: number): Promise<number> {
  const v = (await (await fetch(`http://127.0.0.1:${monitorPort}/varz`)).json()) as { in_msgs: number };
  return v.in_msgs;
}

/** GenerateRequests straight to the coordinator, their events on one subscription. */
class Load {
  readonly #nc: NatsConnection;
  readonly #pending = new Map<string, { resolve: (ok: boolean) => void; first: number; last: number; tokens: number }>();
  failed = 0;
  /** time per output token of each finished request, ms (first to last token over tokens − 1) */
  readonly tpot: number[] = [];
  constructor(nc: NatsConnection) {
    this.#nc = nc;
    nc.subscribe('strata.v1.gateway.events.>', {
      callback: (err, m) => {
        if (err) return;
        const ev = decode(GenerateEventSchema, m.data, m.subject);
        const p = this.#pending.get(ev.requestId);
        if (!p) return;
        if (ev.tokens.length > 0) {
          const now = performance.now();
          if (p.tokens === 0) p.first = now;
          p.last = now;
          p.tokens += ev.tokens.length;
        }
        if (ev.finish === FinishReason.UNSPECIFIED) return;
        this.#pending.delete(ev.requestId);
        if (p.tokens > 1) this.tpot.push((p.last - p.first) / (p.tokens - 1));
        p.resolve(ev.finish !== FinishReason.ERROR);
      },
    });
  }

  /** One request to its end; false when it failed or was refused. */
  async run(prompt: number[], maxTokens: number, sessionId: string): Promise<boolean> {
    const requestId = randomBytes(12).toString('hex');
    const done = new Promise<boolean>((resolve) => this.#pending.set(requestId, { resolve, first: 0, last: 0, tokens: 0 }));
    const reply = await request(this.#nc, subjects.coordinatorGenerate(), GenerateRequestSchema, {
      requestId, sessionId, modelId: MODEL_ID, prompt, maxTokens, n: 1, eventsSubject: subjects.gatewayEvents(requestId),
      sampling: { temperature: 0, seed: 1 },
    }, GenerateReplySchema, 60_000).catch(() => null);
    if (!reply?.accepted) {
      this.#pending.delete(requestId);
      this.failed++;
      return false;
    }
    const ok = await done;
    if (!ok) this.failed++;
    return ok;
  }
}

/** Runs `count` jobs with at most `concurrency` at once (or until `until` ms when given). */
async function pool(concurrency: number, count: number, job: (i: number) => Promise<unknown>, until = Infinity): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count && performance.now() < until) await job(next++);
  }));
}

/** Runs the bench; prints its table and returns the figures. */
export async function runScaleBench(o: ScaleOptions): Promise<ScaleResult> {
  const dir = mkdtempSync(join(tmpdir(), 'strata-scale-'));
  const servers: LocalServer[] = [];
  const children: ChildProcess[] = [];
  try {
    const monitor = await freePort();
    const nats = await startNats({ dir: join(dir, 'nats'), monitorPort: monitor, maxPayload: 8 << 20 });
    servers.push(nats);
    const redis = await startRedis({ dir: join(dir, 'redis'), appendonly: false });
    servers.push(redis);
    const sim = fork(join(here, 'sim-main.ts'), [JSON.stringify({
      pipelines: o.pipelines, stages: o.stages, nLayer: o.stages * 4, nEmbd: 256, nVocab: 32000, kvCells: 8192, nSeqMax: 64, maxBatch: 512,
      modelId: MODEL_ID, heartbeatMs: 1000, stepMs: { base: o.stepBaseMs, perToken: o.stepPerTokenMs },
    })], { execArgv: ['--import', 'tsx'], env: { ...process.env, STRATA_NATS_URL: nats.url }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    children.push(sim);
    await new Promise<void>((resolve) => sim.once('message', () => resolve()));
    const report = () => new Promise<SimReport>((resolve) => {
      sim.once('message', (m) => resolve(m as SimReport));
      sim.send('report');
    });
    const coordinator = spawn(process.execPath, [BIN, 'coordinator', '--id', 'scale', '--log-level', 'error', '--worker-timeout-ms', '30000', '--lease-ms', '10000',
      '--max-queue', '100000', '--queue-factor', '1000', '--kv-tiers', 'false', '--step-deadline-floor-ms', '60000'], {
      env: { ...process.env, STRATA_NATS_URL: nats.url, STRATA_REDIS_URL: redis.url }, stdio: ['ignore', 'inherit', 'inherit'],
    });
    children.push(coordinator);
    const nc = await connect({ ...natsOptions(nats.url, 'strata-scale-load'), maxReconnectAttempts: 0 });
    // every pipeline known to the leader
    for (let i = 0; ; i++) {
      const state = await request(nc, subjects.coordinatorCluster(), ClusterRequestSchema, {}, ClusterStateSchema, 5000).catch(() => null);
      if (state && state.pipelines.length === o.pipelines) break;
      if (i > 600) throw new Error(`the coordinator knows ${state?.pipelines.length ?? 0} of ${o.pipelines} pipelines`);
      await sleep(200);
    }
    const load = new Load(nc);
    const prompt = (i: number) => Array.from({ length: o.promptTokens }, (_, k) => 1 + ((i * 31 + k * 7) % 30000));

    // The session phase: every session one turn, kept.
    await report();
    const c0 = procStats(coordinator.pid!), m0 = await natsMessages(monitor), t0 = performance.now();
    await pool(o.sessionConcurrency, o.sessions, (i) => load.run(prompt(i), o.genTokens, `s${i}`));
    const t1 = performance.now(), c1 = procStats(coordinator.pid!), m1 = await natsMessages(monitor);
    const r1 = await report();
    const sessionPhase = {
      seconds: (t1 - t0) / 1000, steps: r1.counters.steps, tokens: r1.counters.samples, failed: load.failed,
      cpuMsPerStep: (c1.cpuMs - c0.cpuMs) / Math.max(1, r1.counters.steps),
      // every prompt and generated token the coordinator scheduled
      cpuMsPerToken: (c1.cpuMs - c0.cpuMs) / Math.max(1, r1.counters.tokens),
      bytesPerSession: (c1.rssBytes - c0.rssBytes) / o.sessions,
      natsMsgsPerToken: (m1 - m0) / Math.max(1, r1.counters.samples),
    };

    // The sweep: one-off requests at rising concurrency, a fixed time each.
    const sweep: SweepRow[] = [];
    let before = r1;
    for (const concurrency of o.sweep) {
      load.tpot.length = 0;
      const s0 = performance.now(), cs0 = procStats(coordinator.pid!);
      await pool(concurrency, Number.MAX_SAFE_INTEGER, (i) => load.run(prompt(1_000_000 + i), o.genTokens, ''), s0 + o.sweepSeconds * 1000);
      const s1 = performance.now(), cs1 = procStats(coordinator.pid!);
      const r = await report();
      const secs = (s1 - s0) / 1000;
      sweep.push({
        concurrency, tokensPerS: (r.counters.samples - before.counters.samples) / secs, stepsPerS: (r.counters.steps - before.counters.steps) / secs,
        coordinatorCpu: (cs1.cpuMs - cs0.cpuMs) / (s1 - s0), simCpu: (r.cpuMs - before.cpuMs) / (s1 - s0),
        tpotP50: percentile(load.tpot, 50), tpotP99: percentile(load.tpot, 99),
        turnaroundP50: percentile(r.turnaround, 50), turnaroundP99: percentile(r.turnaround, 99),
      });
      before = r;
    }
    await nc.close();
    sim.send('stop');
    const result: ScaleResult = { options: o, sessionPhase, sweep };
    printScale(result);
    return result;
  } finally {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const s of servers) await s.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

function printScale(r: ScaleResult): void {
  const o = r.options, s = r.sessionPhase;
  console.log(`\nThe coordinator at scale: ${o.pipelines} pipelines x ${o.stages} simulated stages (a step takes ${o.stepBaseMs} + ${o.stepPerTokenMs}/token ms per stage), one coordinator`);
  console.log(`sessions: ${o.sessions} turned once (${o.promptTokens} prompt + ${o.genTokens} generated tokens, ${o.sessionConcurrency} at once) in ${s.seconds.toFixed(1)} s, ${s.failed} failed`);
  console.log(`  coordinator CPU per step ${s.cpuMsPerStep.toFixed(3)} ms, per token scheduled ${s.cpuMsPerToken.toFixed(3)} ms (${s.steps} steps, ${s.tokens} tokens sampled); memory per kept session ${(s.bytesPerSession / 1024).toFixed(1)} KiB; NATS messages per sampled token ${s.natsMsgsPerToken.toFixed(2)}`);
  const modelled = o.stages * (o.stepBaseMs + o.stepPerTokenMs);
  console.log(`one-off requests   tokens/s   steps/s   coordinator CPU   sim CPU   time per output token p50 / p99 ms (modelled compute ${modelled.toFixed(1)})   unchained turnaround p50 / p99 ms`);
  const ms = (x: number) => (Number.isNaN(x) ? '-' : x.toFixed(1));
  for (const w of r.sweep) {
    console.log(`${String(w.concurrency).padStart(16)} ${w.tokensPerS.toFixed(0).padStart(10)} ${w.stepsPerS.toFixed(0).padStart(9)} ${`${(100 * w.coordinatorCpu).toFixed(0)} %`.padStart(17)} ${`${(100 * w.simCpu).toFixed(0)} %`.padStart(9)}   ${`${ms(w.tpotP50)} / ${ms(w.tpotP99)}`.padEnd(62)} ${ms(w.turnaroundP50)} / ${ms(w.turnaroundP99)}`);
  }
}
