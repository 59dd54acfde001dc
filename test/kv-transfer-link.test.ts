// KvTransfer through a fault link (LocalCluster faultLinks, link kind 'grpc'): every push into a
// worker passes the proxy in front of its KvTransfer server, so cutting the target pipeline's links
// makes a live migration fail (the push times out, the move aborts, the session decodes on where
// it was); healed, the same session moves, and its client never loses or changes a token.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { readStream, strataGenerate } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const P0 = 'p0-s0~p0-s1', P1 = 'p1-s0~p1-s1';
/** a push that waits this long for its target fails (milliseconds) */
const PUSH_TIMEOUT_MS = 1500;

describe('KvTransfer through a fault link', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let redis: Redis;

  before(async () => {
    cluster = await LocalCluster.start({
      model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024, faultLinks: true,
      coordinatorFlags: ['--push-timeout-ms', String(PUSH_TIMEOUT_MS), '--rebalance-high', '0'],
    });
    vocab = Vocab.load(model);
    redis = new Redis(cluster.redisUrl);
  });
  after(async () => {
    redis?.disconnect();
    vocab?.dispose();
    await cluster?.stop();
  });

  it('a cut target link aborts the move, the session stays; healed, it moves; no token lost', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '80', '--split', '0:4,4:8']);
    const links = ['p1-s0', 'p1-s1'].map((w) => cluster.link(w, 'grpc'));
    const migrate = async () => {
      const r = await fetch(`${cluster.url}/admin/v1/sessions/link-1/migrate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ to: P1, wait: true }) });
      assert.equal(r.status, 202);
      return (await r.json()) as Record<string, unknown>;
    };
    const moves: Record<string, unknown>[] = [];
    const owners: string[] = [];
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'link-1' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Once upon a time', max_tokens: 80, temperature: 0, stream: true, logprobs: 0 }),
    });
    const { tokens } = await readStream(r, async (n) => {
      if (n === 10) {
        for (const l of links) l.cut();
        const t0 = performance.now();
        moves.push(await migrate());
        moves[0]!.waitedMs = performance.now() - t0;
        owners.push((await redis.hgetall('strata:session:link-1')).pipeline ?? '');
        for (const l of links) l.heal();
      }
      if (n === 30) {
        moves.push(await migrate());
        owners.push((await redis.hgetall('strata:session:link-1')).pipeline ?? '');
      }
    });
    const [cut, healed] = moves;
    assert.equal(cut?.state, 'aborted', JSON.stringify(cut));
    assert.match(String(cut.error), /push_failed|deadline/i, 'the push found no target behind the cut link');
    assert.ok((cut.waitedMs as number) >= PUSH_TIMEOUT_MS - 100, `it waited for the push timeout (${cut.waitedMs} ms)`);
    assert.equal(owners[0], P0, 'the source still owned the session');
    assert.equal(healed?.state, 'done', JSON.stringify(healed));
    assert.ok((healed.bytes as number) > 0);
    assert.equal(owners[1], P1);
    assert.deepEqual(tokens, ref.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), 'no token lost, none changed');
  });

  it('a session moved straight back finds room: the move waits for its old sequence to be emptied', async () => {
    const post = async (path: string, body: unknown, headers: Record<string, string> = {}) => {
      const r = await fetch(`${cluster.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    };
    // 700 of a pipeline's 1,024 cells: the pipeline it leaves has room for it again only once
    // the stages have emptied the sequence it held, which their slow NATS links make take 400 ms
    const prompt = Array.from({ length: 690 }, (_, i) => 100 + ((i * 7919) % 20000));
    const turn = await post('/v1/completions', { model: 'default-llama-8x256-s42-f16', prompt, max_tokens: 2, temperature: 0 }, { 'x-session-id': 'back-1' });
    assert.equal(turn.status, 200, JSON.stringify(turn.body));
    const owner = async () => (await redis.hgetall('strata:session:back-1')).pipeline ?? '';
    const from = await owner();
    const to = from === P0 ? P1 : P0;
    const slow = [0, 1].map((s) => cluster.link(`${from === P0 ? 'p0' : 'p1'}-s${s}`, 'nats'));
    for (const l of slow) l.set({ latencyMs: 100 });
    try {
      const away = await post('/admin/v1/sessions/back-1/migrate', { to, wait: true });
      assert.equal(away.body.state, 'done', JSON.stringify(away.body));
      const back = await post('/admin/v1/sessions/back-1/migrate', { to: from, wait: true });
      assert.equal(back.body.state, 'done', JSON.stringify(back.body));
    } finally {
      for (const l of slow) l.set({ latencyMs: 0 });
    }
    assert.equal(await owner(), from);
  });
});
