// Prefill/decode disaggregation end to end: a pipeline of role prefill computes long prompts and
// hands each request, KV and all, to a pipeline of role decode split at other layers; the client
// sees one stream of exactly the tokens `strata generate` gives, short prompts and a session's
// later turns stay where they decode, and the prefill pipeline keeps the prompts it computed.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState, readStream, strataGenerate } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const PREFILL = 'p0-s0~p0-s1';
const DECODE = 'p1-s0~p1-s1';
const OWN = { connection: 'close', 'content-type': 'application/json' };
const LONG = 'The river ran past the old mill, where the miller kept his accounts in a book bound with leather. '.repeat(6);

describe('prefill/decode disaggregation', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  let id: string;
  const piece = (t: number) => vocab.tokenBytes(t).toString('utf8');
  const pipelines = async () => new Map((await clusterState(cluster.natsUrl)).pipelines.map((p) => [p.id, p]));
  const complete = async (body: Record<string, unknown>, session = '') => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { ...OWN, ...(session ? { 'x-session-id': session } : {}) }, body: JSON.stringify({ model: id, temperature: 0, logprobs: 0, ...body }),
    });
    const j = (await r.json()) as { choices: { text: string; logprobs: { tokens: string[] } }[]; usage: { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens: number } } };
    assert.equal(r.status, 200, JSON.stringify(j));
    return j;
  };

  before(async () => {
    cluster = await LocalCluster.start({
      model, splits: [[{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }], [{ l0: 0, l1: 5 }, { l0: 5, l1: 8 }]], roles: ['prefill', 'decode'], port: 0, threads: 1, ctxSize: 1024,
      coordinatorFlags: ['--disagg-min-prompt', '64', '--rebalance-high', '0'],
    });
    vocab = Vocab.load(model);
    id = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  it('pipelines take their workers\' roles', async () => {
    const ps = await pipelines();
    assert.deepEqual([ps.get(PREFILL)?.role, ps.get(DECODE)?.role], ['prefill', 'decode']);
  });

  it('a long prompt is prefilled on the prefill pipeline and decoded on the decode pipeline: one stream, the reference tokens', async () => {
    const before = await pipelines();
    const ref = await strataGenerate(['--prompt', LONG, '--n-predict', '40']);
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: OWN, body: JSON.stringify({ model: id, prompt: LONG, max_tokens: 40, temperature: 0, stream: true, logprobs: 0 }) });
    const got = await readStream(r);
    assert.deepEqual(got.tokens, ref.tokens.map(piece), 'every token, in order, as one process computes them');
    assert.equal(got.finish, 'length');
    const after = await pipelines();
    const delta = (p: string, k: 'handoffsOut' | 'handoffsIn' | 'handoffsFailed' | 'promptTokens') => Number(after.get(p)![k] - before.get(p)![k]);
    assert.deepEqual([delta(PREFILL, 'handoffsOut'), delta(DECODE, 'handoffsIn'), delta(PREFILL, 'handoffsFailed')], [1, 1, 0], 'handed from the prefill pipeline to the decode pipeline');
    assert.equal(delta(PREFILL, 'promptTokens'), ref.tokens.length === 40 ? vocab.tokenize(LONG, true, true).length : -1, 'its prompt counts where it was computed');
    assert.equal(delta(DECODE, 'promptTokens'), 0);
    assert.ok(after.get(PREFILL)!.cachedPrefixes >= 1, 'the prefill pipeline keeps the prompt it computed');
  });

  it('the next request of that prompt reuses it on the prefill pipeline and is handed off again', async () => {
    const prompt = `${LONG}And then`;
    const ref = await strataGenerate(['--prompt', prompt, '--n-predict', '16']);
    const before = await pipelines();
    const j = await complete({ prompt, max_tokens: 16 });
    assert.deepEqual(j.choices[0]!.logprobs.tokens, ref.tokens.map(piece));
    assert.ok((j.usage.prompt_tokens_details?.cached_tokens ?? 0) >= 64, `cached ${j.usage.prompt_tokens_details?.cached_tokens}`);
    const after = await pipelines();
    assert.equal(Number(after.get(PREFILL)!.handoffsOut - before.get(PREFILL)!.handoffsOut), 1, 'the decode pipeline would compute it all: it goes where it is cached');
  });

  it('a short prompt is prefilled where it decodes', async () => {
    const ref = await strataGenerate(['--prompt', 'Once upon a time', '--n-predict', '12']);
    const before = await pipelines();
    const j = await complete({ prompt: 'Once upon a time', max_tokens: 12 });
    assert.deepEqual(j.choices[0]!.logprobs.tokens, ref.tokens.map(piece));
    const after = await pipelines();
    assert.equal(Number(after.get(DECODE)!.promptTokens - before.get(DECODE)!.promptTokens), vocab.tokenize('Once upon a time', true, true).length);
    assert.equal(Number(after.get(PREFILL)!.promptTokens - before.get(PREFILL)!.promptTokens), 0);
  });

  it("a session's first turn is handed off with it; its next turn reuses its cells on the decode pipeline", async () => {
    const prompt = `Chapter two. ${LONG}`;
    const ref = await strataGenerate(['--prompt', prompt, '--n-predict', '20']);
    const first = await complete({ prompt, max_tokens: 20 }, 'dis-s1');
    assert.deepEqual(first.choices[0]!.logprobs.tokens, ref.tokens.map(piece));
    const sessions = await (await fetch(`${cluster.url}/admin/v1/sessions`)).json() as { data: { id: string; pipeline: string }[] };
    assert.equal(sessions.data.find((s) => s.id === 'dis-s1')?.pipeline, DECODE, 'the session lives where it decodes');
    const before = await pipelines();
    const second = await complete({ prompt: `${prompt}${first.choices[0]!.text} Then`, max_tokens: 8 }, 'dis-s1');
    assert.equal(second.usage.completion_tokens, 8);
    assert.ok((second.usage.prompt_tokens_details?.cached_tokens ?? 0) >= prompt.length / 8, `the first turn's cells are reused (cached ${second.usage.prompt_tokens_details?.cached_tokens})`);
    const after = await pipelines();
    assert.equal(Number(after.get(PREFILL)!.handoffsOut - before.get(PREFILL)!.handoffsOut), 0, 'a session stays where its cells are');
  });
});
