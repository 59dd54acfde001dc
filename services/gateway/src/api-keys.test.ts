import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ApiKeys } from './api-keys.ts';
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
