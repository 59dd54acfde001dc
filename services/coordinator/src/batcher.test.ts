import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { FinishReason, SampledTokenSchema, SamplingSchema } from '@strata/wire';
import { applyPlan, decodeCap, planMicroBatch } from './batcher.ts';
import { cachedTokens, jobTransition, newJob, type Job } from './job.ts';

const job = (id: string, promptLen: number, seq: number, maxTokens = 4, pos0 = 0) =>
  newJob({ requestId: id, index: 0, sessionId: '', seq, prompt: Array.from({ length: promptLen }, (_, i) => 100 + i), pos0, sampling: create(SamplingSchema), maxTokens });
const tok = (seq: number, token: number, eog = false) => create(SampledTokenSchema, { seq, token, eog });
const limits = { maxBatch: 64, prefillChunk: 32, decodeCap: 8 };
const shape = (e: ReturnType<typeof planMicroBatch>) => e?.map((x) => `${x.job.requestId}:${x.pos0}+${x.tokens.length}${x.output ? '!' : ''}`).join(' ') ?? null;

test('a long prompt is prefilled in chunks while another job keeps decoding', () => {
  const a = job('a', 3, 0), b = job('b', 80, 1);
  const jobs = [a, b];
  let plan = planMicroBatch(jobs, limits);
  assert.equal(shape(plan), 'a:0+3! b:0+29');
  applyPlan(plan!);
  // a waits for its token; b's next chunk may follow at once (stages run in order).
  plan = planMicroBatch(jobs, limits);
  assert.equal(shape(plan), 'b:29+32');
  applyPlan(plan!);
  jobTransition(a, { type: 'sampled', token: tok(0, 7) });
  a.inflight--;
  plan = planMicroBatch(jobs, limits);
  assert.equal(shape(plan), 'a:3+1! b:61+19!', 'decode first, then the last chunk, which samples');
  applyPlan(plan!);
  assert.equal(planMicroBatch(jobs, limits), null, 'everyone is waiting for a token');
});

test('decodeCap splits active jobs over the micro-batches in flight', () => {
  assert.equal(decodeCap(32, 2), 16);
  assert.equal(decodeCap(1, 4), 1);
  const jobs: Job[] = [];
  for (let i = 0; i < 5; i++) {
    const j = job(`j${i}`, 1, i);
    applyPlan([{ job: j, tokens: [1], pos0: 0, output: true }]);
    jobTransition(j, { type: 'sampled', token: tok(i, 9) });
    j.inflight--;
    jobs.push(j);
  }
  const first = planMicroBatch(jobs, { ...limits, decodeCap: decodeCap(5, 2) });
  assert.equal(shape(first), 'j0:1+1! j1:1+1! j2:1+1!');
  applyPlan(first!);
  assert.equal(shape(planMicroBatch(jobs, { ...limits, decodeCap: 3 })), 'j3:1+1! j4:1+1!');
});

test('with one KV stream per sequence, micro-batches take decoding jobs in sequence order', () => {
  const jobs: Job[] = [];
  for (const [i, seq] of [7, 2, 5, 0, 3].entries()) {
    const j = job(`j${i}`, 1, seq);
    applyPlan([{ job: j, tokens: [1], pos0: 0, output: true }]);
    jobTransition(j, { type: 'sampled', token: tok(seq, 9) });
    j.inflight--;
    jobs.push(j);
  }
  const first = planMicroBatch(jobs, { ...limits, decodeCap: 3, bySeq: true });
  assert.deepEqual(first!.map((e) => e.job.seq), [0, 2, 3], 'the lowest sequences together');
  applyPlan(first!);
  assert.deepEqual(planMicroBatch(jobs, { ...limits, decodeCap: 3, bySeq: true })!.map((e) => e.job.seq), [5, 7]);
});

test('a job finishes on an end token, on max_tokens, on cancel, on failure; the cache holds what was fed', () => {
  const a = job('a', 2, 0, 3);
  applyPlan(planMicroBatch([a], limits)!);
  assert.deepEqual(jobTransition(a, { type: 'sampled', token: tok(0, 5) }).map((e) => e.type), ['emit']);
  a.inflight--;
  applyPlan(planMicroBatch([a], limits)!);
  jobTransition(a, { type: 'sampled', token: tok(0, 6) });
  a.inflight--;
  applyPlan(planMicroBatch([a], limits)!);
  const fx = jobTransition(a, { type: 'sampled', token: tok(0, 7) });
  a.inflight--;
  assert.deepEqual(fx.at(-1), { type: 'finish', reason: FinishReason.LENGTH });
  assert.deepEqual(cachedTokens(a), [100, 101, 5, 6], 'the last sample was never evaluated');
  assert.equal(a.pos, 4);

  const b = job('b', 2, 1);
  applyPlan(planMicroBatch([b], limits)!);
  assert.deepEqual(jobTransition(b, { type: 'cancel' }), [], 'waits for the token in flight');
  assert.deepEqual(jobTransition(b, { type: 'sampled', token: tok(1, 5) }).at(-1), { type: 'finish', reason: FinishReason.CANCELLED });

  const c = job('c', 2, 2);
  assert.deepEqual(jobTransition(c, { type: 'sampled', token: tok(2, 2, true) }).at(-1), { type: 'finish', reason: FinishReason.STOP });
  const d = job('d', 2, 3);
  assert.deepEqual(jobTransition(d, { type: 'failed', code: 'kv_full', message: 'x' }), [{ type: 'finish', reason: FinishReason.ERROR }]);
  assert.deepEqual(jobTransition(d, { type: 'cancel' }), [], 'a finished job takes nothing more');
});

test('a rebuilt job prefills what it held and every sample, then samples the next token', async () => {
  const { rebuildJob } = await import('./job.ts');
  const a = job('a', 3, 0, 10, 2);
  applyPlan(planMicroBatch([a], limits)!);
  jobTransition(a, { type: 'sampled', token: tok(0, 7) });
  a.inflight--;
  applyPlan(planMicroBatch([a], limits)!);
  jobTransition(a, { type: 'sampled', token: tok(0, 8) });
  a.inflight--;
  rebuildJob(a, [50, 51]);
  assert.deepEqual(a.prompt, [50, 51, 100, 101, 102, 7, 8]);
  assert.deepEqual(a.replay, [7, 8]);
  const plan = planMicroBatch([a], limits);
  assert.equal(shape(plan), 'a:0+7!', 'one prefill that samples the third token');
  applyPlan(plan!);
  jobTransition(a, { type: 'sampled', token: tok(0, 9) });
  a.inflight--;
  assert.deepEqual(a.generated.map((t) => t.token), [7, 8, 9]);
  assert.deepEqual(cachedTokens(a), [50, 51, 100, 101, 102, 7, 8], 'samples in the prompt are not counted twice');
});

test('a step budget cuts prompt chunks to what fits its predicted time, always letting 16 tokens through', () => {
  const a = job('a', 1, 0), b = job('b', 200, 1);
  applyPlan([{ job: a, tokens: [100], pos0: 0, output: true }]);
  jobTransition(a, { type: 'sampled', token: tok(0, 7) });
  a.inflight--;
  const seen: { fixed: number; pos0: number; cap: number }[] = [];
  // 1 ms per token: a 20 ms budget leaves 19 prompt tokens next to a's decode
  const within = (fixed: { tokens: number }, pos0: number, cap: number) => {
    seen.push({ fixed: fixed.tokens, pos0, cap });
    return Math.max(0, Math.min(cap, 20 - fixed.tokens));
  };
  const plan = planMicroBatch([a, b], { ...limits, prefillWithin: within });
  assert.equal(shape(plan), 'a:1+1! b:0+19');
  assert.deepEqual(seen, [{ fixed: 1, pos0: 0, cap: 32 }]);
  applyPlan(plan!);
  // nothing fits any more: still 16 tokens, so the prompt advances
  assert.equal(shape(planMicroBatch([a, b], { ...limits, prefillWithin: () => 0 })), 'b:19+16');
  // with nobody decoding, a prompt takes whole chunks
  const c = job('c', 200, 2);
  assert.equal(shape(planMicroBatch([c], { ...limits, prefillWithin: () => 0 })), 'c:0+32');
});

test('a job that must run alone goes first, in a micro-batch of its own; the others go on together', () => {
  const a = job('a', 3, 0), s = job('s', 5, 1), b = job('b', 4, 2);
  s.alone = true;
  const jobs = [a, s, b];
  let plan = planMicroBatch(jobs, limits);
  assert.equal(shape(plan), 's:0+5!', 'the suspect, alone, although a came first');
  applyPlan(plan!);
  plan = planMicroBatch(jobs, limits);
  assert.equal(shape(plan), 'a:0+3! b:0+4!', 'the others together, the suspect left out');
  applyPlan(plan!);
  assert.equal(planMicroBatch(jobs, limits), null);
  jobTransition(s, { type: 'sampled', token: tok(1, 7) });
  s.inflight--;
  jobTransition(a, { type: 'sampled', token: tok(0, 7) });
  a.inflight--;
  assert.equal(shape(planMicroBatch(jobs, limits)), 's:5+1!', 'decoding, it still runs alone');
});
