// The prefix cache's radix tree, without a pipeline: what it matches, shares, counts and evicts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PrefixTree } from './prefix-tree.ts';

const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

describe('PrefixTree', () => {
  it('matches only what every stage holds, and says how much more a running job is computing', () => {
    const t = new PrefixTree();
    const owner = { seq: 3, done: 0 };
    const node = t.grow('a', null, range(0, 100), owner, 1)!;
    assert.deepEqual(t.match('a', range(0, 120), 119), { node: t.match('a', range(0, 120), 119)!.node, depth: 0, pending: 100 });
    owner.done = 40;
    const m = t.match('a', range(0, 120), 119)!;
    assert.equal(m.node, node);
    assert.deepEqual([m.depth, m.pending], [40, 60]);
    assert.equal(t.match('b', range(0, 120), 119), null, 'another scope never matches');
    assert.equal(t.cells(), 0, 'a running owner reserves its own cells');
    owner.done = 100;
    assert.deepEqual(t.match('a', [...range(0, 50), 999], 50)!.depth, 50, 'a match stops where the prompt differs');
    assert.equal(t.match('a', range(0, 100), 99)!.depth, 99, 'and within the limit (one prompt token is always evaluated)');
  });

  it('attaching inside a node splits it; the new sequence copies from one that holds the path', () => {
    const t = new PrefixTree();
    const owner = { seq: 3, done: 100 };
    const node = t.grow('a', null, range(0, 100), owner, 1)!;
    const at = t.attach(t.match('a', [...range(0, 60), 7], 60)!, [5, 6], 2);
    assert.equal(at.from, 3, 'the owner holds the path');
    assert.deepEqual(at.node.tokens, range(0, 60));
    assert.deepEqual([node.start, node.tokens.length, node.parent], [60, 40, at.node], 'the lower part keeps the owner');
    assert.deepEqual([...at.node.pins], [5, 6]);
    assert.equal(t.ownerEnded(node, true, 103, 3), true, 'the owner leaves its sequence as the cache sequence');
    assert.deepEqual([node.seq, node.extra], [3, 3], 'holding three generated positions past the path');
    assert.equal(t.cells(), 100 + 3);
    assert.equal(t.attach(t.match('a', range(0, 70), 69)!, [8], 4).from, 3);
    assert.deepEqual(PrefixTree.path(node), range(0, 100));
  });

  it('what a request generated joins its prompt\'s path: its node grows, or below a shared end a node of its own', () => {
    const t = new PrefixTree();
    const a = { seq: 1, done: 100 };
    const na = t.grow('s', null, range(0, 100), a, 1)!;
    assert.equal(t.ownerEnded(na, true, 103, 2, [7, 8, 9]), true);
    assert.deepEqual([na.tokens.length, na.seq, na.extra, t.cells()], [103, 1, 0, 103], 'the node grew by the three it fed');
    assert.equal(t.match('s', [...range(0, 100), 7, 8, 9, 4, 5], 105)!.depth, 103, 'a next turn that resends the answer shares it');
    // b shares a's first 100 positions and generates after them: its samples are a node below them
    const at = t.attach(t.match('s', [...range(0, 100), 5], 100)!, [2], 3);
    const b = { seq: 2, done: 101 };
    const nb = t.grow('s', at.node, [5], b, 3)!;
    t.detach(at.node, 2);
    assert.equal(t.ownerEnded(nb, true, 103, 4, [6, 6]), true);
    assert.deepEqual([nb.tokens, nb.seq], [[5, 6, 6], 2]);
    // c attached at the end of a's path, and a cache sequence ended there
    const c = { seq: 3, done: 104 };
    const nc = t.grow('s', na, [1], c, 5)!;
    t.ownerEnded(nc, true, 106, 6, [2, 2]);
    assert.deepEqual(PrefixTree.path(nc), [...range(0, 100), 7, 8, 9, 1, 2, 2]);
    assert.deepEqual(t.problems(), []);
    assert.equal(t.ownerEnded(t.grow('s', null, range(500, 20), { seq: 4, done: 20 }, 7)!, true, 22, 8, [1]), true, 'what it fed does not say what it holds');
    assert.equal(t.match('s', range(500, 30), 29)!.node.extra, 2, 'held as positions past the path');
  });

  it('with endsOnly, a prefix is shared only where a cache sequence ends', () => {
    const t = new PrefixTree({ endsOnly: true });
    const a = { seq: 1, done: 40 };
    const na = t.grow('s', null, range(0, 100), a, 1)!;
    assert.equal(t.match('s', range(0, 120), 119), null, 'nothing while a job computes it');
    a.done = 100;
    t.ownerEnded(na, true, 102, 2, [5, 6]);
    assert.equal(t.match('s', range(0, 120), 119), null, 'not inside a cache sequence');
    assert.deepEqual(t.match('s', [...range(0, 100), 5, 6, 7], 102)!.depth, 102, 'at its end');
    const e = t.grow('s', null, range(200, 50), { seq: 2, done: 50 }, 3)!;
    t.ownerEnded(e, true, 53, 4, [1]);
    assert.equal(t.match('s', [...range(200, 50), 9, 9, 9, 9], 53), null, 'nor where it holds positions past its path');
    // a node split by a second lineage keeps its sequence below: its upper part ends no sequence
    const at = t.attach(t.match('s', [...range(0, 100), 5, 6, 3], 102)!, [3], 5);
    const nb = t.grow('s', at.node, [3], { seq: 3, done: 103 }, 5)!;
    t.detach(at.node, 3);
    t.ownerEnded(nb, true, 104, 6, [4]);
    assert.equal(t.match('s', [...range(0, 100), 5, 6, 3, 4, 0], 104)!.depth, 104);
    assert.equal(t.evictionOf(nb).action, 'drop', 'never trimmed: what a trimmed sequence ends on may be gone');
  });

  it('with endsOnly, a checkpoint: a cache sequence that ends inside a running job\'s node, shared on any lineage', () => {
    const t = new PrefixTree({ endsOnly: true });
    const na = t.grow('s', null, [...range(0, 100), 1], { seq: 1, done: 101 }, 1)!;
    t.ownerEnded(na, true, 101, 2);
    // b shares a's first 100 tokens, inside a's sequence: nothing to share, 100 in common.
    const prompt = [...range(0, 100), 2, 3];
    assert.equal(t.match('s', prompt, 101), null);
    assert.equal(t.common('s', prompt, 101), 100);
    const b = { seq: 2, done: 40 };
    const nb = t.grow('s', null, prompt, b, 3)!;
    assert.equal(t.checkpoint(nb, 100, 3, 4), false, 'not before b computed that far');
    b.done = 100;
    assert.equal(t.checkpoint(nb, 100, 3, 4), true);
    assert.deepEqual([nb.start, nb.parent!.seq, nb.parent!.owner], [100, 3, b], 'split at 100: the upper part is the checkpoint\'s, still b\'s to compute below');
    assert.equal(t.match('s', [...range(0, 100), 7], 100)!.node.seq, 3, 'shared while b runs, on b\'s lineage though a\'s matches as much');
    b.done = 102;
    t.ownerEnded(nb, true, 102, 5);
    assert.deepEqual([nb.seq, nb.parent!.seq, nb.parent!.owner], [2, 3, null]);
    // an owner that computed nothing past its checkpoint leaves only the checkpoint's sequence
    const c = { seq: 4, done: 100 };
    const nc = t.grow('s', null, [...range(0, 100), 5, 5], c, 6)!;
    t.checkpoint(nc, 100, 5, 6);
    assert.equal(t.ownerEnded(nc, true, 100, 7), false, 'its own sequence is not kept');
    assert.deepEqual(t.problems(), []);
  });

  it('an owner that ends early leaves only what it computed, and nothing after a failure', () => {
    const t = new PrefixTree();
    const a = { seq: 1, done: 30 };
    const na = t.grow('s', null, range(0, 100), a, 1)!;
    assert.equal(t.ownerEnded(na, true, 30, 2), true, 'cancelled mid-prompt: its first 30 positions stay');
    assert.deepEqual([na.tokens.length, na.seq, t.cells()], [30, 1, 30]);
    const b = { seq: 2, done: 50 };
    const nb = t.grow('s', null, range(500, 100), b, 3)!;
    assert.equal(t.ownerEnded(nb, false, 50, 4), false, 'a failed step: its sequence is emptied, nothing is cached');
    assert.equal(t.match('s', range(500, 10), 9), null);
    const c = { seq: 4, done: 0 };
    assert.equal(t.ownerEnded(t.grow('s', null, range(900, 10), c, 5)!, true, 0, 6), false, 'nothing computed, nothing kept');
    assert.equal(t.size, 1, 'only the first prompt');
  });

  it('a job attached to a node keeps it until it detaches; nodes no one holds go', () => {
    const t = new PrefixTree();
    const owner = { seq: 1, done: 80 };
    const n = t.grow('s', null, range(0, 80), owner, 1)!;
    t.ownerEnded(n, true, 80, 2);
    const { node } = t.attach(t.match('s', range(0, 81), 80)!, [2], 3);
    assert.equal(node, n);
    assert.deepEqual(t.evictable(), [], 'pinned by sequence 2');
    t.detach(node, 2);
    assert.deepEqual(t.evictable(), [n]);
    assert.deepEqual(t.evict(n), { seq: 1, action: 'drop', keepTo: 0 });
    assert.equal(t.match('s', range(0, 81), 80), null);
    assert.equal(t.cells(), 0);
  });

  it('evicting the last leaf under a shared path trims its sequence to that path instead of freeing it', () => {
    const t = new PrefixTree();
    const system = range(0, 64);
    const a = { seq: 1, done: 74 };
    const na = t.grow('s', null, [...system, ...range(100, 10)], a, 1)!;
    t.ownerEnded(na, true, 76, 2);
    // A second prompt shares the system part and adds its own question.
    const at = t.attach(t.match('s', [...system, ...range(200, 10)], 73)!, [2], 3);
    const b = { seq: 2, done: 74 };
    const nb = t.grow('s', at.node, range(200, 10), b, 3)!;
    t.detach(at.node, 2);
    t.ownerEnded(nb, true, 74, 4);
    assert.equal(t.cells(), 64 + 10 + 2 + 10, 'the system prompt once, each question, a\'s two generated positions');
    assert.deepEqual(t.evictable().map((n) => n.seq), [1, 2], 'least recently used first');
    assert.deepEqual(t.evictionOf(na), { node: na, cells: 12, action: 'drop' }, 'the other question still holds the system prompt');
    t.evict(na);
    assert.deepEqual(t.evictionOf(nb), { node: nb, cells: 10, action: 'trim' });
    assert.deepEqual(t.evict(nb), { seq: 2, action: 'trim', keepTo: 64 });
    assert.equal(at.node.seq, 2, 'the system prompt keeps a sequence of its own');
    assert.equal(t.cells(), 64);
    assert.equal(t.match('s', [...system, 5], 64)!.depth, 64);
  });

  it('a session attached deep in a path moves up when its next turn keeps less', () => {
    const t = new PrefixTree();
    const o = { seq: 1, done: 100 };
    const n = t.grow('s', null, range(0, 100), o, 1)!;
    t.ownerEnded(n, true, 100, 2);
    const { node } = t.attach(t.match('s', range(0, 101), 100)!, [7], 3);
    const up = t.reattach(node, 7, 30, 4)!;
    assert.deepEqual([up.start + up.tokens.length, [...up.pins], [...node.pins]], [30, [7], []]);
    assert.equal(t.reattach(up, 7, 0, 5), null, 'nothing shared any more');
    assert.equal(t.cells(), 100, 'the cache sequence still holds it all');
  });

  it('prompts computed from scratch are lineages of their own, even when their first tokens agree', () => {
    const t = new PrefixTree();
    const a = { seq: 1, done: 40 };
    t.ownerEnded(t.grow('s', null, range(0, 40), a, 1)!, true, 40, 1);
    // Shares 5 tokens with the first prompt, too few to attach: its own copy, its own lineage.
    const b = { seq: 2, done: 40 };
    const nb = t.grow('s', null, [...range(0, 5), ...range(500, 35)], b, 2)!;
    assert.ok(nb, 'cached although another prompt begins the same way');
    t.ownerEnded(nb, true, 40, 3);
    assert.equal(t.match('s', [...range(0, 5), ...range(500, 20)], 24)!.depth, 24, 'the longest lineage wins');
    assert.equal(t.match('s', range(0, 30), 29)!.depth, 29);
    const c = { seq: 3, done: 0 };
    t.grow('s', null, [...range(0, 5), ...range(900, 60)], c, 4);
    assert.deepEqual(t.match('s', [...range(0, 5), ...range(900, 60)], 64)!.pending, 64, 'a longer lineage being computed beats a short one computed');
    assert.deepEqual(t.problems(), []);
  });
});
