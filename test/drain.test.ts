// Draining a worker moves every session off its pipeline (a streaming one without losing a token)
// so it can stop; the model's last pipeline that takes work is drained only when forced, a
// draining pipeline takes no session, readiness says when no pipeline can take work, and undrain
// puts a pipeline back; the rebalancer moves a session off a pipeline whose KV cells pass the
// watermark.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';

/** Greedy tokens of a prompt in one process, with the margin of each choice. */
function greedy(prompt: string, n: number): { tokens: string[]; margins: number[] } {
  const vocab = Vocab.load(model);
  const p = Pipeline.open({ model, threads: 2, ctxSize: 1024 });
  try {
    const toks = vocab.tokenize(prompt, true, true);
    let logits = prefill(p, toks, 0);
    const tokens: string[] = [], margins: number[] = [];
    for (let k = 0; k < n; k++) {
      const [a, b] = topK(logits, 2);
      tokens.push(vocab.tokenBytes(a!.token).toString('utf8'));
      margins.push(a!.logit - b!.logit);
      logits = p.forward({ tokens: Int32Array.of(a!.token), pos: Int32Array.of(toks.length + k), seq: Int32Array.of(0) });
    }
    return { tokens, margins };
  } finally {
    p.dispose();
    vocab.dispose();
  }
}
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { main } from '../services/cli/src/main.ts';
import { clusterState, matchedUntilTie, readStream } from './helpers/cluster.ts';
import { Pipeline, prefill, topK } from '@strata/model';

const model = ensureDefaultModel();
const MODEL_ID = 'default-llama-8x256-s42-f16';

async function cli(args: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const w = new Writable({ write(c, _e, cb) { out += String(c); cb(); } });
  const code = await main(args, w);
  return { code, out };
}

const complete = (url: string, session: string, body: Record<string, unknown>) =>
  fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': session }, body: JSON.stringify({ model: MODEL_ID, temperature: 0, ...body }) });

describe('drain', () => {
  let cluster: LocalCluster;
  let redis: Redis;
  before(async () => {
    cluster = await LocalCluster.start({ model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024, coordinatorFlags: ['--rebalance-high', '0'] });
    redis = new Redis(cluster.redisUrl);
  });
  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  it('moves every session off the pipeline, a streaming one without losing a token, and takes no new work there', async () => {
    for (const s of ['d-1', 'd-2']) assert.equal((await complete(cluster.url, s, { prompt: `Session ${s} by the river`, max_tokens: 6 })).status, 200);
    const ref = greedy('The river ran', 100);
    const r = await complete(cluster.url, 'd-3', { prompt: 'The river ran', max_tokens: 100, stream: true, logprobs: 0 });
    let drained: Promise<{ code: number; out: string }> | null = null;
    const { tokens } = await readStream(r, (n) => {
      if (n === 10) drained = cli(['drain', 'p0-s1', '--nats-url', cluster.natsUrl]);
    });
    const d = await drained!;
    assert.equal(d.code, 0, d.out);
    assert.match(d.out, /3 session\(s\) moved/);
    assert.equal(tokens.length, 100, 'the stream went on across the drain');
    const m = matchedUntilTie(tokens, ref.tokens, ref.margins);
    assert.ok(m.compared >= 40, `the reference has a near tie at token ${m.compared}: pick another prompt`);
    assert.ok(m.equal, `the first ${m.compared} tokens (up to the reference's first near tie) are the unmoved ones`);
    for (const s of ['d-1', 'd-2', 'd-3']) assert.equal((await redis.hgetall(`strata:session:${s}`)).pipeline, 'p1-s0~p1-s1', s);
    assert.equal((await complete(cluster.url, 'd-4', { prompt: 'A new session', max_tokens: 2 })).status, 200);
    assert.equal((await redis.hgetall('strata:session:d-4')).pipeline, 'p1-s0~p1-s1', 'the drained pipeline takes no new work');
    const list = await cli(['migrations', '--nats-url', cluster.natsUrl]);
    assert.equal((list.out.match(/drain p0-s1/g) ?? []).length, 3, list.out);
  });

  // From here p0 is drained and every session lives on p1, the model's last pipeline that takes work.
  const P0 = 'p0-s0~p0-s1', P1 = 'p1-s0~p1-s1';
  const admin = async (path: string, body?: unknown) => {
    const r = await fetch(`${cluster.url}${path}`, { method: body === undefined ? 'GET' : 'POST', headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as { error?: { code: string; message: string } } & Record<string, unknown> };
  };
  const owners = async (ss: string[]) => Promise.all(ss.map(async (s) => (await redis.hgetall(`strata:session:${s}`)).pipeline));
  const drainMigrations = async (worker: string) => (await redis.xrange('strata:migrations', '-', '+')).filter(([, f]) => f.includes(`drain ${worker}`)).length;

  it('refuses (409) to drain the model\'s last pipeline that takes work, and never moves a session into a draining one', async () => {
    const refused = await admin('/admin/v1/workers/p1-s0/drain', {});
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.equal(refused.body.error?.code, 'last_pipeline');
    assert.match(refused.body.error!.message, new RegExp(`model '${MODEL_ID}' with no pipeline that takes work: the other 1 pipeline\\(s\\) of the model are draining`));
    assert.equal((await cli(['drain', 'p1-s1', '--nats-url', cluster.natsUrl])).code, 1, 'strata drain is refused too');
    assert.deepEqual(await owners(['d-1', 'd-2', 'd-3', 'd-4']), [P1, P1, P1, P1], 'no session moved into the draining pipeline');
    assert.equal(await drainMigrations('p1-s0') + await drainMigrations('p1-s1'), 0);

    const into = await admin('/admin/v1/sessions/d-1/migrate', { to: P0, wait: true });
    assert.equal(into.status, 409, JSON.stringify(into.body));
    assert.equal(into.body.error?.code, 'pipeline_draining');
    const anywhere = await admin('/admin/v1/sessions/d-1/migrate', { wait: true });
    assert.equal(anywhere.status, 404, JSON.stringify(anywhere.body));
    assert.match(anywhere.body.error!.message, /no other pipeline of .* takes work \(1 other\(s\) draining\)/);
    assert.equal((await owners(['d-1']))[0], P1);

    const ready = await admin('/readyz');
    assert.deepEqual([ready.status, ready.body.pipelines, ready.body.draining], [200, 1, 1]);
  });

  it('a forced drain of the last pipeline: readiness says no pipeline can take work, requests get 503, undrain puts it back', async () => {
    const forced = await admin('/admin/v1/workers/p1-s0/drain', { force: true });
    assert.equal(forced.status, 200, JSON.stringify(forced.body));
    assert.deepEqual([forced.body.pipeline, forced.body.failed, (forced.body.migrations as unknown[]).length, forced.body.undrained], [P1, 4, 0, false], 'the sessions have nowhere to go and stay');
    assert.deepEqual(await owners(['d-1', 'd-2', 'd-3', 'd-4']), [P1, P1, P1, P1]);
    assert.deepEqual(Object.keys(await redis.hgetall('strata:drains')).sort(), ['p0-s1', 'p1-s0'], 'both drains are kept in Redis');

    const ready = await admin('/readyz');
    assert.equal(ready.status, 503);
    assert.match(ready.body.error!.message, /^no pipeline can take work: the 2 pipeline\(s\) of .* are draining$/);
    const r = await complete(cluster.url, 'd-5', { prompt: 'Nobody serves this', max_tokens: 2 });
    const body = (await r.json()) as { error: { code: string; message: string } };
    assert.equal(r.status, 503, JSON.stringify(body));
    assert.equal(body.error.code, 'no_pipeline');
    assert.match(body.error.message, new RegExp(`every pipeline of model '${MODEL_ID}' is draining`));

    // Any worker of a drained pipeline undrains it.
    const u = await cli(['undrain', 'p0-s0', '--nats-url', cluster.natsUrl]);
    assert.equal(u.code, 0, u.out);
    assert.equal(u.out, `pipeline ${P0} takes work again (drain of p0-s1 forgotten)\n`);
    const back = await admin('/readyz');
    assert.deepEqual([back.status, back.body.pipelines, back.body.draining], [200, 1, 1]);
    assert.equal((await complete(cluster.url, 'd-5', { prompt: 'Somebody serves this', max_tokens: 2 })).status, 200);
    assert.deepEqual(await owners(['d-5']), [P0]);

    const again = await admin('/admin/v1/workers/p1-s1/undrain', {});
    assert.deepEqual([again.status, again.body.pipeline, again.body.workers], [200, P1, ['p1-s0']]);
    assert.deepEqual(await redis.hgetall('strata:drains'), {});
    assert.deepEqual((await admin('/admin/v1/workers/p1-s1/undrain', {})).body, { pipeline: P1, workers: [] }, 'undrain is idempotent');
    assert.equal((await admin('/admin/v1/workers/nobody/undrain', {})).status, 404);
    const all = await admin('/readyz');
    assert.deepEqual([all.status, all.body.pipelines, all.body.draining], [200, 2, 0]);
  });

  it('a drained worker that restarts serves again: its drain ended with the process', async () => {
    const d = await cli(['drain', 'p1-s1', '--nats-url', cluster.natsUrl]);
    assert.equal(d.code, 0, d.out);
    assert.deepEqual(await owners(['d-1', 'd-2', 'd-3', 'd-4']), [P0, P0, P0, P0], 'the sessions moved to the pipeline that takes work');
    assert.deepEqual(Object.keys(await redis.hgetall('strata:drains')), ['p1-s1']);
    await cluster.restart('p1-s1');
    let p1: { draining: boolean } | undefined;
    for (let i = 0; i < 300 && !(p1 && !p1.draining); i++) {
      await sleep(200);
      p1 = (await clusterState(cluster.natsUrl).catch(() => null))?.pipelines.find((p) => p.id === P1);
    }
    assert.equal(p1?.draining, false, 'the pipeline came back and takes work');
    assert.deepEqual(await redis.hgetall('strata:drains'), {}, 'the restarted worker\'s drain is forgotten');
  });
});

describe('rebalancer', () => {
  let cluster: LocalCluster;
  let redis: Redis;
  before(async () => {
    cluster = await LocalCluster.start({ model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 256, coordinatorFlags: ['--rebalance-high', '0.6', '--rebalance-low', '0.5'] });
    redis = new Redis(cluster.redisUrl);
  });
  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  it('moves a session off a pipeline whose KV occupancy passed the high watermark, and only one', async () => {
    // Two sessions of ~118 cells each on one pipeline of 256: 92 % > 60 %; one fits the other below 50 %.
    const words = 'the river ran past the old mill where the miller kept his accounts in a book bound with red leather'.split(' ');
    for (const s of ['r-1', 'r-2']) {
      const prompt = Array.from({ length: 5 }, () => words.join(' ')).join(' ');
      assert.equal((await complete(cluster.url, s, { prompt: `${s} ${prompt}`, max_tokens: 4 })).status, 200);
    }
    const owner = async (s: string) => (await redis.hgetall(`strata:session:${s}`)).pipeline;
    let moved: string[] = [];
    for (let i = 0; i < 60 && moved.length === 0; i++) {
      await sleep(200);
      moved = ['r-1', 'r-2'];
      moved = (await Promise.all(moved.map(async (s) => ((await owner(s)) === 'p1-s0~p1-s1' ? s : '')))).filter(Boolean);
    }
    assert.equal(moved.length, 1, 'one session moved');
    await sleep(3000);
    const after = await Promise.all(['r-1', 'r-2'].map(owner));
    assert.deepEqual(after.sort(), ['p0-s0~p0-s1', 'p1-s0~p1-s1'], 'and it stays: no ping-pong');
    const entries = await redis.xrange('strata:migrations', '-', '+');
    const reasons = entries.filter(([, f]) => f[f.indexOf('state') + 1] === 'planned').map(([, f]) => f[f.indexOf('reason') + 1]);
    assert.equal(reasons.length, 1);
    assert.match(reasons[0]!, /^rebalance: \d+% of KV cells used$/);
  });
});
