// Sessions evicted to the workers' tiers on a real cluster (NATS, Redis, two ggml stages): an idle
// session that new work needs the cells of is saved to host memory or disk and emptied; its next
// turn comes back from there (cached_tokens, and only the new tokens computed on the stages) with
// the answer the whole conversation gets from scratch; a damaged file on disk is refused and the
// session prefilled again, with the same answer. A cached prompt evicted likewise comes back for
// the next prompt that shares it.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { strataGenerate, workerStats } from './helpers/cluster.ts';

const MODEL = 'default-llama-8x256-s42-f16';

interface Answer { text: string; prompt: number; cached: number }

describe('sessions evicted to host memory and disk', () => {
  let host: LocalCluster;
  let disk: LocalCluster;
  let dir: string;
  let vocab: Vocab;
  const model = ensureDefaultModel();
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-tiers-'));
    const start = (flags: string[]) => LocalCluster.start({ model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 512, workerFlags: flags });
    // The default tiers (host memory), and a cluster whose workers keep evicted sessions on disk only.
    host = await start([]);
    disk = await start(['--kv-host-cache-mib', '0', '--kv-disk-dir', dir]);
    vocab = Vocab.load(model);
  });
  after(async () => {
    vocab?.dispose();
    await host?.stop();
    await disk?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const complete = async (c: LocalCluster, prompt: string, maxTokens: number, session = ''): Promise<Answer> => {
    const r = await fetch(`${c.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...(session ? { 'x-session-id': session } : {}) },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: maxTokens, temperature: 0 }),
    });
    assert.equal(r.status, 200);
    const b = (await r.json()) as { choices: { text: string }[]; usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } } };
    return { text: b.choices[0]!.text, prompt: b.usage.prompt_tokens, cached: b.usage.prompt_tokens_details.cached_tokens };
  };
  const evaluated = async (c: LocalCluster) => (await Promise.all(['p0-s0', 'p0-s1'].map((w) => workerStats(c.natsUrl, w)))).map((s) => Number(s.counters!.tokens));
  const reference = async (prompt: string, n: number) => (await strataGenerate(['--prompt', prompt, '--n-predict', String(n), '--split', '0:4,4:8'])).tokens.map((t) => vocab.tokenBytes(t).toString('utf8')).join('');
  const story = (who: string) => `${who} walked along the river to the old mill, counting the stones of the weir and the boats tied at the bank; `.repeat(6);
  const files = () => readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));

  /** Two sessions, then a one-off request that needs the cells both hold: both go to the tiers. */
  const evictTwo = async (c: LocalCluster, names: [string, string]) => {
    const firsts = names.map((n) => `${story(n)}Then ${n}`);
    const answers = [await complete(c, firsts[0]!, 8, `tier-${names[0]}`), await complete(c, firsts[1]!, 8, `tier-${names[1]}`)];
    for (const a of answers) assert.ok(a.prompt > 120, `${a.prompt} prompt tokens`);
    await complete(c, 'x', 400);
    return names.map((n, i) => ({ session: `tier-${n}`, next: `${firsts[i]}${answers[i]!.text} and after that`, held: answers[i]!.prompt }));
  };

  /** The session's next turn: restored, only its new tokens computed, the answer of the whole conversation from scratch. */
  const resume = async (c: LocalCluster, s: { session: string; next: string; held: number }) => {
    const before = await evaluated(c);
    const r = await complete(c, s.next, 6, s.session);
    const after = await evaluated(c);
    assert.ok(r.cached >= s.held, `${s.session}: cached ${r.cached} of ${r.prompt}`);
    for (const [i, n] of after.entries()) assert.equal(n - before[i]!, r.prompt - r.cached + 6 - 1, `${s.session}: stage ${i} computed only the new tokens`);
    assert.equal(r.text, await reference(s.next, 6), `${s.session}: the answer of the whole conversation from scratch`);
  };

  it('an evicted session comes back from host memory, computing only its new tokens', async () => {
    const evicted = await evictTwo(host, ['Anna', 'Ben']);
    // Operators see it saved, holding no cells; it moves only once its next turn brings it back.
    const list = (await (await fetch(`${host.url}/admin/v1/sessions`)).json()) as { data: { id: string; seq: number; positions: number; saved?: boolean }[] };
    const anna = list.data.find((x) => x.id.endsWith('tier-Anna'))!;
    assert.deepEqual([anna.saved, anna.seq], [true, -1], JSON.stringify(anna));
    assert.ok(anna.positions >= evicted[0]!.held);
    const move = await fetch(`${host.url}/admin/v1/sessions/${encodeURIComponent(anna.id)}/migrate`, { method: 'POST', body: '{}' });
    assert.equal(move.status, 400);
    assert.match(((await move.json()) as { error: { message: string } }).error.message, /saved to the tiers/);
    for (const s of evicted) await resume(host, s);
    const after = (await (await fetch(`${host.url}/admin/v1/sessions`)).json()) as { data: { id: string; saved?: boolean }[] };
    assert.ok(!after.data.find((x) => x.id === anna.id)?.saved, 'back on the stages');
  });

  it('a cached prompt evicted for new work comes back from host memory for the next prompt that shares it', async () => {
    const prompt = `${story('Eve')}Then Eve`;
    const first = await complete(host, prompt, 4);
    assert.ok(first.prompt > 120);
    // A request that needs every cell: the cached prompt goes to the tiers (with any idle session).
    await complete(host, 'x', 400);
    const next = `${prompt} sat down by the wheel`;
    const before = await evaluated(host);
    const r = await complete(host, next, 6);
    const after = await evaluated(host);
    assert.ok(r.cached >= first.prompt - 2, `cached ${r.cached} of ${r.prompt} (the first prompt had ${first.prompt})`);
    for (const [i, n] of after.entries()) assert.equal(n - before[i]!, r.prompt - r.cached + 6 - 1, `stage ${i} computed only the new tokens`);
    assert.equal(r.text, await reference(next, 6), 'the answer of the whole prompt from scratch');
    // Cached again on the stages: the next one shares it there.
    const third = await complete(host, `${prompt} looked at the sky`, 2);
    assert.ok(third.cached >= first.prompt - 2, `cached ${third.cached}`);
  });

  it('and from disk; a damaged file there is refused and its session prefilled again, with the same answer', async () => {
    const [cleo, dan] = await evictTwo(disk, ['Cleo', 'Dan']);
    assert.equal(files().length, 4, `two sessions on two stages: ${files().join(', ')}`);
    await resume(disk, cleo!);
    assert.equal(files().length, 2, 'a state is taken out of its tier when it is loaded');
    for (const f of files()) {
      const bytes = readFileSync(f);
      bytes[bytes.length - 10]! ^= 0x55;
      writeFileSync(f, bytes);
    }
    const r = await complete(disk, dan!.next, 6, dan!.session);
    assert.equal(r.cached, 0, 'nothing was served from a damaged file');
    assert.equal(r.text, await reference(dan!.next, 6));
    assert.equal(files().length, 0, 'the damaged files are gone');
  });
});
