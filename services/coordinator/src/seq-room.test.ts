import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { planRoom, type Resident } from './seq-room.ts';

const resident = (seq: number, tokens: number, lastUsedMs: number, busy = false): Resident => ({ seq, tokens: Array.from({ length: tokens }, () => 1), lastUsedMs, busy, epoch: 1 });

describe('planRoom', () => {
  const residents = new Map([['a', resident(0, 100, 30)], ['b', resident(1, 50, 10)], ['c', resident(2, 80, 20, true)], ['d', resident(3, 10, 5)]]);

  it('evicts nothing when there is room already', () => {
    assert.deepEqual(planRoom({ free: 1, room: 500, residents, seqs: 1, cells: 400, keep: '' }), []);
  });

  it('evicts idle sessions least recently used first, until sequences and cells suffice', () => {
    assert.deepEqual(planRoom({ free: 0, room: 20, residents, seqs: 1, cells: 70, keep: '' })!.map(([id]) => id), ['d', 'b']);
    assert.deepEqual(planRoom({ free: 0, room: 1000, residents, seqs: 2, cells: 0, keep: '' })!.map(([id]) => id), ['d', 'b']);
  });

  it('never evicts a busy session or the one to keep', () => {
    assert.deepEqual(planRoom({ free: 0, room: 0, residents, seqs: 2, cells: 100, keep: 'b' })!.map(([id]) => id), ['d', 'a']);
    assert.equal(planRoom({ free: 0, room: 0, residents, seqs: 1, cells: 200, keep: 'a' }), null, 'c is busy, a kept: 60 cells at most');
  });

  it('says null when even every idle session would not do', () => {
    assert.equal(planRoom({ free: 0, room: 0, residents, seqs: 4, cells: 0, keep: '' }), null);
    assert.equal(planRoom({ free: 5, room: 0, residents, seqs: 1, cells: 1000, keep: '' }), null);
  });
});
