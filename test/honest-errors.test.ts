// Answers that tell a client the truth about retrying, and requests bounded in what they cost:
// a grammar that is not GBNF, or past the gateway's limits, is a 400 before it reaches the
// cluster; a request that could never fit the cache is a 400, not a 429; a request that stalls
// every pipeline it is put on fails with a 400 after a bounded number of tries instead of taking
// them down one after another; without a standby, a dead coordinator fails running and new
// requests within the leader watch's lapse instead of the gateway's minute; and a stream honours
// the client's `Connection: close`.
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { sseEvents, type CompletionChunk } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const MODEL_ID = 'default-llama-8x256-s42-f16';

/** POSTs a completion; its status, JSON body and milliseconds. */
async function complete(url: string, body: Record<string, unknown>): Promise<{ status: number; json: { error?: { code: string; message: string; param: string | null }; usage?: { completion_tokens: number } }; ms: number; retryAfter: string | null }> {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL_ID, ...body }) });
  return { status: r.status, json: (await r.json()) as never, ms: performance.now() - t0, retryAfter: r.headers.get('retry-after') };
}

/** A grammar of `n` alternatives in one rule. */
const words = (n: number) => `root ::= ${Array.from({ length: n }, (_, i) => `"w${i}"`).join(' | ')}\n`;

/** 30,000 alternatives (318 KB), like the grammar that took both pipelines down. */
const HUGE = words(30_000);

describe('bad requests are 400s with the reason, at the gateway', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({ model, workers: 2, port: 0, threads: 1, ctxSize: 512 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('an invalid grammar, and one past the limits, never reach the cluster', async () => {
    for (const [grammar, code, why] of [
      ['root ::= ("yes" | "no"', 'invalid_grammar', /expecting '\)' at line 1, column 23/],
      ['root ::= answer\n', 'invalid_grammar', /rule 'answer' is used but never defined/],
      // libllama would build rules without end for this one: a worker would never answer again.
      ['root ::= "a"{3,1}', 'invalid_grammar', /maximum is below its minimum/],
      [HUGE, 'grammar_too_large', /the grammar is \d{6} bytes; at most 32768/],
      [`root ::= ${'('.repeat(200)}"a"${')'.repeat(200)}`, 'grammar_too_large', /nests groups more than 32 deep/],
    ] as const) {
      const r = await complete(cluster.url, { prompt: 'The answer is', max_tokens: 4, grammar });
      assert.equal(r.status, 400, JSON.stringify(r.json));
      assert.equal(r.json.error?.code, code);
      assert.equal(r.json.error?.param, 'grammar');
      assert.match(r.json.error!.message, why);
      assert.equal(r.retryAfter, null, 'nothing to retry');
    }
    // A token the vocabulary does not have (libllama would refuse it too).
    const bad = await complete(cluster.url, { prompt: 'x', max_tokens: 2, grammar: 'root ::= <no-such-token-here>' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error?.code, 'invalid_grammar');
    assert.match(bad.json.error!.message, /<no-such-token-here> is not one token of the vocabulary at line 1, column 10/);
    // And a good one still works.
    const ok = await complete(cluster.url, { prompt: 'The answer is', max_tokens: 3, temperature: 0, grammar: 'root ::= ("yes" | "no") " " [0-9]' });
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
  });

  it('a JSON schema whose grammar passes the limits is a 400 naming the schema', async () => {
    const big = { type: 'string', enum: Array.from({ length: 3000 }, (_, i) => `v${i}`) };
    const r = await complete(cluster.url, { prompt: 'x', max_tokens: 4, response_format: { type: 'json_schema', json_schema: { name: 'big', schema: big } } });
    assert.equal(r.status, 400, JSON.stringify(r.json));
    assert.equal(r.json.error?.code, 'grammar_too_large');
    assert.equal(r.json.error?.param, 'response_format.json_schema.schema');
    assert.match(r.json.error!.message, /JSON schema/);
  });

  it('a request that could never fit the cache is a 400, not a 429 to retry', async () => {
    // Three choices of 10 + 200 cells each: every one fits the context, all three never fit 512 cells.
    const r = await complete(cluster.url, { prompt: 'Once upon a time', max_tokens: 200, n: 3, temperature: 0 });
    assert.equal(r.status, 400, JSON.stringify(r.json));
    assert.equal(r.json.error?.code, 'context_length_exceeded');
    assert.match(r.json.error!.message, /3 choices of \d+ prompt tokens \+ 200 to generate each exceed the 512 cells/);
    const fits = await complete(cluster.url, { prompt: 'Once upon a time', max_tokens: 20, n: 3, temperature: 0 });
    assert.equal(fits.status, 200, JSON.stringify(fits.json));
  });

  it('a stream answers Connection: close and closes the connection after its last event', async () => {
    const { port } = new URL(cluster.url);
    const body = JSON.stringify({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 5, temperature: 0, stream: true });
    const raw = await new Promise<{ text: string; closedAfterMs: number }>((resolve, reject) => {
      const sock = tcpConnect(Number(port), '127.0.0.1');
      let text = '';
      let doneAt = 0;
      sock.setTimeout(20_000, () => {
        sock.destroy();
        reject(new Error(`the connection stayed open after the stream ended: ${JSON.stringify(text.slice(0, 300))}`));
      });
      sock.on('data', (d) => {
        text += d.toString('utf8');
        if (!doneAt && text.includes('data: [DONE]')) doneAt = performance.now();
      });
      sock.on('close', () => resolve({ text, closedAfterMs: performance.now() - doneAt }));
      sock.on('error', reject);
      sock.write(`POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    const head = raw.text.slice(0, raw.text.indexOf('\r\n\r\n')).toLowerCase();
    assert.match(head, /^http\/1\.1 200/);
    assert.match(head, /\r\nconnection: close\r\n/);
    assert.ok(raw.text.includes('data: [DONE]'));
    assert.ok(raw.closedAfterMs < 2000, `closed ${raw.closedAfterMs.toFixed(0)} ms after the last event`);
  });
});

describe('a request that stalls every pipeline it is put on', () => {
  let cluster: LocalCluster;
  before(async () => {
    // A gateway whose limits let a grammar of 40,000 alternatives through (as every gateway did
    // before it had limits), and steps stuck after 1 s: libllama takes about 3 s to compile that
    // grammar here, and a second or more a token to sample under it.
    cluster = await LocalCluster.start({
      model, workers: 2, port: 0, threads: 1, ctxSize: 512,
      coordinatorFlags: ['--step-deadline-floor-ms', '1000', '--seq-op-timeout-ms', '2000'],
      gatewayFlags: ['--grammar-max-bytes', '1000000', '--grammar-max-alternatives', '100000', '--grammar-max-fanout', '100000', '--timeout-ms', '120000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('fails with a 400 after taking its pipeline down twice, and the pipeline serves again', async () => {
    const r = await complete(cluster.url, { prompt: 'The word is', max_tokens: 4, grammar: words(40_000) });
    assert.equal(r.status, 400, JSON.stringify(r.json));
    assert.equal(r.json.error?.code, 'repeated_failure');
    assert.match(r.json.error!.message, /stalled or lost its pipeline 2 times .*not run again/);
    console.log(`the request failed for good after ${(r.ms / 1000).toFixed(1)} s`);
    const ok = await complete(cluster.url, { prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
    assert.equal(ok.status, 200, JSON.stringify(ok.json));
    assert.equal(ok.json.usage?.completion_tokens, 4);
  });
});

describe('without a standby, a dead coordinator fails requests fast', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model, workers: 2, port: 0, threads: 1, ctxSize: 1024,
      coordinatorFlags: ['--lease-ms', '1000'], gatewayFlags: ['--leader-lapse-ms', '2000', '--timeout-ms', '60000'],
      workerFlags: ['--test-step-delay-ms', '50'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('running and new requests get 503 no_coordinator within the lapse, not after the gateway timeout', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 400, temperature: 0, stream: true, logprobs: 0 }),
    });
    let killedAt = 0;
    let error: CompletionChunk['error'];
    let tokens = 0;
    for await (const j of sseEvents<CompletionChunk>(r.body!)) {
      if (j.error) error = j.error;
      tokens += j.choices?.[0]?.logprobs?.tokens.length ?? 0;
      if (tokens >= 5 && !killedAt) {
        killedAt = performance.now();
        cluster.service('coordinator').proc.kill('SIGKILL');
      }
    }
    const failedAfter = performance.now() - killedAt;
    assert.ok(killedAt > 0, 'the stream ran before the coordinator died');
    assert.equal(error?.code, 'no_coordinator', JSON.stringify(error));
    assert.ok(failedAfter < 8000, `the stream failed ${failedAfter.toFixed(0)} ms after the coordinator died`);
    const late = await complete(cluster.url, { prompt: 'x', max_tokens: 2 });
    assert.equal(late.status, 503, JSON.stringify(late.json));
    assert.equal(late.json.error?.code, 'no_coordinator');
    assert.equal(late.retryAfter, '1');
    assert.ok(late.ms < 3000, `a new request was answered in ${late.ms.toFixed(0)} ms`);
    console.log(`stream failed ${(failedAfter / 1000).toFixed(1)} s after the kill; a new request in ${late.ms.toFixed(0)} ms`);
    // A coordinator that comes back leads again, and the gateway sends it requests at once.
    await cluster.restart('coordinator');
    let status = 0;
    for (let i = 0; i < 100 && status !== 200; i++) {
      status = (await complete(cluster.url, { prompt: 'x', max_tokens: 2 })).status;
      if (status !== 200) await new Promise((res) => setTimeout(res, 200));
    }
    assert.equal(status, 200, 'served again once a coordinator leads');
  });
});
