// KV cell bookkeeping without tensors: slots, removal, positions, masks, and random op sequences.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KvCells, attendedCells, attendedWindow, buildMask } from './mod.ts';

describe('KvCells', () => {
  it('finds a contiguous slot, stamps it, and returns null when full', () => {
    const c = new KvCells(8);
    const p = c.findSlot(3)!;
    assert.deepEqual(Array.from(p.cells), [0, 1, 2]);
    assert.equal(c.used, 0, 'findSlot mutates nothing');
    c.apply(p, [0, 1, 2], [0, 0, 0]);
    assert.equal(c.used, 3);
    assert.equal(c.seqPosMax(0), 2);
    assert.equal(c.seqPosMin(0), 0);
    assert.equal(c.findSlot(6), null);
    assert.equal(c.usedMaxP1(), 3);
  });

  it('keeps one stream per sequence: own slots, own heads, copies between streams', () => {
    const c = new KvCells(8, 2); // seq 0 owns cells 0-3, seq 1 cells 4-7
    c.apply(c.findSlotFor([0, 0, 0])!, [0, 1, 2], [0, 0, 0]);
    c.apply(c.findSlotFor([1, 1, 1])!, [0, 1, 2], [1, 1, 1]);
    assert.deepEqual(Array.from(c.pos), [0, 1, 2, -1, 0, 1, 2, -1]);
    c.seqRemove(-1, 0, 1); // every stream's head drops to its own first freed cell
    assert.deepEqual(Array.from(c.findSlotFor([1, 0])!.cells), [4, 0]);
    assert.equal(c.findSlotFor([0, 0, 0]), null, 'stream 0 has two free cells');
    const moved = c.seqCopy(0, 1, -1, -1)!;
    assert.deepEqual([Array.from(moved.from), Array.from(moved.to)], [[1, 2], [5, 6]], 'seq 1 gets a copy of seq 0 at the same places');
    assert.deepEqual(c.seqsOf(5), [1]);
    assert.equal(c.used, 4);
    c.seqKeep(0);
    assert.equal(c.seqPosMax(1), 2, 'seq_keep acts within its own stream');
    // part of a sequence: dst's own positions in the range go, the copy takes its first free cells
    const part = c.seqCopy(0, 1, 1, -1)!;
    assert.deepEqual([Array.from(part.from), Array.from(part.to)], [[1, 2], [4, 5]]);
    assert.deepEqual(Array.from(c.pos.subarray(4)), [1, 2, -1, -1]);
    assert.equal(c.used, 4);
    c.apply(c.findSlotFor([1, 1])!, [3, 4], [1, 1]);
    c.apply(c.findSlotFor([0])!, [10], [0]);
    assert.throws(() => c.seqCopy(1, 0, 0, 5), /stream 0 has 3 free cells for 4 copied positions/);
    assert.deepEqual(Array.from(c.pos.subarray(0, 4)), [10, 1, 2, -1], 'a copy that does not fit changes nothing');
    assert.throws(() => c.findSlotFor([2]), /seq id 2 outside 0..1/);
  });

  it('finds a contiguous run when asked, or null when there is none', () => {
    const c = new KvCells(10);
    c.apply(c.findSlot(10)!, Array.from({ length: 10 }, (_, i) => i), [0, 1, 0, 1, 1, 1, 0, 0, 0, 1]);
    c.seqRemove(0, -1, -1); // frees cells 0, 2, 6, 7, 8
    assert.deepEqual(Array.from(c.findSlot(3, 0, true)!.cells), [6, 7, 8]);
    assert.deepEqual(Array.from(c.findSlot(3)!.cells), [0, 2, 6], 'scattered takes the first free cells');
    assert.equal(c.findSlot(4, 0, true), null, 'no run of 4 although 5 cells are free');
  });

  it('falls back to scattered cells when no run is long enough', () => {
    const c = new KvCells(6);
    c.apply(c.findSlot(6)!, [0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 0, 1]);
    c.seqRemove(1, -1, -1);
    assert.equal(c.used, 3);
    const p = c.findSlot(3)!;
    assert.deepEqual(Array.from(p.cells), [1, 3, 5]);
  });

  it('removes with open bounds and frees cells no sequence holds', () => {
    const c = new KvCells(10);
    c.apply(c.findSlot(5)!, [0, 1, 2, 3, 4], [2, 2, 2, 2, 2]);
    c.seqRemove(2, 3, -1);
    assert.equal(c.seqPosMax(2), 2);
    c.seqRemove(2, -1, 1);
    assert.equal(c.seqPosMin(2), 1);
    assert.equal(c.used, 2);
    c.seqRemove(-1, -1, -1);
    assert.equal(c.used, 0);
    assert.equal(c.seqPosMax(2), -1);
  });

  it('masks causally within a sequence and never across sequences', () => {
    const c = new KvCells(4);
    c.apply(c.findSlot(4)!, [0, 1, 0, 1], [0, 0, 1, 1]);
    const mask = new Uint16Array(2 * 4);
    buildMask(c, 4, [1, 0], [0, 1], mask);
    // token 0: seq 0 at pos 1 sees cells 0,1; token 1: seq 1 at pos 0 sees cell 2 only
    assert.deepEqual(Array.from(mask), [0, 0, 0xfc00, 0xfc00, 0xfc00, 0xfc00, 0, 0xfc00]);
    assert.equal(attendedCells(c), 4);
  });

  it('attends to the span of cells a batch may see: other sequences and windowed-out positions outside it are skipped', () => {
    const c = new KvCells(1280);
    // seq 0 (a cached prefix) holds cells 0..299, seq 1 a prompt at 300..899, seq 3 an idle
    // session at 900..1099; seq 2 shares seq 0's first 10
    c.apply(c.findSlot(300)!, Array.from({ length: 300 }, (_, i) => i), new Array(300).fill(0));
    c.apply(c.findSlot(600)!, Array.from({ length: 600 }, (_, i) => i), new Array(600).fill(1));
    c.apply(c.findSlot(200)!, Array.from({ length: 200 }, (_, i) => i), new Array(200).fill(3));
    c.seqCopy(0, 2, 0, 10);
    assert.deepEqual(c.visibleSpan(new Map([[1, 600]])), { first: 300, last: 899 });
    assert.deepEqual(attendedWindow(c, new Map([[1, 600]])), { lo: 256, n: 768, all: 1280 }, 'widened to multiples of 256');
    assert.deepEqual(c.visibleSpan(new Map([[1, 600], [2, 10]])), { first: 0, last: 899 }, 'a shared cell counts for each of its sequences');
    assert.deepEqual(attendedWindow(c, new Map([[3, 200]])), { lo: 768, n: 512, all: 1280 }, 'up to the used cells padded (1,280), not past them');
    // a window of 100: seq 1's earliest token at 600 sees positions 501.. (cells 801..)
    assert.deepEqual(c.visibleSpan(new Map([[1, 600]]), 100), { first: 801, last: 899 });
    assert.deepEqual(attendedWindow(c, new Map([[1, 600]]), 100), { lo: 768, n: 256, all: 1280 });
    assert.equal(c.visibleSpan(new Map([[4, 0]])), null, 'a sequence with no cells sees none');
    assert.deepEqual(attendedWindow(c, new Map([[4, 0]])), { lo: 0, n: 1280, all: 1280 });
    // the mask of a window: its columns equal the whole mask's there, and every other column was masked
    const whole = new Uint16Array(2 * 1280), part = new Uint16Array(2 * 768);
    buildMask(c, 1280, [598, 599], [1, 1], whole);
    buildMask(c, 768, [598, 599], [1, 1], part, 0, 256);
    for (let t = 0; t < 2; t++) {
      const row = whole.subarray(t * 1280, (t + 1) * 1280);
      assert.deepEqual(Array.from(part.subarray(t * 768, (t + 1) * 768)), Array.from(row.subarray(256, 1024)));
      assert.ok([...row.subarray(0, 256), ...row.subarray(1024)].every((m) => m === 0xfc00), 'the skipped columns were masked');
    }
  });

  it('shares cells on copy, keeps one sequence, and shifts and divides positions', () => {
    const c = new KvCells(8);
    c.apply(c.findSlot(4)!, [0, 1, 2, 3], [0, 0, 0, 0]);
    c.seqCopy(0, 1, 1, 3);
    assert.equal(c.used, 4, 'copy shares cells');
    assert.deepEqual([c.seqPosMin(1), c.seqPosMax(1)], [1, 2]);
    assert.deepEqual(c.seqsOf(1), [0, 1]);
    c.seqAdd(1, -1, -1, 10);
    assert.deepEqual(Array.from(c.pos.subarray(0, 4)), [0, 11, 12, 3], 'shared cells move for every sequence in them');
    assert.deepEqual([c.seqPosMin(0), c.seqPosMax(0)], [0, 12]);
    assert.equal(c.hasShift, true);
    assert.deepEqual(Array.from(c.pendingShifts().subarray(0, 4)), [0, 10, 10, 0]);
    c.seqDivide(0, 10, -1, 4);
    assert.deepEqual(Array.from(c.pos.subarray(0, 4)), [0, 2, 3, 3]);
    assert.deepEqual(Array.from(c.pendingShifts().subarray(0, 4)), [0, 19, 19, 0]);
    c.resetShift();
    assert.equal(c.hasShift, false);
    c.seqAdd(0, 0, 1, -5);
    assert.equal(c.pos[0], -1, 'a cell pushed below 0 is freed');
    assert.equal(c.used, 3);
    c.seqKeep(1);
    assert.equal(c.used, 2);
    assert.deepEqual(c.seqsOf(1), [1]);
    assert.equal(c.seqPosMax(0), -1);
  });

  it('masks what a sliding window hides; a windowed search takes over only cells no window sees', () => {
    const c = new KvCells(8, 1, 3);
    c.apply(c.findSlot(6)!, [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]);
    const mask = new Uint16Array(6);
    buildMask(c, 6, [5], [0], mask, 3); // window 3: a token at 5 sees 3, 4, 5
    assert.deepEqual(Array.from(mask), [0xfc00, 0xfc00, 0xfc00, 0, 0, 0]);
    c.seqCopy(0, 1, 1, 2); // seq 1 shares position 1
    // seq 0's next token (6) no longer sees 0..3; seq 1's (2) still sees position 1
    assert.deepEqual(Array.from(c.findSlot(5)!.cells), [6, 7, 0, 2, 3]);
    assert.equal(c.findSlot(6), null, 'cells 1, 4 and 5 cannot be taken');
    // once seq 1 is past it too, the shared cell is taken (llama.cpp keeps it while shared)
    c.apply({ cells: Int32Array.of(6, 7) }, [2, 3], [1, 1]);
    assert.deepEqual(Array.from(c.findSlot(4)!.cells), [0, 1, 2, 3]);
    assert.equal(c.takeable(), 4);
    c.apply({ cells: Int32Array.of(1) }, [4], [1]);
    assert.deepEqual([c.seqPosMin(0), c.seqPosMin(1), c.seqsOf(1)], [2, 2, [1]], 'each of its sequences drops it and what is older');
  });

  it('windowed cells stay until a search takes them over, as in libllama\'s windowed cache', () => {
    const c = new KvCells(16, 1, 3);
    const step = (p: number) => c.apply(c.findSlot(1)!, [p], [0]);
    c.apply(c.findSlot(8)!, Array.from({ length: 8 }, (_, i) => i), new Array(8).fill(0));
    step(8);
    assert.equal(c.pos[8], 8, 'into the next cell, not over position 0');
    for (let p = 9; p < 16; p++) step(p);
    assert.deepEqual([c.used, c.seqPosMin(0), c.windowReused], [16, 0, 0], 'nothing dropped yet: a cut back within them goes on exactly');
    step(16);
    assert.deepEqual([c.pos[0], c.seqPosMin(0), c.windowReused], [16, 1, 1], 'then it wraps, taking over the oldest');
    c.seqRemove(0, -1, -1);
    step(0);
    assert.equal(c.pos[0], 0, 'an emptied cache starts from its first cell');
  });

  it('taking over a cell drops the older positions of its sequence, as llama.cpp keeps them contiguous', () => {
    const c = new KvCells(8, 1, 2);
    c.apply(c.findSlot(4)!, [0, 1, 2, 3], [0, 0, 0, 0]);
    c.apply({ cells: Int32Array.of(2) }, [0], [1]); // position 2 of seq 0 taken over by seq 1
    assert.deepEqual([c.seqPosMin(0), c.seqPosMax(0), c.used, c.windowReused], [3, 3, 2, 1], 'seq 0 keeps 3 only: 0 and 1 went with 2');
    const plain = new KvCells(8);
    plain.apply({ cells: Int32Array.of(0) }, [0], [0]);
    assert.throws(() => plain.apply({ cells: Int32Array.of(0) }, [1], [0]), /invariant/, 'without a window a used cell is never a target');
  });

  it('shifts a full context: keeps the prefix, drops the oldest, moves the rest back', () => {
    const c = new KvCells(16);
    c.apply(c.findSlot(12)!, Array.from({ length: 12 }, (_, i) => i), new Array(12).fill(0));
    assert.equal(c.contextShift(0, 2), 5);
    assert.deepEqual(Array.from(c.pos.subarray(0, 12)), [0, 1, -1, -1, -1, -1, -1, 2, 3, 4, 5, 6]);
    assert.deepEqual(Array.from(c.pendingShifts().subarray(7, 12)), [-5, -5, -5, -5, -5]);
    assert.equal(c.contextShift(0, 10), 0, 'nothing past the prefix: nothing to do');
    assert.deepEqual(c.occupancy(), { used: 7, size: 16, ratio: 7 / 16 });
  });

  it('draws the cells for debugging', () => {
    const c = new KvCells(6);
    c.apply(c.findSlot(3)!, [0, 1, 2], [0, 0, 3]);
    c.seqCopy(0, 1, 0, 1);
    assert.equal(c.debugDump(), [
      'kv cells: size 6, used 3, head 3, used_max_p1 3', 'M03...',
      'seq 0: positions 0..1 in 2 cells', 'seq 1: positions 0..0 in 1 cells', 'seq 3: positions 2..2 in 1 cells', '',
    ].join('\n'));
  });

  it('keeps exact counts and consistent positions under random operations', () => {
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const c = new KvCells(64);
    const model = new Map<number, Set<number>>(); // seq -> positions
    const next = new Map<number, number>();
    for (let step = 0; step < 2000; step++) {
      const seq = rnd(4);
      if (rnd(3) > 0) {
        const n = 1 + rnd(6);
        const plan = c.findSlot(n);
        const free = 64 - c.used;
        assert.equal(plan === null, n > free);
        if (!plan) continue;
        const start = next.get(seq) ?? 0;
        const pos = Array.from({ length: n }, (_, i) => start + i);
        c.apply(plan, pos, new Array(n).fill(seq));
        next.set(seq, start + n);
        const s = model.get(seq) ?? new Set<number>();
        pos.forEach((p) => s.add(p));
        model.set(seq, s);
      } else {
        const p0 = rnd(3) === 0 ? -1 : rnd(40), p1 = rnd(3) === 0 ? -1 : p0 + rnd(20);
        c.seqRemove(seq, p0, p1);
        const s = model.get(seq);
        if (s) for (const p of [...s]) if ((p0 < 0 || p >= p0) && (p1 < 0 || p < p1)) s.delete(p);
      }
      let total = 0;
      for (const [s, set] of model) {
        total += set.size;
        assert.equal(c.seqPosMax(s), set.size ? Math.max(...set) : -1);
        assert.equal(c.seqPosMin(s), set.size ? Math.min(...set) : -1);
      }
      assert.equal(c.used, total, `used count exact at step ${step}`);
    }
  });
});
