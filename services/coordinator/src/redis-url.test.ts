// Redis URLs: one server, or Sentinel's several sentinels and the primary's name.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { redisOptions } from './redis-url.ts';

describe('redis URLs', () => {
  it('one server, with credentials and a database', () => {
    const o = redisOptions('redis://strata:p%40ss@10.0.0.5:6380/2', { lazyConnect: true });
    assert.deepEqual(o, { lazyConnect: true, sentinel: false, host: '10.0.0.5', port: 6380, username: 'strata', password: 'p@ss', db: 2 });
    assert.deepEqual(redisOptions('redis://127.0.0.1'), { sentinel: false, host: '127.0.0.1', port: 6379 });
  });

  it('sentinels and the primary name, credentials for the primary', () => {
    const o = redisOptions('redis-sentinel://strata:pw@s1:26379,s2:26380,s3/mymaster');
    assert.equal(o.sentinel, true);
    assert.deepEqual(o.sentinels, [{ host: 's1', port: 26379 }, { host: 's2', port: 26380 }, { host: 's3', port: 26379 }]);
    assert.deepEqual([o.name, o.username, o.password, o.failoverDetector], ['mymaster', 'strata', 'pw', true]);
  });

  it('anything else is refused without echoing a password', () => {
    assert.throws(() => redisOptions('http://x:secret@h/'), (e: unknown) => e instanceof TypeError && !/secret/.test(e.message));
    assert.throws(() => redisOptions('redis-sentinel://s1:26379'), TypeError);
    assert.throws(() => redisOptions('redis-sentinel://s1:99999/m'), TypeError);
  });
});
