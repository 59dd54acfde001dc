// The leader lease against a real redis-server: terms only go up, and a term once superseded is
// never held again, even by its old holder renewing after the lease expired.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { startRedis, type LocalServer } from '@strata/local-servers';
import { LeaderLease } from './lease.ts';

describe('LeaderLease', () => {
  const root = mkdtempSync(join(tmpdir(), 'strata-lease-'));
  let server: LocalServer;
  let redis: Redis;
  before(async () => {
    server = await startRedis({ dir: join(root, 'redis'), appendonly: false });
    redis = new Redis(server.url);
  });
  after(async () => {
    redis?.disconnect();
    await server?.stop();
    rmSync(root, { recursive: true, force: true });
  });

  it('one holder at a time; a lapsed holder loses to the newer term it missed', async () => {
    await redis.flushall();
    const a = new LeaderLease(redis, 'a', 200);
    const b = new LeaderLease(redis, 'b', 200);
    assert.equal(await a.acquire(), 1);
    assert.equal(await b.acquire(), 0, 'held by a');
    assert.equal(await a.renew(), true);
    await sleep(300); // a could not renew in time (cut off from Redis, paused)
    assert.equal(await b.acquire(), 2);
    await sleep(300); // and b lapsed too (slow to renew while taking the lead)
    assert.equal(await a.renew(), false, 'term 1 was superseded by term 2: it does not come back');
    assert.equal(a.term, 0);
    assert.equal(await b.renew(), true, 'b takes its own expired lease back: no newer term was given out');
    assert.deepEqual(await LeaderLease.holder(redis), { id: 'b', term: 2 });
    assert.equal(await a.acquire(), 0);
  });

  it('a holder renews its term after Redis lost every key, and the next term is newer than it', async () => {
    await redis.flushall();
    const a = new LeaderLease(redis, 'a', 5000);
    await redis.set('strata:coordinator:term', '6');
    assert.equal(await a.acquire(), 7);
    await redis.flushall(); // a restart without persistence
    assert.equal(await a.renew(), true);
    assert.deepEqual(await LeaderLease.holder(redis), { id: 'a', term: 7 });
    await a.release();
    assert.equal(await new LeaderLease(redis, 'b', 5000).acquire(), 8, 'the counter was restored with the lease');
  });
});
