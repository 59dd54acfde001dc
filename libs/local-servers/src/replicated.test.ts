// A NATS cluster and a Sentinel-watched Redis on loopback: the cluster routes every server to
// the others and a client of one reaches a client of another; a replica is in sync, and killing
// the primary makes the sentinels promote it.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect } from 'nats';
import { startNatsCluster, natsClientNames, type LocalNatsCluster } from './nats-server.ts';
import { startRedisSentinels, type ReplicatedRedis } from './redis-server.ts';

describe('replicated local servers', () => {
  let dir: string;
  let nats: LocalNatsCluster | undefined;
  let redis: ReplicatedRedis | undefined;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'strata-replicated-'));
  });
  after(async () => {
    await nats?.stop();
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('a NATS cluster of 3: messages cross servers, and a client moves on when its server dies', async () => {
    nats = await startNatsCluster(3, { dir: join(dir, 'nats') });
    assert.equal(nats.url.split(',').length, 3);
    const a = await connect({ servers: nats.servers[0]!.url, name: 'a', maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const b = await connect({ servers: nats.servers[2]!.url, name: 'b' });
    try {
      assert.deepEqual((await natsClientNames(nats.monitorPorts[0]!)).filter((x) => x === 'a'), ['a']);
      b.subscribe('echo', { callback: (_e, m) => m.respond(m.data) });
      await b.flush();
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(new TextDecoder().decode((await a.request('echo', new TextEncoder().encode('hi'), { timeout: 2000 })).data), 'hi');
      nats.servers[0]!.kill();
      // a learnt the others from the cluster's gossip and reconnects to one of them
      for (let i = 0; ; i++) {
        try {
          await a.request('echo', new TextEncoder().encode('again'), { timeout: 500 });
          break;
        } catch (err) {
          if (i > 40) throw err;
        }
      }
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('Redis behind 3 sentinels: the replica takes over when the primary is killed', async () => {
    redis = await startRedisSentinels({ dir: join(dir, 'redis'), users: [{ user: 'app', password: 'pw', rules: '~* +@all' }] });
    assert.match(redis.url, /^redis-sentinel:\/\/app:pw@127\.0\.0\.1:\d+,127\.0\.0\.1:\d+,127\.0\.0\.1:\d+\/strata$/);
    assert.equal(await redis.primaryPort(), redis.primary.port);
    redis.primary.kill();
    const until = Date.now() + 20_000;
    while ((await redis.primaryPort()) !== redis.replicas[0]!.port) {
      assert.ok(Date.now() < until, 'the sentinels promote the replica');
      await new Promise((r) => setTimeout(r, 200));
    }
  });
});
