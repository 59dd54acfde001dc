// Losing the coordinator: two coordinators race for a Redis lease; when the leader dies (kill -9),
// stops (SIGTERM) or hangs past its lease (SIGSTOP), the standby leads with a higher term, the
// gateway moves every running request to it with what its client has seen, and the stream goes on
// from the next token, rebuilt by re-prefill. A deposed leader that wakes up is fenced out. A
// drain outlives the leader that took it.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel } from '@strata/model';
import { SeqOpKind, SeqOpReplySchema, SeqOpRequestSchema, requestOnce, subjects } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState, matchedUntilTie, readStream, rebuiltReference, sseEvents } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const N = 100;

describe('coordinator failover', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let pipeline: Pipeline;
  const logs: string[] = [];
  before(async () => {
    cluster = await LocalCluster.start({
      model, coordinators: 2, pipelines: 1, workers: 2, port: 0, threads: 1, ctxSize: 1024, logLevel: 'info',
      coordinatorFlags: ['--lease-ms', '1500', '--worker-timeout-ms', '1500', '--default-max-tokens', '40'], workerFlags: ['--heartbeat-ms', '250'],
      logSink: (line) => logs.push(line),
    });
    vocab = Vocab.load(model);
    pipeline = Pipeline.open({ model, threads: 2, ctxSize: 1024 });
  });
  after(async () => {
    pipeline?.dispose();
    vocab?.dispose();
    await cluster?.stop();
  });

  /** Streams `prompt`, runs `fault` on the leader after 15 tokens; checks every token against the reference. */
  async function streamThrough(prompt: string, session: string, fault: (leader: string) => Promise<void>, n = N): Promise<{ leader: string; gap: number }> {
    const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (session) headers['x-session-id'] = session;
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt, max_tokens: n, temperature: 0, stream: true, logprobs: 0 }) });
    const { tokens, times, finish } = await readStream(r, async (n) => {
      if (n === 15) await fault(leader);
    });
    assert.equal(tokens.length, n, 'every token arrived');
    assert.equal(finish, 'length');
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    const text = (ts: number[]) => ts.map((t) => vocab.tokenBytes(t).toString('utf8'));
    const ids = vocab.tokenize(prompt, true, true);
    // The single-process tokens; where the re-prefill flipped a near tie, those of a reference
    // rebuilt where the stream stalled (a hand-over may not stall it at all).
    const plain = rebuiltReference(pipeline, ids, n, 0);
    if (!matchedUntilTie(tokens, text(plain.tokens), plain.margins).equal) {
      const k = gaps.indexOf(Math.max(...gaps)) + 1;
      const expected = rebuiltReference(pipeline, ids, n, k);
      const m = matchedUntilTie(tokens, text(expected.tokens), expected.margins);
      assert.ok(m.compared > k + 20, `the reference has a near tie at token ${m.compared}, too close to the rebuild at ${k}: pick another prompt`);
      assert.ok(m.equal, `the first ${m.compared} tokens (up to the reference's first near tie) are the reference's`);
    }
    return { leader, gap: Math.max(...gaps) };
  }

  /** Restarts a coordinator an earlier test left stopped, and waits until both are alive. */
  async function bothUp(): Promise<void> {
    for (const s of cluster.services.filter((x) => x.role === 'coordinator')) {
      if (s.proc.exitCode !== null || s.proc.signalCode !== null) await cluster.restart(s.id);
    }
    const redis = new Redis(cluster.redisUrl);
    try {
      for (let i = 0; i < 300; i++) {
        if ((await redis.zrangebyscore('strata:coordinators', Date.now(), '+inf')).length === 2) return;
        await sleep(100);
      }
      throw new Error('the restarted coordinator did not come back');
    } finally {
      redis.disconnect();
    }
  }

  /** The coordinator that leads once the old one is gone. */
  async function newLeader(old: string): Promise<string> {
    for (let i = 0; i < 100; i++) {
      const id = (await clusterState(cluster.natsUrl).catch(() => null))?.coordinatorId;
      if (id && id !== old) return id;
      await sleep(100);
    }
    throw new Error(`no coordinator other than ${old} leads`);
  }

  it('kill -9 of the leader: the standby leads and the stream goes on from the next token', async () => {
    const { leader, gap } = await streamThrough('old mill, where', 'failover-kill', async (l) => {
      cluster.service(l).proc.kill('SIGKILL');
    });
    const next = await newLeader(leader);
    console.log(`leader ${leader} killed: ${next} took over, the stream waited ${gap.toFixed(0)} ms (lease 1500 ms)`);
    assert.ok(gap > 1000, 'the standby waited for the lease to expire');
    await cluster.restart(leader);
  });

  it('SIGTERM of the leader: it serves until its successor announces itself, and the stream moves without a pause', async () => {
    await bothUp();
    // Not awaited in the reader: it must see tokens when they come to measure where the stream moved.
    let gone: Promise<unknown> = Promise.resolve();
    const seen = logs.length;
    const { leader, gap } = await streamThrough('Every morning he', '', async (l) => {
      const s = cluster.service(l);
      gone = new Promise((resolve) => s.proc.once('exit', resolve));
      s.proc.kill('SIGTERM');
    }, 300); // long enough to be running when the successor announces itself
    await gone;
    const next = await newLeader(leader);
    console.log(`leader ${leader} stopped: ${next} took over, the stream waited ${gap.toFixed(0)} ms`);
    const since = logs.slice(seen);
    assert.ok(since.some((l) => l.includes('"handed over"') && l.includes(`"to":"${next}"`)), 'the old leader saw its successor announce itself before it left');
    assert.ok(since.some((l) => l.includes('"service":"gateway"') && l.includes('the request moves to it')), 'the stream moved to the successor mid-way (the old leader serves until it announces)');
    await cluster.restart(leader);
  });

  it('a chat request without max_tokens moves whole: the new leader gives it the default and it ends by length', async () => {
    await bothUp();
    const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
    const r = await fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', messages: [{ role: 'user', content: 'Tell me about the old mill' }], temperature: 0, stream: true, logprobs: true }),
    });
    assert.equal(r.status, 200);
    let tokens = 0, finish: string | null = null;
    type ChatChunk = { choices: { logprobs: { content: unknown[] } | null; finish_reason: string | null }[]; error?: { message: string } };
    for await (const j of sseEvents<ChatChunk>(r.body!)) {
      assert.equal(j.error, undefined, JSON.stringify(j.error));
      const before = tokens;
      tokens += j.choices[0]?.logprobs?.content.length ?? 0;
      finish = j.choices[0]?.finish_reason ?? finish;
      if (before < 10 && tokens >= 10) cluster.service(leader).proc.kill('SIGTERM');
    }
    assert.equal(finish, 'length');
    assert.equal(tokens, 40, 'the default of --default-max-tokens, across the hand-over');
    await newLeader(leader);
    await cluster.restart(leader);
  });

  it('a leader paused past its lease is deposed: it stands down when it wakes, and stages refuse its term', async () => {
    await bothUp();
    let paused = '';
    const { leader } = await streamThrough('book bound with', 'failover-pause', async (l) => {
      paused = l;
      cluster.service(l).proc.kill('SIGSTOP');
    });
    const next = await newLeader(leader);
    const seen = logs.length;
    const stoodDown = () => logs.slice(seen).some((l) => l.includes('"standing down"') && l.includes(`"coordinator":"${paused}"`));
    cluster.service(paused).proc.kill('SIGCONT');
    for (let i = 0; i < 100 && !stoodDown(); i++) await sleep(100);
    assert.ok(stoodDown(), 'the deposed leader stood down');
    assert.equal((await clusterState(cluster.natsUrl)).coordinatorId, next, 'the new leader still leads');
    // A stage refuses the old term outright.
    const redis = new Redis(cluster.redisUrl);
    const term = BigInt((await redis.get('strata:coordinator:term')) ?? '0');
    redis.disconnect();
    const refused = await requestOnce(cluster.natsUrls.coordinator, 'test', subjects.workerSeq('p0-s0'), SeqOpRequestSchema, { ops: [{ kind: SeqOpKind.REMOVE, seq: 0, p0: -1, p1: -1 }], term: term - 1n }, SeqOpReplySchema, 5000);
    assert.equal(refused.error?.code, 'stale_leader');
    // Whatever the old one sent on waking was refused or dropped: a request now is exact from the start.
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Every morning he', max_tokens: 40, temperature: 0, stream: true, logprobs: 0 }) });
    const { tokens } = await readStream(r);
    const want = rebuiltReference(pipeline, vocab.tokenize('Every morning he', true, true), 40, 0);
    const m = matchedUntilTie(tokens, want.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), want.margins);
    assert.ok(m.equal, 'after the deposed leader woke, requests are still exact');
  });

  it('a drain outlives its leader: the new leader keeps the pipeline drained, readiness too, until an undrain', async () => {
    await bothUp();
    const post = (path: string, body: unknown) => fetch(`${cluster.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const completion = () => post('/v1/completions', { model: 'default-llama-8x256-s42-f16', prompt: 'The old mill', max_tokens: 2, temperature: 0 });
    const refused = await post('/admin/v1/workers/p0-s1/drain', {});
    assert.equal(refused.status, 409, 'the only pipeline drains only when forced');
    const forced = await post('/admin/v1/workers/p0-s1/drain', { force: true });
    assert.equal(forced.status, 200, await forced.text());
    assert.equal((await fetch(`${cluster.url}/readyz`)).status, 503);

    const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
    cluster.service(leader).proc.kill('SIGKILL');
    const next = await newLeader(leader);
    const p0 = (await clusterState(cluster.natsUrl)).pipelines.find((p) => p.id === 'p0-s0~p0-s1');
    assert.equal(p0?.draining, true, `${next} read the drain from Redis`);
    const ready = await fetch(`${cluster.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.match(((await ready.json()) as { error: { message: string } }).error.message, /^no pipeline can take work/);
    assert.equal((await completion()).status, 503);

    assert.equal((await post('/admin/v1/workers/p0-s0/undrain', {})).status, 200);
    assert.equal((await fetch(`${cluster.url}/readyz`)).status, 200);
    assert.equal((await completion()).status, 200);
    await cluster.restart(leader);
  });
});
