import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { SampledTokenSchema, StepEntrySchema } from '@strata/wire';
import { RingBook, fillChained, ringEntries, ringSamples } from './ring.ts';
import { fenceOlder, newestFence } from './stage-protocol.ts';

const entry = (seq: number, nTokens: number, chained = false) => create(StepEntrySchema, { seq, nTokens, pos0: 10, output: true, chained });
const tok = (seq: number, token: number, eog = false) => create(SampledTokenSchema, { seq, token, eog });

describe('the ring', () => {
  it('fills chained entries with their samples and drops those that ended or never came', () => {
    const entries = [entry(0, 1, true), entry(1, 3), entry(2, 1, true), entry(3, 1, true), entry(4, 1, true)];
    const tokens = [0, 7, 8, 9, 0, 0, 0];
    const samples = ringSamples(ringEntries([tok(0, 100), tok(2, 102, true), tok(3, 103)], [false, true, false]));
    const r = fillChained(entries, tokens, samples);
    assert.deepEqual(r.entries.map((e) => e.seq), [0, 1, 3], 'seq 2 ended its choice, seq 4 has no sample');
    assert.deepEqual(r.tokens, [100, 7, 8, 9, 103], "the others' tokens are untouched");
  });

  it('drops every chained entry when the step it follows failed or its samples never came', () => {
    const entries = [entry(0, 1, true), entry(1, 2)];
    const failed = { tokens: new Map([[0, { token: 5, ends: false }]]), failed: true };
    assert.deepEqual(fillChained(entries, [0, 1, 2], failed).tokens, [1, 2]);
    assert.deepEqual(fillChained(entries, [0, 1, 2], null).entries.map((e) => e.seq), [1]);
  });

  it('a step waits for the samples it follows, wherever they come from first', async () => {
    const book = new RingBook();
    book.record(7n, ringSamples(ringEntries([tok(0, 1)], [false])));
    assert.equal((await book.wait(7n, 1000, () => false))?.tokens.get(0)?.token, 1, 'already here');
    const later = book.wait(8n, 5000, () => false);
    setTimeout(() => book.record(8n, ringSamples(ringEntries([tok(0, 2)], [false]))), 20);
    assert.equal((await later)?.tokens.get(0)?.token, 2, 'woken when they come');
  });

  it('stops waiting when the step no longer matters, or after its time', async () => {
    const book = new RingBook();
    let gone = false;
    const waiting = book.wait(9n, 5000, () => gone);
    book.interrupt();
    await new Promise((r) => setTimeout(r, 10));
    gone = true;
    book.interrupt();
    assert.equal(await waiting, null, 'a newer fence: it is stale');
    const t0 = Date.now();
    assert.equal(await book.wait(10n, 50, () => false), null);
    assert.ok(Date.now() - t0 >= 45, 'it waited its time');
  });
});

describe('fences on the stage thread', () => {
  it('the first fenced message raises a stage from 0/0, and older work is then stale', () => {
    const zero = { term: 0n, generation: 0n };
    const first = newestFence(zero, { term: 1n, generation: 5n });
    assert.deepEqual(first, { term: 1n, generation: 5n }, 'a stage that saw nothing takes the first fence (before, 0/0 was never raised and no step was ever stale)');
    assert.equal(newestFence(first, { term: 1n, generation: 4n }), first, 'an older generation does not lower it');
    assert.equal(newestFence(first, zero), first, 'unfenced work does not either');
    assert.deepEqual(newestFence(first, { term: 2n, generation: 1n }), { term: 2n, generation: 1n }, 'a newer term wins over any generation');
    assert.equal(fenceOlder({ term: 1n, generation: 4n }, first), true);
    assert.equal(fenceOlder(zero, first), false, 'unfenced work is never stale');
  });
});
