// Access: with an API key file the gateway refuses callers without a key (401), with an unknown
// key (401) or with a user key on the admin API (403); health stays open; keys never reach logs.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import OpenAI from 'openai';
import { ensureDefaultModel } from '@strata/model';
import { subjects } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { workerStats } from './helpers/cluster.ts';

const USER = 'sk-user-0123456789abcdef', ADMIN = 'sk-admin-0123456789abcdef';

describe('API keys', () => {
  let cluster: LocalCluster;
  let dir: string;
  const logs: string[] = [];
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-keys-'));
    writeFileSync(join(dir, 'keys'), `${USER} user\n${ADMIN} admin\n`);
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 8 }]], port: 0, threads: 1, ctxSize: 512, logLevel: 'debug',
      gatewayFlags: ['--api-keys-file', join(dir, 'keys')], logSink: (l) => logs.push(l),
    });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses the unauthenticated and the wrong scope, serves the right key', async () => {
    const get = (path: string, key?: string, method = 'GET') => fetch(`${cluster.url}${path}`, { method, headers: key ? { authorization: `Bearer ${key}` } : {} });
    assert.equal((await get('/healthz')).status, 200);
    assert.equal((await get('/readyz')).status, 200);
    for (const [path, method] of [['/v1/models', 'GET'], ['/admin/v1/migrations', 'GET'], ['/admin/v1/sessions/x/migrate', 'POST']] as const) {
      const r = await get(path, undefined, method);
      assert.equal(r.status, 401, path);
      assert.equal(((await r.json()) as { error: { type: string } }).error.type, 'authentication_error');
      assert.equal((await get(path, 'sk-wrong-0123456789abcdef', method)).status, 401, path);
    }
    assert.equal((await get('/v1/models', USER)).status, 200);
    assert.equal((await get('/admin/v1/migrations', USER)).status, 403);
    assert.equal((await get('/admin/v1/migrations', ADMIN)).status, 200);
    assert.equal((await get('/v1/models', ADMIN)).status, 200, 'an admin key may do what a user key may');
    const ok = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: USER, maxRetries: 0 });
    assert.equal((await ok.completions.create({ model: 'default-llama-8x256-s42-f16', prompt: 'Hi', max_tokens: 3 })).usage!.completion_tokens, 3);
    const bad = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'sk-nope-0123456789abcdef', maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e: unknown) => e instanceof OpenAI.AuthenticationError);
    assert.ok(logs.length > 0 && !logs.some((l) => l.includes(USER) || l.includes(ADMIN) || l.includes('sk-wrong')), 'no key in any log line');
  });
});

describe('NATS with user credentials', () => {
  let cluster: LocalCluster;
  const logs: string[] = [];
  before(async () => {
    cluster = await LocalCluster.start({ model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 8 }]], port: 0, threads: 1, ctxSize: 512, natsAuth: true, logLevel: 'info', logSink: (l) => logs.push(l) });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('the services log in and serve; an unknown user or none is refused; the password is never logged', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Hi', max_tokens: 2 }) });
    assert.equal(r.status, 200);
    const { connect } = await import('nats');
    await assert.rejects(connect({ servers: cluster.nats.url, maxReconnectAttempts: 0 }), /Authorization Violation|AUTHORIZATION_VIOLATION/i);
    await assert.rejects(connect({ servers: cluster.nats.url.replace('nats://', 'nats://intruder:guess@'), maxReconnectAttempts: 0 }), /Authorization Violation|AUTHORIZATION_VIOLATION/i);
    const { natsOptions } = await import('@strata/wire');
    const nc = await connect(natsOptions(cluster.natsUrl, 'test'));
    await nc.close();
    const passwords = Object.values(cluster.natsUrls).map((u) => new URL(u).password);
    assert.ok(passwords.every((p) => p.length >= 20) && new Set(passwords).size === 4, 'one password per role');
    assert.ok(logs.some((l) => l.includes('nats://strata-worker:***@')), 'ready lines show the URL, redacted');
    assert.ok(!logs.some((l) => passwords.some((p) => l.includes(p))), 'no log line holds a password');
  });

  it('each role is held to its subjects: a gateway cannot drive a worker, a worker cannot speak for the coordinator', async () => {
    const { connect } = await import('nats');
    const { natsOptions } = await import('@strata/wire');
    /** Publishes on `subject` as `role`; the server's permission error, or '' when none came. */
    const publishAs = async (role: 'gateway' | 'worker' | 'operator', subject: string): Promise<string> => {
      const nc = await connect({ ...natsOptions(cluster.natsUrls[role], 'test'), maxReconnectAttempts: 0 });
      let error = '';
      void (async () => {
        for await (const st of nc.status()) if (st.type === 'error') error = String(st.data);
      })();
      nc.publish(subject, new Uint8Array([1, 2, 3]));
      await nc.flush();
      await new Promise((r) => setTimeout(r, 300));
      await nc.close();
      return error;
    };
    const before = (await workerStats(cluster.natsUrl, 'p0-s0')).counters!.steps;
    assert.match(await publishAs('gateway', subjects.workerStep('p0-s0')), /Permissions Violation|PERMISSIONS_VIOLATION/i);
    assert.match(await publishAs('gateway', subjects.coordinatorResult('coordinator')), /Permissions Violation|PERMISSIONS_VIOLATION/i);
    assert.match(await publishAs('worker', subjects.gatewayEvents('r1')), /Permissions Violation|PERMISSIONS_VIOLATION/i);
    assert.match(await publishAs('operator', subjects.coordinatorLeader()), /Permissions Violation|PERMISSIONS_VIOLATION/i);
    assert.equal(await publishAs('gateway', subjects.coordinatorCancel()), '', 'what the role may do goes through');
    assert.equal((await workerStats(cluster.natsUrl, 'p0-s0')).counters!.steps, before, 'the worker received no forged step');
    // Reading another role's traffic is refused too.
    const nc = await connect({ ...natsOptions(cluster.natsUrls.gateway, 'test'), maxReconnectAttempts: 0 });
    const refused = await new Promise<string>((resolve) => {
      nc.subscribe(subjects.workerStep('p0-s0'), { callback: (err) => resolve(err ? err.message : 'a message') });
      setTimeout(() => resolve(''), 2000);
    });
    await nc.close();
    assert.match(refused, /Permissions Violation|PERMISSIONS_VIOLATION/i);
    // And the cluster still serves.
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Hi', max_tokens: 2 }) });
    assert.equal(r.status, 200);
  });
});
