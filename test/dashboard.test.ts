// What operators see: the gateway's dashboard in headless Chromium (Debian's chromium driven by
// playwright-core) and `strata status`, `strata sessions`, `strata migrations` and `strata drain`
// against one local cluster of two pipelines of two workers, with API keys. The dashboard shows
// every worker with its layer range and KV bar, a streaming session, a migration of it while it
// happens (its target worker is held stopped for a moment) and then done; a screenshot of it goes
// to a scratch folder, or to docs/dashboard.png with STRATA_UPDATE_SCREENSHOT=1 (so that a test run
// leaves the tracked file alone).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { main } from '../services/cli/src/main.ts';
import { readStream, type Streamed } from './helpers/cluster.ts';

/** Debian's chromium (scripts/ensure-browser.mjs installs it); playwright-core never downloads one. */
const CHROMIUM = '/usr/bin/chromium';
const model = ensureDefaultModel();
const MODEL_ID = 'default-llama-8x256-s42-f16';
const ADMIN = 'dashboard-admin-key-0123456789';
const USER = 'dashboard-user-key-0123456789';
const P0 = 'p0-s0~p0-s1', P1 = 'p1-s0~p1-s1';
const SCREENSHOT = process.env.STRATA_UPDATE_SCREENSHOT === '1'
  ? join(import.meta.dirname, '..', 'docs', 'dashboard.png')
  : join(mkdtempSync(join(tmpdir(), 'strata-dashboard-')), 'dashboard.png');

/** Runs the strata command in this process; returns its exit code and what it printed. */
async function cli(...args: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const w = new Writable({ write(c, _e, cb) { out += String(c); cb(); } });
  const code = await main(args, w);
  return { code, out };
}

describe('dashboard and operator commands', () => {
  let cluster: LocalCluster;
  let browser: BrowserContext;
  let page: Page;
  let dir: string;
  let streaming: Promise<Streamed> | null = null;
  let migrationId = '';
  const auth = (key: string) => ({ authorization: `Bearer ${key}` });
  const admin = async (path: string, init: RequestInit = {}) => {
    const r = await fetch(`${cluster.url}${path}`, { ...init, headers: { 'content-type': 'application/json', ...auth(ADMIN), ...init.headers } });
    return { status: r.status, body: (await r.json()) as Record<string, unknown> };
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-dashboard-'));
    writeFileSync(join(dir, 'keys'), `${ADMIN} admin\n${USER} user web\n`); // the user's sessions are tenant 'web''s
    cluster = await LocalCluster.start({
      model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024, gatewayFlags: ['--api-keys-file', join(dir, 'keys')],
      // The migration's target worker is stopped for a few seconds: it must not count as dead.
      coordinatorFlags: ['--rebalance-high', '0', '--worker-timeout-ms', '20000', '--seq-op-timeout-ms', '20000'],
    });
    browser = await chromium.launchPersistentContext(join(dir, 'chromium'), {
      executablePath: CHROMIUM, headless: true, viewport: { width: 1280, height: 640 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = browser.pages()[0] ?? await browser.newPage();
  });
  after(async () => {
    await browser?.close();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('serves the page without a key, and the page asks for an admin key', async () => {
    const r = await fetch(`${cluster.url}/dashboard`);
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.match(r.headers.get('content-security-policy') ?? '', /default-src 'none'.*connect-src 'self'/);
    assert.match(await r.text(), /<title>Strata · cluster<\/title>/);
    assert.equal((await fetch(`${cluster.url}/admin/v1/sessions`)).status, 401);
    assert.equal((await fetch(`${cluster.url}/admin/v1/sessions`, { headers: auth(USER) })).status, 403);
    const empty = await admin('/admin/v1/sessions');
    assert.deepEqual(empty, { status: 200, body: { object: 'list', data: [], total: 0 } });
    assert.equal((await admin('/admin/v1/sessions?limit=0')).status, 400);

    await page.goto(`${cluster.url}/dashboard`);
    await page.locator('#auth').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#main').isVisible(), false, 'no data without a key');
    await page.fill('#auth-key', USER);
    await page.click('#auth button');
    await page.getByText('That key is not an admin key').waitFor();
    await page.fill('#auth-key', ADMIN);
    await page.click('#auth button');
    await page.locator('#main').waitFor({ state: 'visible' });
    assert.equal(await page.evaluate('sessionStorage.getItem("strata.adminKey")'), ADMIN, 'the key stays in this tab\'s sessionStorage');
  });

  it('shows both pipelines and every worker with its layer range and KV bar', async () => {
    for (const p of [P0, P1]) await page.locator(`.pipeline[data-pipeline="${p}"]`).waitFor();
    const workers = cluster.services.filter((s) => s.role === 'worker');
    assert.equal(workers.length, 4);
    for (const w of workers) {
      const row = page.locator(`.stage[data-worker="${w.id}"]`);
      assert.equal(await row.locator('.worker').textContent(), w.id);
      assert.equal(await row.locator('.layers').textContent(), `${w.layers!.l0}:${w.layers!.l1}`);
      const bar = row.locator(`[role="progressbar"][data-kv="${w.id}"]`);
      assert.equal(await bar.getAttribute('aria-valuemax'), '1024', 'the KV bar measures the worker\'s cells');
      assert.match((await row.locator('.kv-label').textContent()) ?? '', /^\d+% · \d+\/1,024$/);
    }
    assert.equal(await page.locator('#n-workers').textContent(), '4');
    // Two pipelines split at other layers: 0:4,4:8 and 0:3,3:8.
    assert.deepEqual(await page.locator(`.pipeline[data-pipeline="${P1}"] .layers`).allTextContents(), ['0:3', '3:8']);
  });

  it('shows a streaming session, its migration while it happens, then done', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'dash-1', ...auth(USER) },
      body: JSON.stringify({ model: MODEL_ID, prompt: 'The lighthouse keeper climbed the stairs', max_tokens: 400, temperature: 0, stream: true, logprobs: 0 }),
    });
    let tenth!: () => void;
    const ten = new Promise<void>((resolve) => (tenth = resolve));
    streaming = readStream(r, (n) => n === 10 && tenth());
    await ten;
    const session = page.locator('tr[data-session="web:dash-1"]');
    await session.waitFor();
    assert.equal(await session.locator('td').nth(1).textContent(), P0);
    await page.locator(`.pipeline[data-pipeline="${P0}"] .chip`, { hasText: 'web:dash-1' }).waitFor();
    // Occupancy comes with the workers' heartbeats (every second): the session's cells show in its workers' KV bars.
    // (Polled from here: the page's Content Security Policy forbids evaluating strings in it.)
    for (const w of ['p0-s0', 'p0-s1']) {
      const kv = page.locator(`[data-kv="${w}"]`);
      for (let t = Date.now(); Number(await kv.getAttribute('aria-valuenow')) === 0; await sleep(100)) {
        assert.ok(Date.now() - t < 5000, `${w}'s KV bar shows the session's cells`);
      }
    }

    // The target's last stage stops answering for a moment: the migration waits in the open.
    const target = cluster.service('p1-s1').proc;
    target.kill('SIGSTOP');
    try {
      const m = await admin('/admin/v1/sessions/web:dash-1/migrate', { method: 'POST', body: JSON.stringify({ to: P1 }) });
      assert.equal(m.status, 202, JSON.stringify(m.body));
      migrationId = m.body.id as string;
      const row = page.locator(`tr[data-migration="${migrationId}"]`);
      await row.waitFor({ timeout: 5000 });
      assert.ok(['planned', 'copying', 'switching'].includes((await row.getAttribute('data-state'))!), 'the page shows the migration under way');
      assert.equal(await row.locator('.badge').getAttribute('class'), 'badge active');
      assert.equal(await page.locator('#n-active').textContent(), '1');
      await page.locator('tr[data-session="web:dash-1"] .badge', { hasText: 'moving' }).waitFor({ timeout: 5000 });
      await page.screenshot({ path: SCREENSHOT, fullPage: true, animations: 'disabled' });
    } finally {
      target.kill('SIGCONT');
    }
    await page.locator(`tr[data-migration="${migrationId}"][data-state="done"]`).waitFor({ timeout: 30_000 });
    await page.locator('tr[data-session="web:dash-1"] td:nth-child(2)', { hasText: P1 }).waitFor({ timeout: 5000 });
    assert.equal(await page.locator('#n-active').textContent(), '0');
    const got = await streaming;
    assert.equal(got.tokens.length, 400, 'the stream went on across the move');
    assert.equal(got.finish, 'length');
    const size = statSync(SCREENSHOT).size;
    assert.ok(size < 200_000, `the screenshot is ${size} bytes`);
  });

  it('strata sessions and strata migrations print tables, and with --json what the admin API answers', async () => {
    const s = await cli('sessions', '--nats-url', cluster.natsUrl);
    assert.equal(s.code, 0);
    assert.match(s.out, /^SESSION\s+PIPELINE\s+SEQ\s+POSITIONS\s+STATE\s+LAST USED\s+EPOCH\n/);
    assert.match(s.out, new RegExp(`\\nweb:dash-1\\s+${P1}\\s+\\d+\\s+[\\d,]+\\s+idle\\s+(now|\\d+ s)\\s+\\d+\\n`));
    const sj = await cli('sessions', '--json', '--nats-url', cluster.natsUrl);
    const sessions = JSON.parse(sj.out) as { data: { id: string; pipeline: string; positions: number; epoch: number; last_used: number }[]; total: number };
    assert.deepEqual(sessions, (await admin('/admin/v1/sessions')).body, 'the CLI prints what the admin API answers');
    assert.equal(sessions.total, 1);
    assert.equal(sessions.data[0]!.pipeline, P1);
    assert.ok(sessions.data[0]!.positions > 400 && sessions.data[0]!.epoch >= 2, JSON.stringify(sessions.data[0]));

    const m = await cli('migrations', '--nats-url', cluster.natsUrl);
    assert.equal(m.code, 0);
    assert.match(m.out, /^MIGRATION\s+SESSION\s+FROM → TO\s+STATE\s+POSITIONS\s+MOVED\s+ROUNDS\s+PAUSE\s+TOTAL\s+AGE\s+REASON\n/);
    assert.match(m.out, new RegExp(`${migrationId}\\s+web:dash-1\\s+${P0} → ${P1}\\s+done\\s+[\\d,]+\\s+[\\d.]+ (KiB|MiB)\\s+\\d+\\s+[\\d.]+ m?s\\s+[\\d.]+ m?s\\s+(now|\\d+ s)\\s+operator\\n`));
    const mj = JSON.parse((await cli('migrations', '--json', '--nats-url', cluster.natsUrl)).out) as { data: { id: string; state: string; bytes: number }[] };
    assert.deepEqual(mj, (await admin('/admin/v1/migrations?limit=20')).body);
    assert.equal(mj.data[0]!.id, migrationId);
    assert.ok(mj.data[0]!.bytes > 0);

    assert.equal((await cli('sessions', '--limit', '0', '--nats-url', cluster.natsUrl)).code, 2);
    assert.equal((await cli('status', '--nats-url', 'nats://127.0.0.1:1')).code, 1, 'an unreachable cluster is an error, not a stack trace');
  });

  it('strata drain shows its progress, and status and the page show the drained pipeline', async () => {
    const d = await cli('drain', 'p1-s1', '--nats-url', cluster.natsUrl);
    assert.equal(d.code, 0, d.out);
    assert.match(d.out, /web:dash-1\s+p1-s0~p1-s1 → p0-s0~p0-s1\s+done/);
    assert.match(d.out, /1 session\(s\) moved/);

    const st = await cli('status', '--nats-url', cluster.natsUrl);
    assert.equal(st.code, 0);
    assert.match(st.out, /^coordinator coordinator: 2 pipeline\(s\), 4 worker\(s\), 1 session\(s\), 0 migration\(s\) under way\n/);
    assert.match(st.out, new RegExp(`pipeline ${P1}  ${MODEL_ID}  0 session\\(s\\), \\d+/\\d+ sequences, 0 queued, draining\\n`));
    for (const w of cluster.services.filter((s) => s.role === 'worker')) {
      assert.match(st.out, new RegExp(`\\n  ${w.id}\\s+${w.layers!.l0}:${w.layers!.l1}\\s+f16\\s+[█░]{16}\\s+\\d+%\\s+[\\d,]+/1,024 cells`), w.id);
    }
    assert.match(st.out, /sessions: web:dash-1 \(idle, \d+\)/);
    assert.match(st.out, /drain p1-s1/);
    const sj = JSON.parse((await cli('status', '--json', '--nats-url', cluster.natsUrl)).out) as {
      cluster: { pipelines: { id: string; draining?: boolean }[] }; sessions: { data: { pipeline: string }[] }; migrations: { data: { reason: string }[] };
    };
    assert.equal(sj.cluster.pipelines.find((p) => p.id === P1)?.draining, true);
    assert.equal(sj.sessions.data[0]!.pipeline, P0);
    assert.equal(sj.migrations.data[0]!.reason, 'drain p1-s1');

    await page.locator(`.pipeline[data-pipeline="${P1}"] .badge.draining`).waitFor({ timeout: 5000 });
    await page.locator('tr[data-migration] td', { hasText: 'drain p1-s1' }).waitFor({ timeout: 5000 });
  });
});
