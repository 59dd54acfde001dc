import assert from 'node:assert/strict';
import { test } from 'node:test';
import { groupStreams, splitEqual } from './ubatch.ts';

const parts = (seq: number[], max = 512) => splitEqual(seq, max).map((p) => ({ tokens: Array.from(p.tokens), first: p.first, streams: p.streams }));

test('decoding sequences in order are one part, stream after stream', () => {
  assert.deepEqual(parts([0, 1, 2, 3]), [{ tokens: [0, 1, 2, 3], first: 0, streams: 4 }]);
  assert.deepEqual(parts([5, 5, 6, 6]), [{ tokens: [0, 1, 2, 3], first: 5, streams: 2 }]);
});

test('unequal sequences: equal shares first, the rest after; only consecutive ids share a part', () => {
  // seq 0 brings 3 tokens, seq 1 one: {0, 1} one token each, then seq 0's other two
  assert.deepEqual(parts([0, 0, 0, 1]), [{ tokens: [0, 3], first: 0, streams: 2 }, { tokens: [1, 2], first: 0, streams: 1 }]);
  // out of order: a part starts at the first token's sequence and takes the next id up only
  assert.deepEqual(parts([2, 0, 1, 3]), [{ tokens: [0, 3], first: 2, streams: 2 }, { tokens: [1, 2], first: 0, streams: 2 }]);
  // a gap in the ids: two parts
  assert.deepEqual(parts([0, 1, 3]), [{ tokens: [0, 1], first: 0, streams: 2 }, { tokens: [2], first: 3, streams: 1 }]);
});

test('a part stays within the micro-batch size, at least one token from each sequence', () => {
  assert.deepEqual(parts([0, 0, 0, 0, 0], 2), [{ tokens: [0, 1], first: 0, streams: 1 }, { tokens: [2, 3], first: 0, streams: 1 }, { tokens: [4], first: 0, streams: 1 }]);
  assert.deepEqual(parts([0, 0, 1, 1], 3), [{ tokens: [0, 2], first: 0, streams: 2 }, { tokens: [1, 3], first: 0, streams: 2 }]);
});

test('every token lands in exactly one part', () => {
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + (trial % 37);
    const seq = Array.from({ length: n }, (_, i) => (i * 7 + trial) % 5);
    const seen = new Set<number>();
    for (const p of splitEqual(seq, 8)) {
      assert.ok(p.tokens.length <= Math.max(8, p.streams) && p.tokens.length % p.streams === 0);
      const per = p.tokens.length / p.streams;
      p.tokens.forEach((t, j) => {
        assert.equal(seq[t], p.first + Math.floor(j / per), 'stream after stream');
        assert.ok(!seen.has(t));
        seen.add(t);
      });
    }
    assert.equal(seen.size, n);
  }
});

const grouped = (seq: number[], max?: number) => groupStreams(seq, max).map((p) => ({ tokens: Array.from(p.tokens), attn: p.attn }));

test('one graph: the tokens in sequence order, a group per run of consecutive sequences with equal shares', () => {
  assert.deepEqual(grouped([0, 1, 2, 3]), [{ tokens: [0, 1, 2, 3], attn: [{ first: 0, streams: 4, per: 1 }] }]);
  // decoding 4, 0, 2 and 3: gaps cut the groups
  assert.deepEqual(grouped([4, 0, 2, 3]), [{ tokens: [1, 2, 3, 0], attn: [{ first: 0, streams: 1, per: 1 }, { first: 2, streams: 3, per: 1 }] }]);
  // a prompt chunk of seq 1 beside decoding 0 and 2: three groups, each sequence's tokens in batch order
  assert.deepEqual(grouped([1, 0, 1, 2, 1]), [{ tokens: [1, 0, 2, 4, 3], attn: [{ first: 0, streams: 1, per: 1 }, { first: 1, streams: 1, per: 3 }, { first: 2, streams: 1, per: 1 }] }]);
  // at most two groups a part
  assert.deepEqual(grouped([1, 0, 1, 2, 1], 2), [
    { tokens: [1, 0, 2, 4], attn: [{ first: 0, streams: 1, per: 1 }, { first: 1, streams: 1, per: 3 }] },
    { tokens: [3], attn: [{ first: 2, streams: 1, per: 1 }] },
  ]);
});

test('one graph: every token in exactly one row, the groups covering the rows in order', () => {
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + (trial % 41);
    const seq = Array.from({ length: n }, (_, i) => (i * 11 + trial * 3) % 9);
    const parts = groupStreams(seq, 1 + (trial % 4));
    const order = parts.flatMap((p) => Array.from(p.tokens));
    assert.deepEqual([...order].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i));
    for (const p of parts) {
      assert.ok(p.attn.length <= 1 + (trial % 4));
      let row = 0;
      for (const g of p.attn) {
        for (let k = 0; k < g.streams * g.per; k++, row++) assert.equal(seq[p.tokens[row]!], g.first + Math.floor(k / g.per));
      }
      assert.equal(row, p.tokens.length);
    }
    for (let r = 1; r < n; r++) if (seq[order[r]!] === seq[order[r - 1]!]) assert.ok(order[r]! > order[r - 1]!, 'a sequence\'s tokens in batch order');
  }
});
