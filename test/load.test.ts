// Load: as many concurrent streaming sessions as a pipeline holds (its sequences running, its
// queue waiting) all complete with their reference tokens; past that, the surplus is told to come
// back at once (429 with Retry-After), never left to time out. `npm run bench -- --only load`
// measures how many the default local cluster holds.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { matchedUntilTie, rebuiltReference } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const SEQS = 16, QUEUE = 16, MAX_TOKENS = 24;
const PROMPT = 'The river ran';

interface Result {
  status: number;
  retryAfter: string | null;
  code: string;
  tokens: string[];
  /** milliseconds until the answer's status line */
  answeredMs: number;
}

async function session(url: string, id: string): Promise<Result> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': id },
    body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0, stream: true, logprobs: 0 }),
  });
  const out: Result = { status: r.status, retryAfter: r.headers.get('retry-after'), code: '', tokens: [], answeredMs: performance.now() - t0 };
  const text = await r.text();
  if (r.status !== 200) {
    out.code = (JSON.parse(text) as { error: { code: string } }).error.code;
    return out;
  }
  for (const ev of text.split('\n\n')) {
    if (!ev.startsWith('data: {')) continue;
    const j = JSON.parse(ev.slice(6)) as { choices?: { logprobs: { tokens: string[] } | null }[]; error?: { code: string } };
    if (j.error) out.code = j.error.code;
    out.tokens.push(...(j.choices?.[0]?.logprobs?.tokens ?? []));
  }
  return out;
}

describe('load', () => {
  let cluster: LocalCluster;
  let want: { text: string[]; margins: number[] };
  before(async () => {
    cluster = await LocalCluster.start({
      model, port: 0, threads: 1, ctxSize: 1024, workerFlags: ['--n-seq-max', String(SEQS)],
      coordinatorFlags: ['--max-queue', String(QUEUE), '--rebalance-high', '0'],
    });
    const vocab = Vocab.load(model);
    const p = Pipeline.open({ model, threads: 2, ctxSize: 256 });
    const ref = rebuiltReference(p, vocab.tokenize(PROMPT, true, true), MAX_TOKENS, 0);
    want = { text: ref.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), margins: ref.margins };
    p.dispose();
    vocab.dispose();
  });
  after(async () => {
    await cluster?.stop();
  });

  it(`${SEQS + QUEUE} concurrent streaming sessions (sequences + queue) all complete with their reference tokens`, async () => {
    const rs = await Promise.all(Array.from({ length: SEQS + QUEUE }, (_, i) => session(cluster.url, `load-a${i}`)));
    for (const r of rs) {
      assert.equal(r.status, 200, `${r.status} ${r.code}`);
      assert.equal(r.code, '', 'no error event');
      assert.equal(r.tokens.length, MAX_TOKENS);
      assert.ok(matchedUntilTie(r.tokens, want.text, want.margins).equal, 'the reference tokens');
    }
  });

  it('past that: the surplus gets 429 with Retry-After at once, and what was accepted completes', async () => {
    const n = 2 * (SEQS + QUEUE);
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => session(cluster.url, `load-b${i}`)));
    const served = rs.filter((r) => r.status === 200), limited = rs.filter((r) => r.status === 429);
    console.log(`${n} at once: ${served.length} served, ${limited.length} told to retry (slowest 429 after ${Math.max(...limited.map((r) => r.answeredMs)).toFixed(0)} ms)`);
    assert.equal(served.length + limited.length, n, `statuses ${rs.map((r) => r.status).join(',')}`);
    assert.ok(served.length >= SEQS + QUEUE, `at least the sequences and the queue are served (${served.length})`);
    assert.ok(limited.length > 0, 'the surplus is refused');
    for (const r of limited) {
      assert.equal(r.retryAfter, '1');
      assert.equal(r.code, 'overloaded');
    }
    for (const r of served) {
      assert.equal(r.code, '');
      assert.equal(r.tokens.length, MAX_TOKENS);
      assert.ok(matchedUntilTie(r.tokens, want.text, want.margins).equal, 'the reference tokens');
    }
  });
});
