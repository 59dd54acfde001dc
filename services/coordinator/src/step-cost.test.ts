import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CostBook, MIN_SAMPLES, StageCost, stepDeadlineMs, tokensWithin, workOf, type StepWork } from './step-cost.ts';

const truth = (w: StepWork) => 4 + 0.6 * w.tokens + 0.05 * (w.attention / 1024);

/** Steps as a scheduler sends them: decodes at growing positions, now and then a prompt chunk. */
function* steps(n: number): Generator<StepWork> {
  for (let i = 0; i < n; i++) {
    const entries = [{ tokens: 1, pos0: 100 + i }, { tokens: 1, pos0: 3000 + i }];
    if (i % 5 === 0) entries.push({ tokens: 64 + (i % 3) * 64, pos0: (i * 97) % 8000 });
    yield workOf(entries);
  }
}

test('workOf counts tokens and the cells each token attends to', () => {
  assert.deepEqual(workOf([{ tokens: 1, pos0: 9 }, { tokens: 4, pos0: 0 }]), { tokens: 5, attention: 10 + 16 });
});

test('a stage predicts nothing before MIN_SAMPLES steps, then fits a linear cost exactly', () => {
  const c = new StageCost();
  const it = steps(200);
  for (let i = 0; i < MIN_SAMPLES - 1; i++) {
    const w = it.next().value as StepWork;
    c.observe(w, truth(w));
  }
  assert.equal(c.predict({ tokens: 1, attention: 1 }), null);
  for (const w of it) c.observe(w, truth(w));
  for (const w of [{ tokens: 1, attention: 500 }, { tokens: 256, attention: 256 * 16_000 }, { tokens: 32, attention: 32 * 40 }]) {
    const p = c.predict(w)!;
    assert.ok(Math.abs(p - truth(w)) / truth(w) < 0.01, `predicted ${p} for ${truth(w)}`);
  }
});

test('coefficients stay non-negative when the data would pull one below zero', () => {
  const c = new StageCost();
  // bigger batches that happen to be a little faster (noise): the per-token cost is 0, not negative
  for (let i = 0; i < 50; i++) {
    c.observe({ tokens: 1, attention: 10 }, 10);
    c.observe({ tokens: 8, attention: 80 }, 9.5);
  }
  const k = c.coefficients()!;
  assert.ok(k.every((x) => x >= 0), `coefficients ${k}`);
  assert.ok(c.predict({ tokens: 512, attention: 512 * 512 })! >= 9);
});

test('a stage that becomes slower is predicted slower within a few hundred steps', () => {
  const c = new StageCost();
  for (const w of steps(300)) c.observe(w, truth(w));
  const w0 = { tokens: 128, attention: 128 * 2000 };
  const before = c.predict(w0)!;
  for (const w of steps(600)) c.observe(w, 3 * truth(w));
  const after = c.predict(w0)!;
  assert.ok(after > 2.5 * before, `before ${before}, after ${after}`);
});

test('a pipeline predicts the sum of its stages, and nothing while one stage is unknown', () => {
  const book = new CostBook();
  const w = { tokens: 10, attention: 100 };
  for (let i = 0; i < 10; i++) book.observe(['a', 'b'], w, [5, 7]);
  assert.ok(Math.abs(book.predict(['a', 'b'], w)! - 12) < 1e-3);
  assert.equal(book.predict(['a', 'c'], w), null);
  book.forget('a');
  assert.equal(book.predict(['a', 'b'], w), null);
});

test('the deadline is a margin over the prediction, never under the floor', () => {
  assert.equal(stepDeadlineMs(null, { floorMs: 30_000, margin: 4 }), 30_000);
  assert.equal(stepDeadlineMs(100, { floorMs: 30_000, margin: 4 }), 30_000);
  assert.equal(stepDeadlineMs(20_000, { floorMs: 30_000, margin: 4 }), 80_000);
});

test('tokensWithin finds the most prompt tokens whose predicted step fits the budget', () => {
  const predict = (w: StepWork) => truth(w);
  const fixed = workOf([{ tokens: 1, pos0: 500 }, { tokens: 1, pos0: 900 }]);
  for (const [budget, pos0] of [[50, 0], [100, 12_000], [200, 300]] as const) {
    const n = tokensWithin(predict, budget, fixed, pos0, 512);
    const at = (k: number) => predict({ tokens: fixed.tokens + k, attention: fixed.attention + k * (pos0 + k) });
    assert.ok(n === 0 || at(n) <= budget, `${n} tokens take ${at(n)} > ${budget}`);
    assert.ok(n === 512 || at(n + 1) > budget, `${n + 1} tokens would still fit`);
  }
  assert.equal(tokensWithin(() => null, 10, fixed, 0, 256), 256, 'unknown cost: the token cap');
  assert.equal(tokensWithin(predict, 1e9, fixed, 0, 256), 256);
  assert.equal(tokensWithin(predict, 1, fixed, 0, 256), 0, 'not even one token fits');
});
