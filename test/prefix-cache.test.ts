// Automatic prefix caching on a real cluster (NATS, Redis, two ggml stages): requests without a
// session share the cells of an earlier prompt's prefix, compute only the rest (counted on the
// stages), answer as they would without the cache, and never share across tenants, cache salts or
// outside an operator's cache group.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { workerStats } from './helpers/cluster.ts';

const MODEL = 'default-llama-8x256-s42-f16';
const ALICE = 'sk-alice-0123456789abcdef', BOB = 'sk-bob-0123456789abcdefgh';
const CAROL = 'sk-carol-0123456789abcdef', DAVE = 'sk-dave-0123456789abcdefg', ADMIN = 'sk-admin-0123456789abcdef';
const SYSTEM = 'You are the archivist of the old mill by the river. You answer in short plain sentences, you never invent a date, '
  + 'and when a visitor asks about the miller, the wheel, the flood of the spring or the bridge, you tell them what the ledgers say and nothing more. ';

interface Answer {
  status: number;
  text: string;
  promptTokens: number;
  cached: number;
}

describe('prefix cache on a cluster of two stages', () => {
  let cluster: LocalCluster;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-prefix-'));
    writeFileSync(join(dir, 'keys'), `${ALICE} user\n${BOB} user\n${CAROL} user carol cache=public\n${DAVE} user dave cache=public\n${ADMIN} admin ops\n`);
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 2048,
      gatewayFlags: ['--api-keys-file', join(dir, 'keys')],
    });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const complete = async (key: string, prompt: string, extra: Record<string, unknown> = {}): Promise<Answer> => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 8, temperature: 0, ...extra }),
    });
    const body = (await r.json()) as { choices?: { text: string }[]; usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } };
    return { status: r.status, text: body.choices?.[0]?.text ?? '', promptTokens: body.usage?.prompt_tokens ?? 0, cached: body.usage?.prompt_tokens_details.cached_tokens ?? -1 };
  };
  const evaluated = async () => (await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(cluster.natsUrl, w)))).map((s) => Number(s.counters!.tokens));

  it('a second request with the same system prompt computes only its own tokens, and answers as without the cache', async () => {
    const first = await complete(ALICE, `${SYSTEM}Who built the wheel?`);
    assert.equal(first.status, 200);
    assert.equal(first.cached, 0, 'nothing was cached yet');
    const before = await evaluated();
    const second = await complete(ALICE, `${SYSTEM}When did the flood come?`);
    const after = await evaluated();
    assert.ok(second.cached >= second.promptTokens - 12 && second.cached < second.promptTokens, `cached ${second.cached} of ${second.promptTokens}`);
    // Evaluated on every stage: the prompt past the cached prefix, and every sample but the last.
    for (const [i, n] of after.entries()) assert.equal(n - before[i]!, second.promptTokens - second.cached + 8 - 1, `stage ${i}`);
    // The same request in a scope of its own (a cache salt) computes everything: the same answer.
    const fresh = await complete(ALICE, `${SYSTEM}When did the flood come?`, { cache_salt: 'fresh-1' });
    assert.equal(fresh.cached, 0);
    assert.equal(second.text, fresh.text, 'greedy output with and without the cache');
  });

  it('another tenant shares nothing, and neither does another cache salt', async () => {
    const bob = await complete(BOB, `${SYSTEM}Who built the wheel?`);
    assert.equal(bob.status, 200);
    assert.equal(bob.cached, 0, 'no hit across tenants: neither the count nor the timing can tell him what Alice asked');
    const salted = await complete(ALICE, `${SYSTEM}Who built the bridge?`, { cache_salt: 'team-2' });
    assert.equal(salted.cached, 0, 'a salt is a scope of its own');
    const again = await complete(ALICE, `${SYSTEM}Who built the bridge?`, { cache_salt: 'team-2' });
    assert.ok(again.cached > 0, 'and shares within itself');
  });

  it('keys an operator put in one cache group share their prefixes across tenants', async () => {
    const prompt = `${SYSTEM}Where does the river go?`;
    assert.equal((await complete(CAROL, prompt)).cached, 0);
    const dave = await complete(DAVE, prompt);
    assert.ok(dave.cached >= dave.promptTokens - 2, `cached ${dave.cached} of ${dave.promptTokens}`);
    assert.equal((await complete(ALICE, prompt)).cached > 0, true, 'Alice shares her own earlier system prompt, not the group\'s question');
    assert.ok((await complete(ALICE, prompt)).cached >= dave.cached, 'and then her own copy of the question');
  });

  it('eight clients at once with a new system prompt compute it once', async () => {
    const system = `${SYSTEM.replaceAll('river', 'canal')}Today the archive is closed for repairs. `;
    const before = await evaluated();
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => complete(ALICE, `${system}Question ${i}: what is kept in the ledger?`)));
    const after = await evaluated();
    for (const a of answers) assert.equal(a.status, 200);
    const computed = answers.reduce((n, a) => n + a.promptTokens - a.cached, 0);
    const total = answers.reduce((n, a) => n + a.promptTokens, 0);
    assert.ok(answers.filter((a) => a.cached > 0).length >= 7, `cached: ${answers.map((a) => a.cached).join(', ')}`);
    assert.ok(computed * 4 < total, `${computed} of ${total} prompt tokens computed`);
    for (const [i, n] of after.entries()) assert.equal(n - before[i]!, computed + 8 * 7, `stage ${i} evaluated what was not cached`);
  });

  it('operators see the cache: cached prompts, their cells and the share of prompt tokens cached', async () => {
    const r = await fetch(`${cluster.url}/admin/v1/cluster`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const p = ((await r.json()) as { pipelines: { cachedPrefixes?: number; cachedCells?: number; promptTokens?: string; cachedPromptTokens?: string }[] }).pipelines[0]!;
    assert.ok((p.cachedPrefixes ?? 0) > 0 && (p.cachedCells ?? 0) > 100, JSON.stringify(p));
    assert.ok(Number(p.cachedPromptTokens) > 0 && Number(p.cachedPromptTokens) < Number(p.promptTokens), JSON.stringify(p));
  });
});

// The same cache on workers that keep one KV stream per sequence (--kv-streams): a cached prefix
// given to a new request is a copy of its K/V rows into that request's stream, not cells shared
// in place, and a decode step of any sequences is one micro-batch with padding rows between them.
describe('prefix cache on stages with one KV stream per sequence', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 4096, kvStreams: 16,
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  const complete = async (prompt: string, extra: Record<string, unknown> = {}) => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 8, temperature: 0, ...extra }),
    });
    const body = (await r.json()) as { choices?: { text: string }[]; usage?: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } }; error?: { message: string } };
    return { status: r.status, text: body.choices?.[0]?.text ?? body.error?.message ?? '', promptTokens: body.usage?.prompt_tokens ?? 0, cached: body.usage?.prompt_tokens_details.cached_tokens ?? -1 };
  };

  it('the stages say so, and a sequence holds at most one stream', async () => {
    const s = await workerStats(cluster.natsUrl, 'p0-s0');
    assert.equal(s.stage?.kvStreams, 16);
    assert.equal(s.stage?.kvCells, 256, 'cells per stream');
    const long = await complete('word '.repeat(300));
    assert.equal(long.status, 400, long.text);
    assert.match(long.text, /context of 256/);
  });

  it('a cached prefix is copied into the next request\'s stream: it computes only its own tokens and answers as without the cache', async () => {
    const first = await complete(`${SYSTEM}Who built the wheel?`);
    assert.equal(first.status, 200, first.text);
    const second = await complete(`${SYSTEM}When did the flood come?`);
    assert.ok(second.cached >= second.promptTokens - 12 && second.cached < second.promptTokens, `cached ${second.cached} of ${second.promptTokens}`);
    const fresh = await complete(`${SYSTEM}When did the flood come?`, { cache_salt: 'fresh-streams' });
    assert.equal(fresh.cached, 0);
    assert.equal(second.text, fresh.text, 'greedy output with and without the cache');
  });

  it('requests at once answer as each alone', async () => {
    const prompts = Array.from({ length: 6 }, (_, i) => `Item ${i}: the ${['mill', 'wheel', 'river', 'bridge', 'ledger', 'flood'][i]} was`);
    const alone: string[] = [];
    for (const p of prompts) alone.push((await complete(p, { cache_salt: `alone-${p}` })).text);
    const together = await Promise.all(prompts.map((p) => complete(p, { cache_salt: `together-${p}`, max_tokens: 8 })));
    together.forEach((a, i) => assert.equal(a.text, alone[i], `request ${i}`));
  });

  it('the choices of a request share its prompt across streams: each answers as one choice alone', async () => {
    const prompt = `${SYSTEM}What did the miller keep in the old ledger?`;
    const alone = await complete(prompt, { cache_salt: 'n-alone' });
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 8, temperature: 0, n: 3, cache_salt: 'n-three' }),
    });
    const body = (await r.json()) as { choices: { text: string }[] };
    assert.equal(r.status, 200, JSON.stringify(body));
    assert.deepEqual(body.choices.map((c) => c.text), [alone.text, alone.text, alone.text]);
  });
});
