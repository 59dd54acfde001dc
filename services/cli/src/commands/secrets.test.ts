import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { FenceSigner, FenceVerifier } from '@strata/wire';
import { secretsCommand } from './secrets.ts';

const sink = () => new Writable({ write: (_c, _e, cb) => cb() });

test('strata secrets writes each reader its own credentials, once', () => {
  const dir = mkdtempSync(join(tmpdir(), 'strata-secrets-'));
  try {
    assert.equal(secretsCommand(['--dir', dir], sink()), 0);
    const read = (p: string) => readFileSync(join(dir, p), 'utf8');
    const conf = read('nats/nats.conf');
    for (const role of ['worker', 'coordinator', 'gateway', 'operator']) {
      const u = new URL(read(`${role}/nats-url`).trim());
      assert.equal(u.username, `strata-${role}`);
      assert.equal(u.host, 'nats:4222');
      assert.ok(u.password.length >= 20 && conf.includes(`password: "${u.password}"`), `${role}'s password is in nats.conf`);
    }
    const r = new URL(read('coordinator/redis-url').trim());
    assert.match(read('redis/redis.conf'), new RegExp(`^user default off ~\\* &\\* \\+@all\\nuser strata-coordinator on >${r.password} ~strata:\\* `, 'm'));
    assert.equal(statSync(join(dir, 'coordinator/term.key')).mode & 0o777, 0o600);
    const signer = FenceSigner.fromPem(read('coordinator/term.key'));
    for (const role of ['worker', 'gateway']) assert.ok(FenceVerifier.fromPem(read(`${role}/term.pub`)).fence(3n, 7n, signer.fence(3n, 7n)));
    // A second run keeps what is there (pods that restart must still log in).
    const before = read('worker/nats-url');
    assert.equal(secretsCommand(['--dir', dir], sink()), 0);
    assert.equal(read('worker/nats-url'), before);
    assert.equal(secretsCommand(['--dir', dir, '--force'], sink()), 0);
    assert.notEqual(read('worker/nats-url'), before);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
