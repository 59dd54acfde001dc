// Live migration end to end: a streaming request moves mid-generation between pipelines split
// at the same and at other layers and into a q8_0 cache, and its client sees one unbroken stream
// of exactly the tokens it would have got unmoved; every move is in the Redis ledger.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Vocab, GgmlType } from '@strata/ggml';
import { Pipeline, ensureDefaultModel, prefill, topK } from '@strata/model';
import { connect } from 'nats';
import { MigrateReplySchema, MigrateRequestSchema, natsOptions, request, subjects } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { readStream, strataGenerate, type Streamed } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const SPLITS = [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }], [{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }], [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }], [{ l0: 0, l1: 5 }, { l0: 5, l1: 8 }]];
const PIPELINES = ['p0-s0~p0-s1', 'p1-s0~p1-s1', 'p2-s0~p2-s1', 'p3-s0~p3-s1'];

/**
 * Headers that give an exchange a connection of its own: the in-process references below block
 * this process for tens of seconds on a loaded machine, and a pooled keep-alive socket that the
 * gateway closed meanwhile fails the next request on it ('fetch failed'; as test/bench/common.ts
 * found for the benchmarks).
 */
const OWN = { connection: 'close' };

/** A streaming completion of a session; `onToken(n)` runs (and is awaited) after the n-th token. */
async function stream(url: string, body: Record<string, unknown>, session: string, onToken: (n: number) => Promise<void>): Promise<Streamed> {
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { ...OWN, 'content-type': 'application/json', 'x-session-id': session }, body: JSON.stringify({ ...body, stream: true, logprobs: 0 }) });
  return readStream(r, onToken);
}

describe('live migration', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let redis: Redis;
  const piece = (t: number) => vocab.tokenBytes(t).toString('utf8');
  const migrate = async (session: string, to: string) => {
    const r = await fetch(`${cluster.url}/admin/v1/sessions/${session}/migrate`, { method: 'POST', headers: { ...OWN, 'content-type': 'application/json' }, body: JSON.stringify({ to, wait: true }) });
    const j = (await r.json()) as Record<string, unknown>;
    assert.equal(r.status, 202, JSON.stringify(j));
    return j;
  };

  before(async () => {
    cluster = await LocalCluster.start({ model, splits: SPLITS, kvTypes: ['f16', 'f16', 'f16', 'q8_0'], port: 0, threads: 1, ctxSize: 1024 });
    vocab = Vocab.load(model);
    redis = new Redis(cluster.redisUrl);
  });
  after(async () => {
    redis?.disconnect();
    vocab?.dispose();
    await cluster?.stop();
  });

  it('a greedy stream moves to the same split, another split and a q8_0 cache without losing a token', async () => {
    const prompt = 'The river ran past the old mill, where the miller kept his accounts';
    const moves: Record<string, unknown>[] = [];
    const got = await stream(cluster.url, { model: 'default-llama-8x256-s42-f16', prompt, max_tokens: 160, temperature: 0 }, 'mig-greedy', async (n) => {
      if (n === 20) moves.push(await migrate('mig-greedy', PIPELINES[1]!));
      if (n === 60) moves.push(await migrate('mig-greedy', PIPELINES[2]!));
      if (n === 100) moves.push(await migrate('mig-greedy', PIPELINES[3]!));
    });
    assert.equal(got.tokens.length, 160, 'one unbroken stream of every token');
    assert.equal(got.finish, 'length');
    for (const [i, m] of moves.entries()) {
      assert.equal(m.state, 'done', JSON.stringify(m));
      assert.equal(m.from, PIPELINES[i]);
      assert.equal(m.to, PIPELINES[i + 1]);
      assert.ok((m.bytes as number) > 0 && (m.positions as number) > 0);
    }
    // Unmoved reference: f16 all the way to where the session entered the q8_0 cache (the
    // f16 → f16 moves are exact), then the same state converted into a q8_0 pipeline.
    const tokens = vocab.tokenize(prompt, true, true);
    const atQ8 = moves[2]!.positions as number;
    const f16 = Pipeline.open({ model, threads: 2, ctxSize: 1024 });
    const q8 = Pipeline.open({ model, threads: 2, ctxSize: 1024, split: SPLITS[3], kvType: GgmlType.Q8_0 });
    try {
      const ref: number[] = [];
      let logits = prefill(f16, tokens, 0);
      let pos = tokens.length;
      while (pos < atQ8) {
        ref.push(topK(logits, 1)[0]!.token);
        logits = f16.forward({ tokens: Int32Array.of(ref.at(-1)!), pos: Int32Array.of(pos++), seq: Int32Array.of(0) });
      }
      ref.push(topK(logits, 1)[0]!.token);
      q8.importState(f16.exportState(0), 0);
      while (ref.length < 160) {
        logits = q8.forward({ tokens: Int32Array.of(ref.at(-1)!), pos: Int32Array.of(pos++), seq: Int32Array.of(0) });
        ref.push(topK(logits, 1)[0]!.token);
      }
      assert.deepEqual(got.tokens, ref.map(piece));
    } finally {
      f16.dispose();
      q8.dispose();
    }
  });

  it('a seeded stream moves and draws exactly what it would have drawn unmoved', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '120', '--split', '0:4,4:8', '--temperature', '0.9', '--seed', '77']);
    const got = await stream(cluster.url, { model: 'default-llama-8x256-s42-f16', prompt: 'Once upon a time', max_tokens: 120, temperature: 0.9, seed: 77 }, 'mig-seeded', async (n) => {
      if (n === 30) await migrate('mig-seeded', PIPELINES[2]!);
      if (n === 80) await migrate('mig-seeded', PIPELINES[0]!);
    });
    assert.deepEqual(got.tokens, ref.tokens.map(piece));
  });

  it('an idle session moves with its cells, and its next turn reuses them on the new pipeline', async () => {
    const body = { model: 'default-llama-8x256-s42-f16', prompt: 'The miller counted the sacks of flour', max_tokens: 8, temperature: 0 };
    const post = (b: unknown) => fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { ...OWN, 'content-type': 'application/json', 'x-session-id': 'mig-idle' }, body: JSON.stringify(b) }).then((r) => r.json()) as Promise<{ choices: { text: string }[]; usage: { prompt_tokens_details: { cached_tokens: number } } }>;
    const first = await post(body);
    const m = await migrate('mig-idle', PIPELINES[2]!);
    assert.equal(m.state, 'done');
    const second = await post({ ...body, prompt: body.prompt + first.choices[0]!.text + ' and then', max_tokens: 4 });
    assert.ok(second.usage.prompt_tokens_details.cached_tokens >= 10, `cached ${second.usage.prompt_tokens_details.cached_tokens}`);
    const h = await redis.hgetall('strata:session:mig-idle');
    assert.equal(h.pipeline, PIPELINES[2]);
    assert.ok(Number(h.epoch) >= 2, 'the move raised the epoch');
  });

  it('the ledger holds every migration and its state changes', async () => {
    const r = await fetch(`${cluster.url}/admin/v1/migrations`, { headers: OWN });
    const list = ((await r.json()) as { data: { id: string; state: string }[] }).data;
    assert.ok(list.length >= 6);
    for (const m of list) {
      assert.equal(m.state, 'done');
      const entries = await redis.xrange('strata:migrations', '-', '+');
      const states = entries.filter(([, f]) => f[1] === m.id).map(([, f]) => f[f.indexOf('state') + 1]);
      assert.deepEqual(states, ['planned', 'copying', 'switching', 'done']);
    }
    assert.equal(await redis.scard('strata:migrations:active'), 0);
  });

  it('two migrations of one session at once: one starts, the other is refused (409), every round', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { ...OWN, 'content-type': 'application/json', 'x-session-id': 'mig-race' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Two hands reached for the sack', max_tokens: 4, temperature: 0 }) });
    assert.equal(r.status, 200);
    // Over one NATS connection the two requests reach the coordinator together, in one read.
    const nc = await connect(natsOptions(cluster.natsUrl, 'test-race'));
    try {
      for (let round = 0; round < 5; round++) {
        const ask = () => request(nc, subjects.coordinatorMigrate(), MigrateRequestSchema, { sessionId: 'mig-race', wait: true, reason: `race ${round}` }, MigrateReplySchema, 60_000);
        const replies = await Promise.all([ask(), ask()]);
        const started = replies.filter((x) => x.migration), refused = replies.filter((x) => x.error);
        assert.equal(started.length, 1, `round ${round}: ${JSON.stringify(replies.map((x) => x.error?.message ?? x.migration?.state))}`);
        assert.equal(started[0]!.migration!.state, 'done');
        assert.deepEqual(refused.map((x) => x.error!.code), ['session_busy']);
      }
    } finally {
      await nc.close();
    }
    // And through the admin API: 202 for one, 409 for the other (the second arrives within a
    // millisecond or two, while the first move, tens of milliseconds, is under way).
    for (let round = 0; round < 2; round++) {
      const post = () => fetch(`${cluster.url}/admin/v1/sessions/mig-race/migrate`, { method: 'POST', headers: { ...OWN, 'content-type': 'application/json' }, body: JSON.stringify({ wait: true }) });
      const statuses = (await Promise.all([post(), post()])).map((x) => x.status).sort();
      assert.deepEqual(statuses, [202, 409], `HTTP round ${round}`);
    }
    const entries = await redis.xrange('strata:migrations', '-', '+');
    const planned = entries.filter(([, f]) => f[f.indexOf('session') + 1] === 'mig-race' && f[f.indexOf('state') + 1] === 'planned');
    assert.equal(planned.length, 7, 'one migration per round, none for a refused request');
    assert.equal(await redis.scard('strata:migrations:active'), 0);
  });
});
