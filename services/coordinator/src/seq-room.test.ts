import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SeqRoom, type Resident, type RoomAsk } from './seq-room.ts';

const resident = (seq: number, tokens: number, lastUsedMs: number, busy = false): Resident => ({ seq, tokens: Array.from({ length: tokens }, () => 1), lastUsedMs, busy, epoch: 1 });
const idle = { cells: 0, sessions: new Set<string>() };
const ask = (seqs: number, cells: number, keep = '', extra = 0): RoomAsk => ({ seqs, cells, keep, extra });

/** A room of 4 sequences and `capacity` cells whose ids 0-3 are held by residents a-d. */
function fullRoom(capacity: number): SeqRoom {
  const room = new SeqRoom(4, capacity);
  const all = room.plan(ask(4, 0), idle)!;
  room.apply(all);
  assert.deepEqual(all.seqs, [0, 1, 2, 3], 'the lowest ids first');
  for (const [id, r] of [['a', resident(0, 100, 30)], ['b', resident(1, 50, 10)], ['c', resident(2, 80, 20, true)], ['d', resident(3, 10, 5)]] as const) room.residents.set(id, r);
  return room;
}

describe('SeqRoom', () => {
  it('grants free ids without evicting while there is room', () => {
    const room = new SeqRoom(4, 1000);
    const g = room.plan(ask(2, 400), idle)!;
    assert.deepEqual(g, { seqs: [0, 1], evicted: [], prefixes: [], emptyFirst: [], drops: [] });
    room.apply(g);
    assert.equal(room.seqsUsed, 2);
    assert.deepEqual(room.plan(ask(1, 400), idle)!.seqs, [2]);
  });

  it('evicts idle sessions least recently used first, until sequences and cells suffice', () => {
    const room = fullRoom(260);
    assert.deepEqual(room.reserved(idle), 240);
    const g = room.plan(ask(1, 70), idle)!;
    assert.deepEqual(g.evicted, ['d', 'b'], 'd (5) then b (10): 20 + 10 + 50 cells');
    assert.deepEqual(g.seqs, [1], 'the most recently used of the evicted is handed out');
    assert.deepEqual(g.emptyFirst, [1], 'and emptied before its first step');
    assert.deepEqual(g.drops, [{ seq: 3, cells: 10 }], 'the other is emptied in the background');
    room.apply(g);
    assert.deepEqual([...room.residents.keys()], ['a', 'c']);
    assert.equal(room.reserved(idle), 180, 'a dropped sequence whose cells went to the new work does not count');
    room.released(3, true);
    assert.deepEqual(room.plan(ask(1, 0), idle)!.seqs, [3], 'its id is free once emptied');
  });

  it('never evicts a busy session or the one to keep', () => {
    const room = fullRoom(240);
    assert.deepEqual(room.plan(ask(2, 100, 'b'), idle)!.evicted, ['d', 'a']);
    assert.equal(room.plan(ask(1, 200, 'a'), idle), null, 'c is busy, a kept: 60 cells at most');
  });

  it('says null, and changes nothing, when even every idle session would not do', () => {
    const room = fullRoom(240);
    assert.equal(room.plan(ask(4, 0), idle), null);
    assert.equal(room.plan(ask(1, 1000), idle), null);
    assert.equal(room.residents.size, 4);
    assert.equal(room.seqsUsed, 4);
  });

  it('counts running jobs, sessions moving in, sequences being emptied and those whose emptying failed', () => {
    const room = new SeqRoom(4, 1000);
    room.apply(room.plan(ask(3, 0), idle)!);
    room.residents.set('s', resident(0, 100, 1, true));
    assert.equal(room.reserved({ cells: 300, sessions: new Set(['s']) }), 300, "a running session's cells are its job's");
    assert.equal(room.reserved(idle), 100);
    room.reserveIncoming(1, 50);
    room.release(2, 20);
    assert.equal(room.reserved(idle), 170);
    assert.equal(room.settling, 2);
    room.released(2, false);
    assert.equal(room.strandedCells, 20, 'a sequence that could not be emptied stays held');
    assert.equal(room.endIncoming(1), 50);
    assert.equal(room.reserved(idle), 120);
    assert.equal(room.seqsUsed, 3, 'neither id came back');
  });

  it('refuses a grant planned before the room changed', () => {
    const room = new SeqRoom(2, 100);
    const g = room.plan(ask(1, 0), idle)!;
    room.apply(room.plan(ask(1, 0), idle)!);
    assert.throws(() => room.apply(g), /out of date/);
  });
});
