// Migration faults: a target that stops answering aborts the move and the session goes on
// unmoved without losing a token; forged or damaged KV streams are refused by the target; a
// stale owner can never write a session's history.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { credentials } from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { connect } from 'nats';
import { Vocab } from '@strata/ggml';
import { startRedis } from '@strata/local-servers';
import { Pipeline, ensureDefaultModel, prefill } from '@strata/model';
import { SessionStore } from '@strata/coordinator';
import { KvTransfer, SeqOpKind, SeqOpRequestSchema, encode, grpcClient, subjects, type ClusterState, type PushRequest, type PushResponse } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState, readStream, strataGenerate, workerStats } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const P0 = 'p0-s0~p0-s1', P1 = 'p1-s0~p1-s1';

describe('migration faults', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let redis: Redis;
  let state: ClusterState;

  before(async () => {
    cluster = await LocalCluster.start({
      model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024,
      coordinatorFlags: ['--push-timeout-ms', '1500', '--worker-timeout-ms', '2500'], workerFlags: ['--transfer-max-blob-bytes', String(1 << 20)],
      // damaged pushes and the raw clean-up below come from a test client of no role
      natsAuth: false, signTerms: false, transferToken: false,
    });
    vocab = Vocab.load(model);
    redis = new Redis(cluster.redisUrl);
    state = await clusterState(cluster.natsUrl);
  });
  after(async () => {
    redis?.disconnect();
    vocab?.dispose();
    await cluster?.stop();
  });

  it('a target that stops answering aborts the move; the stream goes on unmoved, the target frees what it took', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '120', '--split', '0:4,4:8']);
    const target = cluster.service('p1-s1').proc;
    let migration: Record<string, unknown> = {};
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'fault-1' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Once upon a time', max_tokens: 120, temperature: 0, stream: true, logprobs: 0 }),
    });
    const { tokens } = await readStream(r, async (n) => {
      if (n !== 10) return;
      target.kill('SIGSTOP');
      const m = await fetch(`${cluster.url}/admin/v1/sessions/fault-1/migrate`, { method: 'POST', body: JSON.stringify({ to: P1, wait: true }) });
      migration = (await m.json()) as Record<string, unknown>;
      target.kill('SIGCONT');
    });
    assert.equal(migration.state, 'aborted', JSON.stringify(migration));
    assert.match(String(migration.error), /source_failed|push|deadline|timed out|TIMEOUT/i);
    assert.equal(migration.from, P0);
    assert.deepEqual(tokens, ref.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), 'no token lost, none changed');
    const entries = await redis.xrange('strata:migrations', '-', '+');
    const states = entries.filter(([, f]) => f[1] === migration.id).map(([, f]) => f[f.indexOf('state') + 1]);
    assert.equal(states[0], 'planned');
    assert.equal(states.at(-1), 'aborted');
    assert.ok(!states.includes('switching') && !states.includes('done'), states.join(' → '));
    assert.equal((await redis.hgetall('strata:session:fault-1')).pipeline, P0, 'the source still owns the session');
    // The target's cells come back (its own push failure, or the pipeline's reset when it rejoins).
    let used = [1, 1];
    for (let i = 0; i < 100 && used.some((u) => u > 0); i++) {
      await sleep(100);
      used = await Promise.all(['p1-s0', 'p1-s1'].map(async (w) => (await workerStats(cluster.natsUrl, w)).kvCellsUsed));
    }
    assert.deepEqual(used, [0, 0]);
  });

  it('forged and damaged KV pushes are refused with a named error and change nothing', async () => {
    const w = state.workers.find((x) => x.stage!.workerId === 'p0-s1')!.stage!;
    const Client = grpcClient(KvTransfer);
    const client = new Client(w.grpcAddress, credentials.createInsecure()) as unknown as { push(cb: (e: Error | null, r?: PushResponse) => void): { write(m: PushRequest): boolean; end(): void } };
    const push = (msgs: Omit<PushRequest, '$typeName'>[]) => new Promise<PushResponse>((resolve, reject) => {
      const call = client.push((e, r) => (e ? reject(e) : resolve(r!)));
      for (const m of msgs) call.write({ $typeName: 'strata.v1.PushRequest', ...m });
      call.end();
    });
    // A real blob of layers 4:8, from a pipeline in this process.
    const p = Pipeline.open({ model, threads: 1, ctxSize: 256, split: [{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }] });
    prefill(p, vocab.tokenize('The river ran past the old mill'), 0);
    const blob = p.stages[1]!.cache.exportState(0);
    p.dispose();
    const header = (o: Partial<Record<string, unknown>> = {}) => ({
      header: { $typeName: 'strata.v1.PushHeader' as const, migrationId: 'forged', modelFingerprint: w.modelFingerprint, targetWorkerId: 'p0-s1', targetSeq: 60, l0: 4, l1: 8, sourceWorkerId: 'x', ...o },
      data: new Uint8Array(0), crc32: 0, endOfBlob: false,
    });
    const chunk = (data: Uint8Array, o: Partial<Record<string, unknown>> = {}) => ({ data, crc32: crc32(data) >>> 0, endOfBlob: true, ...o });
    const before = (await workerStats(cluster.natsUrl, 'p0-s1')).kvCellsUsed;
    const cases: [string, Omit<PushRequest, '$typeName'>[]][] = [
      ['checksum', [header(), chunk(blob, { crc32: 12345 })]],
      ['model_mismatch', [header({ modelFingerprint: 'f'.repeat(32) }), chunk(blob)]],
      ['layer_mismatch', [header({ l0: 0, l1: 4 }), chunk(blob)]],
      ['wrong_worker', [header({ targetWorkerId: 'p1-s1' }), chunk(blob)]],
      ['bad_chunk', [chunk(blob)]],
      ['too_large', [header(), ...Array.from({ length: 6 }, () => chunk(new Uint8Array(200_000), { endOfBlob: false }))]],
      ['truncated', [header(), chunk(blob.subarray(0, 100), { endOfBlob: false })]],
      ['checksum', [header(), chunk(Uint8Array.from(blob, (b, i) => (i === 500 ? b ^ 1 : b)), { crc32: crc32(Uint8Array.from(blob, (b, i) => (i === 500 ? b ^ 1 : b))) >>> 0 })]],
      ['bad_magic', [header(), chunk(new Uint8Array(200))]],
    ];
    for (const [code, msgs] of cases) {
      const r = await push(msgs);
      assert.equal(r.error?.code, code, `${code}: ${r.error?.message}`);
      assert.equal((await workerStats(cluster.natsUrl, 'p0-s1')).kvCellsUsed, before, `${code} changed the cache`);
    }
    // And the genuine one is taken.
    const ok = await push([header(), chunk(blob)]);
    assert.equal(ok.error, undefined);
    assert.equal(ok.cells, vocab.tokenize('The river ran past the old mill').length);
    const nc = await connect({ servers: cluster.nats.url });
    await nc.request(subjects.workerSeq('p0-s1'), encode(SeqOpRequestSchema, { ops: [{ kind: SeqOpKind.REMOVE, seq: 60, p0: -1, p1: -1 }] }));
    await nc.close();
  });

  it('cells of a session held by a migration stay reserved: a stream admitted meanwhile never runs out', async () => {
    const post = (session: string, body: Record<string, unknown>) => fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...(session ? { 'x-session-id': session } : {}) },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', temperature: 0, ...body }),
    });
    // Two idle sessions on P0 (the first of two idle pipelines): a long one to move, a short one
    // whose next turn comes home to P0.
    const long = 'The river ran past the old mill. '.repeat(67);
    assert.ok(vocab.tokenize(long, true, true).length > 500);
    for (const [session, prompt] of [['held-big', long], ['held-small', 'Short one']] as const) {
      assert.equal((await post(session, { prompt, max_tokens: 1 })).status, 200);
      assert.equal((await redis.hgetall(`strata:session:${session}`)).pipeline, P0);
    }
    // A stream of 404 cells; after 5 tokens the big session starts moving to a pipeline that
    // stops answering, and the small session's next turn asks for 258 more cells while it moves:
    // 1024 cells cannot hold all of it (the big one's 540-odd included) until the move aborts.
    const target = cluster.service('p1-s1').proc;
    const pending: { migration?: Promise<Response>; second?: Promise<Response> } = {};
    const r = await post('', { prompt: 'Once upon a time', max_tokens: 400, stream: true, logprobs: 0 });
    try {
      const { tokens, finish } = await readStream(r, async (n) => {
        if (n !== 5) return;
        target.kill('SIGSTOP');
        pending.migration = fetch(`${cluster.url}/admin/v1/sessions/held-big/migrate`, { method: 'POST', body: JSON.stringify({ to: P1, wait: true }) });
        await sleep(300);
        pending.second = post('held-small', { prompt: 'Short one and then a little more', max_tokens: 250 });
      });
      assert.equal(tokens.length, 400, 'the stream ran to its end');
      assert.equal(finish, 'length');
      const q = await pending.second!;
      const body = (await q.json()) as { usage?: { completion_tokens: number }; error?: unknown };
      assert.equal(q.status, 200, JSON.stringify(body));
      assert.equal(body.usage?.completion_tokens, 250);
      const m = (await (await pending.migration!).json()) as Record<string, unknown>;
      assert.equal(m.state, 'aborted', JSON.stringify(m));
    } finally {
      target.kill('SIGCONT');
    }
  });

  it('a stale owner cannot write a session once another took it (epoch fencing)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'strata-fence-'));
    const server = await startRedis({ dir });
    const a = new Redis(server.url), b = new Redis(server.url);
    try {
      const old = new SessionStore(a, 'coord-a'), neu = new SessionStore(b, 'coord-b');
      const e1 = await old.claim('s', 'p0');
      assert.equal(await old.write('s', e1, 0, [1, 2, 3]), true);
      const e2 = await neu.claim('s', 'p1');
      assert.equal(e2, e1 + 1);
      assert.equal(await old.write('s', e1, -1, [4]), false, 'the old epoch is refused');
      assert.equal(await neu.write('s', e2, -1, [5]), true);
      const rec = await neu.get('s');
      assert.deepEqual(rec, { owner: 'coord-b', pipeline: 'p1', epoch: e2, tokens: [1, 2, 3, 5] });
      // A long prompt's history is written whole (Lua's unpack is done in slices).
      const long = Array.from({ length: 20_000 }, (_, i) => i);
      assert.equal(await neu.write('s', e2, 0, long), true);
      assert.deepEqual((await neu.get('s'))!.tokens, long);
    } finally {
      a.disconnect();
      b.disconnect();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('a coordinator restarting mid-migration', () => {
  let cluster: LocalCluster;
  let redis: Redis;
  before(async () => {
    cluster = await LocalCluster.start({ model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 512 });
    redis = new Redis(cluster.redisUrl);
  });
  after(async () => {
    redis?.disconnect();
    await cluster?.stop();
  });

  it('finishes from the ledger what passed the switch and aborts the rest', async () => {
    // What a coordinator killed mid-migration leaves: one before its epoch switch, one after.
    const rec = (id: string, session: string, state: string) => ({ id, session, from: P0, to: P1, plan: '[]', state, reason: 'test', error: '', owner: 'coordinator', createdMs: Date.now(), targetSeq: 3 });
    for (const [id, session, state] of [['m-before', 's-before', 'copying'], ['m-after', 's-after', 'switching']] as const) {
      await redis.hset(`strata:migration:${id}`, rec(id, session, state));
      await redis.sadd('strata:migrations:active', id);
      await redis.zadd('strata:migrations:index', Date.now(), id);
    }
    await redis.hset('strata:session:s-before', { owner: 'coordinator', pipeline: P0, epoch: 1 });
    await redis.hset('strata:session:s-after', { owner: 'coordinator', pipeline: P1, epoch: 2 });
    await cluster.restart('coordinator', 'SIGKILL');
    let active = 2;
    for (let i = 0; i < 100 && active > 0; i++) {
      await sleep(100);
      active = await redis.scard('strata:migrations:active');
    }
    assert.equal(active, 0);
    assert.equal(await redis.hget('strata:migration:m-after', 'state'), 'done');
    assert.equal(await redis.hget('strata:migration:m-before', 'state'), 'aborted');
    assert.match((await redis.hget('strata:migration:m-before', 'error'))!, /stopped during the migration \(copying\)/);
    // And the restarted coordinator serves.
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      await sleep(100);
      const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'x', max_tokens: 2 }) });
      ok = r.status === 200;
    }
    assert.ok(ok, 'the restarted coordinator answers');
  });
});
