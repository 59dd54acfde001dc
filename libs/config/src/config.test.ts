import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig, type Schema } from './mod.ts';

const schema = {
  natsUrl: { kind: 'string', doc: 'NATS', default: 'nats://127.0.0.1:4222' },
  threads: { kind: 'int', doc: 'threads', default: 2 },
  model: { kind: 'string', doc: 'GGUF', required: true },
  draining: { kind: 'bool', doc: 'drain', default: false },
  ratio: { kind: 'number', doc: 'x' },
} satisfies Schema;

test('defaults < file < environment < flags', () => {
  const dir = mkdtempSync(join(tmpdir(), 'strata-config-'));
  const file = join(dir, 'c.json');
  writeFileSync(file, JSON.stringify({ threads: 3, model: 'a.gguf', ratio: 0.5 }));
  const c = loadConfig(schema, { argv: ['--config', file, '--model=b.gguf', '--draining'], env: { STRATA_THREADS: '4' } });
  assert.deepEqual(c, { natsUrl: 'nats://127.0.0.1:4222', threads: 4, model: 'b.gguf', draining: true, ratio: 0.5 });
  const t: number = c.threads;
  assert.equal(t, 4);
});

test('unknown, missing and mistyped values name the key and the source', () => {
  const is = (code: string, re: RegExp) => (e: unknown) => e instanceof ConfigError && e.code === code && re.test(e.message);
  assert.throws(() => loadConfig(schema, { argv: ['--modle', 'x'], env: {} }), is('unknown_key', /--modle/));
  assert.throws(() => loadConfig(schema, { argv: [], env: {} }), is('missing', /STRATA_MODEL/));
  assert.throws(() => loadConfig(schema, { argv: ['--model', 'm', '--threads', '2.5'], env: {} }), is('bad_value', /--threads.*integer/));
  assert.throws(() => loadConfig(schema, { argv: ['--model', 'm'], env: { STRATA_DRAINING: 'maybe' } }), is('bad_value', /STRATA_DRAINING/));
  const dir = mkdtempSync(join(tmpdir(), 'strata-config-'));
  writeFileSync(join(dir, 'bad.json'), '{"model": ');
  assert.throws(() => loadConfig(schema, { argv: ['--config', join(dir, 'bad.json')], env: {} }), is('bad_file', /not JSON/));
  writeFileSync(join(dir, 'extra.json'), '{"model": "m", "nope": 1}');
  assert.throws(() => loadConfig(schema, { argv: ['--config', join(dir, 'extra.json')], env: {} }), is('unknown_key', /nope/));
});

test('a secret comes from the file STRATA_<KEY>_FILE names; STRATA_<KEY> and flags still win', () => {
  const dir = mkdtempSync(join(tmpdir(), 'strata-config-'));
  const secret = join(dir, 'nats-url');
  writeFileSync(secret, 'nats://strata-worker:s3cret@nats:4222\n');
  const base = { argv: ['--model', 'a.gguf'] };
  assert.equal(loadConfig(schema, { ...base, env: { STRATA_NATS_URL_FILE: secret } }).natsUrl, 'nats://strata-worker:s3cret@nats:4222');
  assert.equal(loadConfig(schema, { ...base, env: { STRATA_NATS_URL_FILE: secret, STRATA_NATS_URL: 'nats://x:4222' } }).natsUrl, 'nats://x:4222');
  assert.throws(() => loadConfig(schema, { ...base, env: { STRATA_NATS_URL_FILE: join(dir, 'missing') } }), (e: unknown) => e instanceof ConfigError && /STRATA_NATS_URL_FILE/.test(e.message));
});
