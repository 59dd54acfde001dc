// NATS connection options from one URL or a cluster's comma-separated URLs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { natsOptions } from './nats.ts';

describe('NATS options', () => {
  it('one server, credentials lifted out of the URL', () => {
    const o = natsOptions('nats://worker:p%2Fw@127.0.0.1:4222', 'w');
    assert.deepEqual([o.servers, o.user, o.pass, o.name, o.maxReconnectAttempts], [['nats://127.0.0.1:4222'], 'worker', 'p/w', 'w', -1]);
  });

  it('a cluster: every server, the credentials given on any of them', () => {
    const o = natsOptions('nats://a:4222, nats://u:pw@b:4223,nats://c:4224', 'x');
    assert.deepEqual([o.servers, o.user, o.pass], [['nats://a:4222', 'nats://b:4223', 'nats://c:4224'], 'u', 'pw']);
    assert.throws(() => natsOptions(' , ', 'x'), /no NATS server/);
    assert.throws(() => natsOptions('nats://a:4222,not a url', 'x'), /not a NATS URL/);
  });
});
