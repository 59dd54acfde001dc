import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ApiKeys, cacheScope } from './api-keys.ts';
import { ApiError } from './errors.ts';

const keys = ApiKeys.parse('# keys\nuser-key-0123456789 user\nadmin-key-0123456789 admin  # ops\n');
const status = (fn: () => void) => {
  try {
    fn();
    return 200;
  } catch (e) {
    return e instanceof ApiError ? e.status : 0;
  }
};

test('bearer keys with user and admin scopes', () => {
  assert.equal(keys.scopeOf('Bearer user-key-0123456789'), 'user');
  assert.equal(keys.scopeOf('bearer admin-key-0123456789'), 'admin');
  assert.equal(status(() => keys.require(undefined, 'user')), 401);
  assert.equal(status(() => keys.require('Bearer nope-nope-nope-nope', 'user')), 401);
  assert.equal(status(() => keys.require('Basic dXNlcg==', 'user')), 401);
  assert.equal(status(() => keys.require('Bearer user-key-0123456789', 'admin')), 403);
  assert.equal(status(() => keys.require('Bearer admin-key-0123456789', 'admin')), 200);
  assert.equal(status(() => keys.require('Bearer admin-key-0123456789', 'user')), 200);
});

test('a malformed key file names the line, never the key', () => {
  assert.throws(() => ApiKeys.parse('secret-key-that-is-long superuser'), (e: Error) => /line 1/.test(e.message) && !e.message.includes('secret-key'));
  assert.throws(() => ApiKeys.parse('short user'), /16\+ characters/);
  assert.throws(() => ApiKeys.parse('# nothing\n'), /no key/);
});

test('each key is a tenant of its own unless the file names a shared one', () => {
  const k = ApiKeys.parse('alice-key-0123456789 user\nbob-key-01234567890 user\nteam-key-a-0123456789 user team-7\nteam-key-b-0123456789 admin team-7\n');
  const alice = k.callerOf('Bearer alice-key-0123456789'), bob = k.callerOf('Bearer bob-key-01234567890');
  assert.match(alice.tenant, /^key-[0-9a-f]{12}$/);
  assert.notEqual(alice.tenant, bob.tenant);
  assert.equal(k.callerOf('Bearer team-key-a-0123456789').tenant, 'team-7');
  assert.deepEqual(k.callerOf('Bearer team-key-b-0123456789'), { scope: 'admin', tenant: 'team-7' });
  assert.throws(() => ApiKeys.parse('alice-key-0123456789 user bad_tenant'), /line 1/);
});

test('cached prefixes are the tenant\'s, or a cache group\'s the operator names, narrowed by a salt', () => {
  const k = ApiKeys.parse('alice-key-0123456789 user\ncarol-key-0123456789 user carol cache=public\ndave-key-01234567890 user dave cache=public\n');
  const alice = k.callerOf('Bearer alice-key-0123456789'), carol = k.callerOf('Bearer carol-key-0123456789'), dave = k.callerOf('Bearer dave-key-01234567890');
  assert.equal(cacheScope(alice, ''), `tenant:${alice.tenant}`);
  assert.equal(cacheScope(carol, ''), cacheScope(dave, ''), 'one group, two tenants, one scope');
  assert.notEqual(carol.tenant, dave.tenant);
  assert.notEqual(cacheScope(carol, 'x'), cacheScope(carol, ''), 'a salt is a scope of its own');
  assert.equal(cacheScope({ scope: 'user', tenant: 'group' }, ''), 'tenant:group', 'a tenant named like a group is still a tenant');
  assert.throws(() => ApiKeys.parse('alice-key-0123456789 user cache=bad_group'), /line 1/);
});
