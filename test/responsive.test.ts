// Workers that never stop answering: a stage whose steps take 5 s (a documented test-only delay,
// as a slow device or a busy host) keeps heartbeating on time, its pipeline is not reset, a
// migration of another session off it completes during the step, and a 3,000-token prompt
// completes. Then resets provoked mid-prefill and mid-decode (a stage stopped past its step's
// deadline): the requests go on where they were, and what comes after is answered correctly.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { connect, type NatsConnection } from 'nats';
import { Redis } from 'ioredis';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel } from '@strata/model';
import { HeartbeatSchema, decode, natsOptions, subjects } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { matchedUntilTie, readStream, rebuiltReference, workerStats } from './helpers/cluster.ts';
import { LONG_TEXT } from './helpers/models.ts';

const model = ensureDefaultModel();
const MODEL_ID = 'default-llama-8x256-s42-f16';
const HEARTBEAT_MS = 500;
const STEP_DELAY_MS = 5000;

function post(url: string, body: Record<string, unknown>, session = ''): Promise<Response> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (session) headers['x-session-id'] = session;
  return fetch(`${url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: MODEL_ID, temperature: 0, ...body }) });
}

/** Lines the services logged that say a pipeline went down or was reset. */
function resetLines(lines: string[]): string[] {
  return lines.filter((l) => l.includes('pipeline down') || l.includes('resetting a pipeline'));
}

describe('a stage whose steps take 5 s', () => {
  let cluster: LocalCluster;
  let redis: Redis;
  let nc: NatsConnection;
  const logs: string[] = [];
  /** Date.now() of every heartbeat, by worker */
  const beats = new Map<string, number[]>();

  before(async () => {
    cluster = await LocalCluster.start({
      model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 4096, logSink: (l) => logs.push(l),
      // Every step of 64 tokens or more (prompt chunks) takes 5 s longer; decoding steps do not.
      workerFlags: ['--heartbeat-ms', String(HEARTBEAT_MS), '--max-batch', '1024', '--test-step-delay-ms', String(STEP_DELAY_MS), '--test-step-delay-min-tokens', '64'],
      coordinatorFlags: ['--worker-timeout-ms', '1500', '--prefill-chunk', '1024', '--step-budget-ms', '0', '--rebalance-high', '0'],
    });
    redis = new Redis(cluster.redisUrl);
    nc = await connect(natsOptions(cluster.natsUrls.coordinator, 'test')); // heartbeats are the coordinators' to read
    nc.subscribe(subjects.workerHeartbeat(), {
      callback: (err, m) => {
        if (err) return;
        const hb = decode(HeartbeatSchema, m.data, m.subject);
        const id = hb.stage!.workerId;
        if (!beats.has(id)) beats.set(id, []);
        beats.get(id)!.push(Date.now());
      },
    });
  });
  after(async () => {
    await nc?.close();
    redis?.disconnect();
    await cluster?.stop();
  });

  it('heartbeats on time, no reset, a migration off the busy pipeline during the step, and the 3,000-token prompt completes', async () => {
    const pipelineOf = async (session: string) => (await redis.hget(`strata:session:${session}`, 'pipeline')) ?? '';
    const migrate = async (session: string, to: string) => {
      const r = await fetch(`${cluster.url}/admin/v1/sessions/${session}/migrate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ to, wait: true }) });
      const j = (await r.json()) as { state?: string; error?: unknown };
      assert.equal(r.status, 202, JSON.stringify(j));
      return j;
    };
    // Two sessions on one pipeline: one idle (it will move), one about to take a long prompt.
    assert.equal((await post(cluster.url, { prompt: 'The miller counted the sacks', max_tokens: 4 }, 'resp-idle')).status, 200);
    assert.equal((await post(cluster.url, { prompt: 'Children followed him', max_tokens: 2 }, 'resp-long')).status, 200);
    const busy = await pipelineOf('resp-idle');
    if ((await pipelineOf('resp-long')) !== busy) assert.equal((await migrate('resp-long', busy)).state, 'done');
    const state = (await (await fetch(`${cluster.url}/admin/v1/cluster`)).json()) as { pipelines: { id: string; stages: { workerId: string }[] }[] };
    const other = state.pipelines.find((p) => p.id !== busy)!.id;
    const stages = state.pipelines.find((p) => p.id === busy)!.stages.map((s) => s.workerId);

    const prompt = `Children followed him ${Array.from({ length: 20 }, () => LONG_TEXT).join(' ')}`;
    const t0 = Date.now();
    const long = post(cluster.url, { prompt, max_tokens: 4, stream: true, logprobs: 0 }, 'resp-long').then((r) => readStream(r));
    // Wait until the first stage is inside a 5-second step.
    let step = 0n;
    for (let i = 0; i < 100 && step === 0n; i++) {
      const load = (await workerStats(cluster.natsUrl, stages[0]!)).load;
      if (load && load.busyTokens >= 64) step = load.busyStepId;
      else await sleep(50);
    }
    assert.notEqual(step, 0n, 'the first stage never computed the prompt');
    const moveT0 = Date.now();
    const moved = await migrate('resp-idle', other);
    const moveMs = Date.now() - moveT0;
    assert.equal(moved.state, 'done', JSON.stringify(moved));
    assert.equal(await pipelineOf('resp-idle'), other);
    // It completed while the stage was still on the same 5-second step.
    const still = (await workerStats(cluster.natsUrl, stages[0]!)).load!;
    assert.equal(still.busyStepId, step, `the migration took ${moveMs} ms: the step ended before it`);
    assert.ok(moveMs < STEP_DELAY_MS, `the migration took ${moveMs} ms`);

    const got = await long;
    const ms = Date.now() - t0;
    assert.equal(got.tokens.length, 4, 'the long prompt was answered');
    assert.equal(got.finish, 'length');
    assert.ok(ms >= 2 * STEP_DELAY_MS, `3,000 tokens in 1,024-token chunks take at least two slow steps, not ${ms} ms`);
    assert.deepEqual(resetLines(logs), [], 'no pipeline went down or was reset');
    for (const id of stages) {
      const times = (beats.get(id) ?? []).filter((t) => t >= t0 && t <= t0 + ms);
      const gaps = times.slice(1).map((t, i) => t - times[i]!);
      assert.ok(times.length >= ms / HEARTBEAT_MS / 2, `${id}: ${times.length} heartbeats in ${ms} ms`);
      assert.ok(Math.max(...gaps) <= 2 * HEARTBEAT_MS, `${id}: a heartbeat came ${Math.max(...gaps)} ms after the one before`);
    }
  });
});

describe('resets mid-prefill and mid-decode', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let ref: Pipeline;
  const logs: string[] = [];
  const piece = (t: number) => vocab.tokenBytes(t).toString('utf8');

  before(async () => {
    cluster = await LocalCluster.start({
      model, pipelines: 1, workers: 2, port: 0, threads: 1, ctxSize: 4096, logSink: (l) => logs.push(l), logLevel: 'info',
      // Prompt chunks take 300 ms longer (a prefill lasts seconds); a stage stopped for 2.5 s
      // keeps its heartbeats within the worker timeout but passes its step's deadline.
      workerFlags: ['--heartbeat-ms', '250', '--test-step-delay-ms', '300', '--test-step-delay-min-tokens', '64'],
      coordinatorFlags: ['--worker-timeout-ms', '20000', '--step-deadline-floor-ms', '1000', '--step-deadline-margin', '2', '--step-budget-ms', '0', '--rebalance-high', '0'],
    });
    vocab = Vocab.load(model);
    ref = Pipeline.open({ model, threads: 1, ctxSize: 4096 });
  });
  after(async () => {
    ref?.dispose();
    vocab?.dispose();
    await cluster?.stop();
  });

  /** Stops a worker (SIGSTOP) for `ms`, then lets it go on. */
  const freeze = async (id: string, ms: number) => {
    const p = cluster.service(id).proc;
    p.kill('SIGSTOP');
    await sleep(ms);
    p.kill('SIGCONT');
  };

  /** A streamed greedy completion that freezes `worker` at token `at` (or once it started when at = 0). */
  const frozenAt = async (prompt: string, n: number, worker: string, at: number) => {
    const before = resetLines(logs).length;
    // (A stream's headers come with its first token: the timer starts with the request.)
    const frozen = at === 0 ? sleep(800).then(() => freeze(worker, 2500)) : null;
    const r = await post(cluster.url, { prompt, max_tokens: n, stream: true, logprobs: 0 });
    const got = await readStream(r, async (k) => {
      if (k === at) await freeze(worker, 2500);
    });
    await frozen;
    assert.ok(resetLines(logs).length > before, `the frozen stage reset its pipeline; the services said:\n${logs.slice(-20).join('\n')}`);
    assert.equal(got.tokens.length, n, `every token arrived: ${JSON.stringify(got)}`);
    return got.tokens;
  };

  const check = (prompt: string, got: string[], k: number) => {
    const want = rebuiltReference(ref, vocab.tokenize(prompt, true, true), got.length, k);
    const m = matchedUntilTie(got, want.tokens.map(piece), want.margins);
    assert.ok(m.equal, `greedy tokens differ from the reference before its first near tie (compared ${m.compared})`);
    assert.ok(m.compared >= Math.min(got.length, k + 8), `the reference has a near tie at ${m.compared}: pick another prompt`);
  };

  it('a request whose prompt was prefilling goes on after the reset and answers what it would have', async () => {
    const prompt = Array.from({ length: 6 }, () => LONG_TEXT).join(' ');
    const got = await frozenAt(prompt, 12, 'p0-s1', 0);
    check(prompt, got, 0);
  });

  it('a request that was decoding goes on from its next token after the reset', async () => {
    const prompt = 'The river ran past the old mill, where the miller';
    const got = await frozenAt(prompt, 40, 'p0-s0', 12);
    check(prompt, got, 12);
  });

  it('after the resets, new requests and a session\'s turns are answered correctly (never a stale cache)', async () => {
    for (const prompt of ['Hi', 'Every morning he counted the sacks of flour', 'By evening the square was empty']) {
      const r = await post(cluster.url, { prompt, max_tokens: 16, logprobs: 0 }, 'after-reset');
      const j = (await r.json()) as { choices: { logprobs: { tokens: string[] } }[] };
      assert.equal(r.status, 200, JSON.stringify(j));
      check(prompt, j.choices[0]!.logprobs.tokens, 0);
    }
  });
});
