// Random sequences of every cell operation against a naive model of llama.cpp's semantics: no
// cell leaked, every sequence's positions consistent, the used count exact after every step.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KvCells } from './mod.ts';

/** The obvious implementation: a list of cells, each a position and a set of sequences. */
class NaiveCells {
  cells: { pos: number; seqs: Set<number> }[];
  constructor(size: number) {
    this.cells = Array.from({ length: size }, () => ({ pos: -1, seqs: new Set<number>() }));
  }
  free(i: number) { this.cells[i] = { pos: -1, seqs: new Set() }; }
  inRange(p: number, p0: number, p1: number) { return p >= (p0 < 0 ? 0 : p0) && p < (p1 < 0 ? Infinity : p1); }
  remove(seq: number, p0: number, p1: number) {
    this.cells.forEach((c, i) => {
      if (c.pos < 0 || !this.inRange(c.pos, p0, p1)) return;
      if (seq < 0) this.free(i);
      else if (c.seqs.delete(seq) && c.seqs.size === 0) this.free(i);
    });
  }
  copy(src: number, dst: number, p0: number, p1: number) {
    for (const c of this.cells) if (c.pos >= 0 && this.inRange(c.pos, p0, p1) && c.seqs.has(src)) c.seqs.add(dst);
  }
  keep(seq: number) {
    this.cells.forEach((c, i) => {
      if (c.pos < 0) return;
      if (c.seqs.has(seq)) c.seqs = new Set([seq]);
      else this.free(i);
    });
  }
  add(seq: number, p0: number, p1: number, d: number) {
    if (d === 0) return;
    this.cells.forEach((c, i) => {
      if (c.pos < 0 || !this.inRange(c.pos, p0, p1) || !c.seqs.has(seq)) return;
      c.pos += d;
      if (c.pos < 0) this.free(i);
    });
  }
  div(seq: number, p0: number, p1: number, d: number) {
    for (const c of this.cells) if (c.pos >= 0 && this.inRange(c.pos, p0, p1) && c.seqs.has(seq)) c.pos = Math.trunc(c.pos / d);
  }
  positions(seq: number) { return this.cells.filter((c) => c.pos >= 0 && c.seqs.has(seq)).map((c) => c.pos); }
}

describe('KvCells property test', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    it(`seed ${seed}: 3000 random operations agree with the naive model`, () => {
      let s = seed;
      const rnd = (n: number) => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return (s >>> 8) % n;
      };
      const SIZE = 48, SEQS = 5;
      const real = new KvCells(SIZE), naive = new NaiveCells(SIZE);
      const next = new Array(SEQS).fill(0);
      const bound = () => (rnd(4) === 0 ? -1 : rnd(60));
      for (let step = 0; step < 3000; step++) {
        const op = rnd(8), seq = rnd(SEQS);
        let what = '';
        if (op < 3) {
          const n = 1 + rnd(5);
          const free = naive.cells.filter((c) => c.pos < 0).length;
          const plan = real.findSlot(n);
          assert.equal(plan === null, n > free, `findSlot(${n}) with ${free} free`);
          if (plan) {
            assert.equal(new Set(plan.cells).size, n, 'distinct cells');
            for (const i of plan.cells) assert.equal(naive.cells[i]!.pos, -1, `cell ${i} is free`);
            const start = Math.max(next[seq]!, real.seqPosMax(seq) + 1);
            const pos = Array.from({ length: n }, (_, k) => start + k);
            real.apply(plan, pos, new Array(n).fill(seq));
            plan.cells.forEach((i, k) => { naive.cells[i] = { pos: pos[k]!, seqs: new Set([seq]) }; });
            next[seq] = start + n;
            what = `apply ${n}`;
          }
        } else if (op === 3) {
          const sq = rnd(6) === 0 ? -1 : seq, p0 = bound(), p1 = bound();
          real.seqRemove(sq, p0, p1); naive.remove(sq, p0, p1); what = `rm ${sq} ${p0} ${p1}`;
        } else if (op === 4) {
          const dst = rnd(SEQS), p0 = bound(), p1 = bound();
          real.seqCopy(seq, dst, p0, p1); naive.copy(seq, dst, p0, p1); what = `cp ${seq} ${dst}`;
        } else if (op === 5 && rnd(10) === 0) {
          real.seqKeep(seq); naive.keep(seq); what = `keep ${seq}`;
        } else if (op === 6) {
          const p0 = bound(), p1 = bound(), d = rnd(21) - 10;
          real.seqAdd(seq, p0, p1, d); naive.add(seq, p0, p1, d); what = `add ${seq} ${d}`;
        } else if (op === 7) {
          const p0 = bound(), p1 = bound(), d = 1 + rnd(4);
          real.seqDivide(seq, p0, p1, d); naive.div(seq, p0, p1, d); what = `div ${seq} ${d}`;
        }
        if (rnd(7) === 0) real.resetShift();
        if (rnd(25) === 0) {
          const plan = real.defragPlan();
          if (plan) {
            real.applyDefrag(plan);
            plan.from.forEach((f, k) => {
              naive.cells[plan.to[k]!] = naive.cells[f]!;
              naive.free(f);
            });
            assert.equal(real.usedMaxP1(), real.used, 'defrag packs the cells');
            what += ' + defrag';
          }
        }
        const used = naive.cells.filter((c) => c.pos >= 0).length;
        assert.equal(real.used, used, `used count after step ${step} (${what})`);
        naive.cells.forEach((c, i) => {
          assert.equal(real.pos[i], c.pos, `cell ${i} position after ${what}`);
          assert.deepEqual(real.seqsOf(i), [...c.seqs].sort((a, b) => a - b), `cell ${i} sequences after ${what}`);
          if (c.pos >= 0) assert.ok(c.seqs.size > 0, 'no used cell without a sequence');
        });
        for (let q = 0; q < SEQS; q++) {
          const ps = naive.positions(q);
          assert.equal(real.seqPosMin(q), ps.length ? Math.min(...ps) : -1, `posMin(${q}) after ${what}`);
          assert.equal(real.seqPosMax(q), ps.length ? Math.max(...ps) : -1, `posMax(${q}) after ${what}`);
          assert.equal(real.seqCells(q), ps.length);
        }
      }
    });
  }
});
