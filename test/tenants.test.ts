// Tenants and credentials, tried as a hostile user and a process on the host would: another key's
// request under the same session id is another session (no prefix oracle, no eviction); a raw
// client reaches neither NATS nor Redis; a forged leader term, even from a leaked credential, fences
// no one out; Redis down is a retriable 503; sessions expire; no secret is on a command line.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { connect } from 'nats';
import { ensureDefaultModel } from '@strata/model';
import {
  LeaderAnnouncementSchema, SeqOpKind, SeqOpReplySchema, SeqOpRequestSchema, encode, encodeStageInput, natsOptions, requestOnce, subjects,
} from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState, workerStats } from './helpers/cluster.ts';

const MODEL = 'default-llama-8x256-s42-f16';
const ALICE = 'sk-alice-0123456789abcdef', BOB = 'sk-bob-0123456789abcdefgh', ADMIN = 'sk-admin-0123456789abcdef';

describe('tenants and credentials (strata up\'s defaults)', () => {
  let cluster: LocalCluster;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-tenants-'));
    writeFileSync(join(dir, 'keys'), `${ALICE} user\n${BOB} user\n${ADMIN} admin ops\n`);
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 1024,
      gatewayFlags: ['--api-keys-file', join(dir, 'keys')], coordinatorFlags: ['--session-ttl-s', '600'],
    });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const complete = async (key: string, body: Record<string, unknown>) => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: MODEL, max_tokens: 1, temperature: 0, ...body }),
    });
    return { status: r.status, retryAfter: r.headers.get('retry-after'), body: (await r.json()) as { usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } }; error?: { code: string; message: string } } };
  };

  it('a session belongs to its key: another key under the same id reads, reuses and evicts nothing of it', async () => {
    const secret = 'Alice keeps her locker code here: 7 3 9 1 5 and never tells anyone';
    const a1 = await complete(ALICE, { prompt: secret, session_id: 'shared-id' });
    assert.equal(a1.status, 200, JSON.stringify(a1.body));
    const a2 = await complete(ALICE, { prompt: `${secret}.`, session_id: 'shared-id' });
    assert.ok(a2.body.usage!.prompt_tokens_details.cached_tokens > 10, 'her own session reuses her prefix');
    // Bob guesses her prefix under her session id: nothing is cached for him, and his request
    // does not touch her session.
    const b = await complete(BOB, { prompt: 'Alice keeps her locker code here: 7 3', session_id: 'shared-id' });
    assert.equal(b.status, 200);
    assert.equal(b.body.usage!.prompt_tokens_details.cached_tokens, 0, 'no prefix oracle across tenants');
    const a3 = await complete(ALICE, { prompt: `${secret}..`, session_id: 'shared-id' });
    assert.ok(a3.body.usage!.prompt_tokens_details.cached_tokens >= a2.body.usage!.prompt_tokens_details.cached_tokens, 'her cache survived his request');
    // The admin API sees both, each under its tenant.
    const list = (await (await fetch(`${cluster.url}/admin/v1/sessions`, { headers: { authorization: `Bearer ${ADMIN}` } })).json()) as { data: { id: string; tenant: string }[] };
    const shared = list.data.filter((s) => s.id.endsWith(':shared-id'));
    assert.equal(shared.length, 2, JSON.stringify(list.data));
    assert.equal(new Set(shared.map((s) => s.tenant)).size, 2);
    assert.ok(shared.every((s) => /^key-[0-9a-f]{12}$/.test(s.tenant) && s.id === `${s.tenant}:shared-id`));
    // Sessions expire: both keys carry the TTL (--session-ttl-s 600).
    const redis = new Redis(cluster.redisUrl);
    try {
      for (const s of shared) {
        const ttl = await redis.pttl(`strata:session:${s.id}`);
        assert.ok(ttl > 0 && ttl <= 600_000, `TTL of ${s.id}: ${ttl}`);
        assert.ok((await redis.pttl(`strata:session:${s.id}:tokens`)) > 0);
      }
    } finally {
      redis.disconnect();
    }
  });

  it('neither NATS nor Redis lets in a client without credentials; Redis\'s own user cannot flush or reconfigure it', async () => {
    await assert.rejects(connect({ servers: cluster.nats.url, maxReconnectAttempts: 0 }), /Authorization Violation|AUTHORIZATION_VIOLATION/i);
    const anon = new Redis(cluster.redis.url, { maxRetriesPerRequest: 0, lazyConnect: true });
    anon.on('error', () => {}); // (its refusals are what is asserted)
    try {
      await anon.connect().catch(() => {});
      await assert.rejects(anon.set('strata:coordinator:lease', 'intruder/999999'), /NOAUTH|WRONGPASS|Authentication/i);
    } finally {
      anon.disconnect();
    }
    const own = new Redis(cluster.redisUrl);
    try {
      await assert.rejects(own.flushall(), /NOPERM/);
      await assert.rejects(own.config('SET', 'maxmemory', '1'), /NOPERM/);
      await assert.rejects(own.set('other:key', '1'), /NOPERM/);
    } finally {
      own.disconnect();
    }
  });

  it('a forged term (no signature) from a leaked coordinator or worker credential fences no one out', async () => {
    const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
    const nc = await connect({ ...natsOptions(cluster.natsUrls.coordinator, 'intruder'), maxReconnectAttempts: 0 });
    const wc = await connect({ ...natsOptions(cluster.natsUrls.worker, 'intruder'), maxReconnectAttempts: 0 });
    try {
      nc.publish(subjects.coordinatorLeader(), encode(LeaderAnnouncementSchema, { coordinatorId: 'intruder', term: 999_999n }));
      const wiped = await requestOnce(cluster.natsUrls.coordinator, 'intruder', subjects.workerSeq('p0-s0'), SeqOpRequestSchema,
        { ops: [{ kind: SeqOpKind.REMOVE, seq: 0, p0: -1, p1: -1 }], term: 999_999n, generation: 1n }, SeqOpReplySchema, 5000);
      assert.equal(wiped.error?.code, 'unproven_fence', 'a sequence operation of an unsigned term is refused');
      const unfenced = await requestOnce(cluster.natsUrls.coordinator, 'intruder', subjects.workerSeq('p0-s0'), SeqOpRequestSchema,
        { ops: [{ kind: SeqOpKind.REMOVE, seq: 0, p0: -1, p1: -1 }] }, SeqOpReplySchema, 5000);
      assert.equal(unfenced.error?.code, 'unproven_fence', 'so is an unfenced one (term 0)');
      const steps = (await workerStats(cluster.natsUrl, 'p0-s1')).counters!.batches;
      for (const chunk of encodeStageInput({
        $typeName: 'strata.v1.StepHeader', stepId: 1n, pipelineId: 'p0', route: ['p0-s0', 'p0-s1'], hop: 1, replySubject: subjects.coordinatorResult(leader),
        entries: [{ $typeName: 'strata.v1.StepEntry', seq: 0, pos0: 0, nTokens: 1, output: true, replay: [], chained: false, embed: false }], tokens: [], traceparent: '', stageMs: [],
        term: 999_999n, generation: 1n, fenceProof: new Uint8Array(64), follows: 0n, ring: false, burst: 0,
      }, new Float32Array(256), 1 << 20)) wc.publish(subjects.workerStep('p0-s1'), chunk);
      await wc.flush();
      await nc.flush();
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal((await workerStats(cluster.natsUrl, 'p0-s1')).counters!.batches, steps, 'the forged step was not run');
    } finally {
      await nc.close();
      await wc.close();
    }
    // The real leader still leads and serves; the gateway still follows it.
    assert.equal((await clusterState(cluster.natsUrl)).coordinatorId, leader);
    const r = await complete(ALICE, { prompt: 'Still serving?', max_tokens: 3 });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal((await fetch(`${cluster.url}/readyz`)).status, 200);
  });

  it('no service has a secret on its command line (/proc/<pid>/cmdline is readable by every user)', () => {
    const secrets = [...Object.values(cluster.natsUrls).map((u) => new URL(u).password), new URL(cluster.redisUrl).password];
    assert.ok(secrets.every((s) => s.length >= 20));
    for (const s of cluster.services) {
      const cmdline = readFileSync(`/proc/${s.proc.pid}/cmdline`, 'utf8');
      assert.ok(cmdline.includes(s.role), `${s.id}: ${cmdline.slice(0, 80)}`);
      assert.ok(!secrets.some((p) => cmdline.includes(p)), `${s.id} has a password on its command line`);
    }
  });

  it('while Redis is down a session request is a retriable 503 that says so, and serves again once it is back', async () => {
    await cluster.redis.stop();
    try {
      const r = await complete(ALICE, { prompt: 'Is the store there?', session_id: 'while-down' });
      assert.equal(r.status, 503, JSON.stringify(r.body));
      assert.equal(r.body.error!.code, 'store_unavailable');
      assert.match(r.body.error!.message, /session store \(Redis\)/);
      assert.equal(r.retryAfter, '1');
    } finally {
      await cluster.redis.restart();
    }
    let last = 0;
    for (let i = 0; i < 50 && last !== 200; i++) {
      last = (await complete(ALICE, { prompt: 'Is the store there?', session_id: 'while-down' })).status;
      if (last !== 200) await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(last, 200);
  });
});
