// StageCache on the CPU backend with no model file: a synthetic two-layer llama's hyperparameters,
// K/V rows written and read directly. Sequence operations, the K-shift, defragmentation, state
// export/import and the rule that nothing changes cells while a batch computes.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { Backend, GgmlType, RopeType } from '@strata/ggml';
import { KvStateError } from '@strata/kv-cache';
import { ModelError } from './errors.ts';
import type { HParams } from './hparams.ts';
import { StageCache, type StageCacheOptions } from './stage-cache.ts';

const HEAD_DIM = 32, N_HEAD_KV = 2, N_EMBD_KV = HEAD_DIM * N_HEAD_KV, FREQ_BASE = 10000;

function hparams(fingerprint = 'synthetic-2-layer'): HParams {
  return {
    arch: 'llama', nLayer: 2, nEmbd: 64, nFf: 128, nExpert: 0, nExpertUsed: 0, nFfExp: 0, expertWeightsScale: 0, expertWeightsNorm: false, expertGating: 'softmax', nFfShexp: 0, nHead: 2, nHeadKv: N_HEAD_KV, headDim: HEAD_DIM, nRot: HEAD_DIM,
    nCtxTrain: 256, nVocab: 16, rmsEps: 1e-5, ropeType: RopeType.NORMAL, ropeFreqBase: FREQ_BASE, ropeFreqScale: 1, ropeExtFactor: 0, ropeAttnFactor: 1, nCtxOrig: 256,
    ropeFreqBaseSwa: FREQ_BASE, ropeFreqScaleSwa: 1, embdScale: 1, attnScale: 1 / Math.sqrt(HEAD_DIM), qScaled: false, logitSoftcap: 0, attnSoftcap: 0,
    nSwa: 0, swaLayers: [false, false], pooling: 'mean', fingerprint,
  };
}

const backend = Backend.open({ threads: 1 });
const caches: StageCache[] = [];
after(() => {
  for (const c of caches) c.dispose();
  backend.dispose();
});

/** An f32 cache of `size` cells over both layers (f32 rows compare exactly). */
function cache(o: Partial<StageCacheOptions> = {}): StageCache {
  const c = StageCache.create({ hp: hparams(), range: { l0: 0, l1: 2 }, backend, size: 32, type: GgmlType.F32, ...o });
  caches.push(c);
  return c;
}

/** The value of element j of a row: which layer, K or V, sequence and position wrote it. */
function value(slot: number, kind: 0 | 1, seq: number, pos: number, j: number): number {
  return slot * 1000 + kind * 500 + seq * 50 + pos + j / 100;
}

/** Puts positions `pos` of `seq` in new cells with known K/V rows in every layer; returns the cells. */
function fill(c: StageCache, seq: number, pos: number[]): Int32Array {
  const seqs = new Int32Array(pos.length).fill(seq);
  const plan = c.findSlot(seqs);
  assert.ok(plan, `room for ${pos.length} cells`);
  c.apply(plan, pos, seqs);
  for (let slot = 0; slot < c.range.l1 - c.range.l0; slot++) {
    const k = new Float32Array(pos.length * N_EMBD_KV), v = new Float32Array(pos.length * N_EMBD_KV);
    pos.forEach((p, i) => {
      for (let j = 0; j < N_EMBD_KV; j++) {
        k[i * N_EMBD_KV + j] = value(slot, 0, seq, p, j);
        v[i * N_EMBD_KV + j] = value(slot, 1, seq, p, j);
      }
    });
    c.storage.writeRows(slot, plan.plans[0]!.cells, new Uint8Array(k.buffer), new Uint8Array(v.buffer));
  }
  return plan.plans[0]!.cells;
}

/** The K and V rows of `cells` in layer slot `slot`, as f32. */
function rows(c: StageCache, slot: number, cells: Int32Array): { k: Float32Array; v: Float32Array } {
  const k = new Uint8Array(cells.length * c.storage.rowBytes), v = new Uint8Array(k.length);
  c.storage.readRows(slot, cells, k, v);
  return { k: new Float32Array(k.buffer), v: new Float32Array(v.buffer) };
}

/** The cells of `seq`, in position order. */
function cellsOf(c: StageCache, seq: number): Int32Array {
  const out: number[] = [];
  for (let i = 0; i < c.cells.size; i++) if (c.cells.pos[i]! >= 0 && c.cells.hasSeq(i, seq)) out.push(i);
  return Int32Array.from(out.sort((a, b) => c.cells.pos[a]! - c.cells.pos[b]!));
}


describe('StageCache', () => {
  it('allocates K and V for every layer of its range and reports their bytes', () => {
    const c = cache();
    assert.equal(c.storage.k.length, 2);
    assert.equal(c.storage.rowBytes, N_EMBD_KV * 4);
    assert.ok(c.memory()['CPU']! >= 2 * 2 * 32 * c.storage.rowBytes, JSON.stringify(c.memory()));
  });

  it('plans a slot without taking it, and shares, cuts and keeps sequences as llama_memory_i does', () => {
    const c = cache();
    assert.ok(c.findSlot(new Int32Array(4)));
    assert.equal(c.cells.used, 0, 'findSlot changes nothing');
    assert.equal(c.findSlot(new Int32Array(33)), null, 'a batch larger than the cache does not fit');
    fill(c, 0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    c.seqCopy(0, 1, 0, 5);
    assert.equal(c.cells.used, 10, 'one stream: a copy shares cells');
    assert.deepEqual([c.seqPosMin(1), c.seqPosMax(1)], [0, 4]);
    assert.equal(c.seqRemove(0, 2, 4), true);
    assert.equal(c.cells.used, 10, 'positions 2 and 3 stay for sequence 1');
    assert.equal(c.cells.seqCells(0), 8);
    c.seqKeep(1);
    assert.equal(c.cells.used, 5);
    assert.deepEqual([c.seqPosMin(0), c.seqPosMax(0)], [-1, -1]);
    assert.deepEqual([c.seqPosMin(1), c.seqPosMax(1)], [0, 4]);
    assert.equal(c.contextShift(1, 1, 2), 2, 'keeps [0, 1), drops [1, 3), moves the rest back');
    assert.deepEqual([c.seqPosMin(1), c.seqPosMax(1), c.cells.used], [0, 2, 3]);
  });

  it('records shifts from seqAdd/seqDivide and re-rotates the keys once, leaving values alone', () => {
    const c = cache();
    const cells = fill(c, 0, [0, 1, 2, 3]);
    // every K pair (x[2i], x[2i+1]) = (1, 0): RoPE by an angle θ turns it into (cos θ, sin θ)
    const ones = new Float32Array(cells.length * N_EMBD_KV);
    for (let j = 0; j < ones.length; j += 2) ones[j] = 1;
    const before = rows(c, 1, cells);
    for (let slot = 0; slot < 2; slot++) c.storage.writeRows(slot, cells, new Uint8Array(ones.buffer), new Uint8Array(rows(c, slot, cells).v.buffer));
    c.seqAdd(0, 0, -1, 5);
    assert.deepEqual([c.seqPosMin(0), c.seqPosMax(0)], [5, 8]);
    assert.ok(c.cells.hasShift);
    assert.deepEqual(Array.from(c.cells.pendingShifts().subarray(0, 4)), [5, 5, 5, 5]);
    assert.equal(c.counters.shifts, 0, 'nothing runs before it is needed');
    assert.deepEqual(rows(c, 0, cells).k, ones, 'keys untouched until the shift is applied');
    c.applyShift();
    assert.equal(c.counters.shifts, 1);
    assert.equal(c.cells.hasShift, false);
    c.applyShift();
    assert.equal(c.counters.shifts, 1, 'no pending shift: no graph runs');
    for (let slot = 0; slot < 2; slot++) {
      const { k, v } = rows(c, slot, cells);
      for (const [cell, head, pair] of [[0, 0, 0], [3, 1, 0], [2, 0, 1], [1, 1, 7]] as const) {
        const theta = 5 * FREQ_BASE ** (-2 * pair / HEAD_DIM), at = cell * N_EMBD_KV + head * HEAD_DIM + 2 * pair;
        assert.ok(Math.abs(k[at]! - Math.cos(theta)) < 1e-5 && Math.abs(k[at + 1]! - Math.sin(theta)) < 1e-5,
          `layer ${slot} cell ${cell} head ${head} pair ${pair}: (${k[at]}, ${k[at + 1]}) is the pair turned by ${theta}`);
      }
      if (slot === 1) assert.deepEqual(v, before.v, 'values are not rotated');
    }
    c.seqDivide(0, 0, -1, 2);
    assert.deepEqual(Array.from(c.cells.pos.subarray(0, 4)), [2, 3, 3, 4]);
    // llama.cpp's pos_div records p_old - p_new (pos_add records +delta); KvCells follows it
    assert.deepEqual(Array.from(c.cells.pendingShifts().subarray(0, 4)), [3, 3, 4, 4]);
  });

  it('defragments: cells move down with their K/V rows, and the exported state is byte-identical', () => {
    const c = cache();
    fill(c, 0, [0, 1, 2, 3, 4, 5]);
    const held = fill(c, 1, [0, 1, 2, 3, 4, 5]);
    c.seqRemove(0);
    const wanted = [rows(c, 0, held), rows(c, 1, held)];
    const blob = c.exportState(1);
    assert.equal(c.cells.usedMaxP1(), 12);
    assert.equal(c.defrag(), 6);
    assert.equal(c.counters.defrags, 1);
    assert.equal(c.cells.usedMaxP1(), 6);
    assert.deepEqual(Array.from(cellsOf(c, 1)), [0, 1, 2, 3, 4, 5]);
    for (const slot of [0, 1]) assert.deepEqual(rows(c, slot, Int32Array.of(0, 1, 2, 3, 4, 5)), wanted[slot], `layer ${slot} rows moved`);
    assert.deepEqual(c.exportState(1), blob);
    assert.equal(c.defrag(), 0, 'a packed cache has nothing to move');
    assert.equal(c.counters.defrags, 1);
  });

  it('exports a sequence and imports it elsewhere: same positions, same rows, same blob', () => {
    const src = cache();
    fill(src, 3, [0, 1]); // taken cells, so the source's cells are not the target's
    fill(src, 2, [0, 1, 2, 3, 4, 5, 6, 7]);
    src.seqRemove(2, 0, 2);
    const blob = src.exportState(2);
    const dst = cache({ size: 64 });
    assert.deepEqual(dst.importState(blob, 5), { layers: { l0: 0, l1: 2 }, cells: 6 });
    assert.deepEqual([dst.seqPosMin(5), dst.seqPosMax(5), dst.cells.used], [2, 7, 6]);
    for (const slot of [0, 1]) assert.deepEqual(rows(dst, slot, cellsOf(dst, 5)), rows(src, slot, cellsOf(src, 2)), `layer ${slot}`);
    assert.deepEqual(dst.exportState(5), blob, 're-exported byte for byte');

    // the second layer alone, into a stage that holds only it
    const half = cache({ range: { l0: 1, l1: 2 } });
    assert.deepEqual(half.importState(src.exportState(2, { p0: 4 }), 0), { layers: { l0: 1, l1: 2 }, cells: 4 });
    assert.deepEqual(rows(half, 0, cellsOf(half, 0)), rows(src, 1, cellsOf(src, 2).subarray(2)));

    const foreign = cache({ hp: hparams('another model') });
    assert.throws(() => foreign.importState(blob, 0), (e: unknown) => e instanceof KvStateError && e.code === 'model_mismatch');
    assert.equal(foreign.cells.used, 0, 'a refused import changes nothing');
  });

  it('refuses every operation once disposed; dispose is idempotent', () => {
    const c = StageCache.create({ hp: hparams(), range: { l0: 0, l1: 2 }, backend, size: 8, type: GgmlType.F32 });
    fill(c, 0, [0, 1]);
    c.dispose();
    c.dispose();
    const disposed = (e: unknown) => e instanceof ModelError && e.code === 'bad_input';
    assert.throws(() => c.seqCopy(0, 1), disposed);
    assert.throws(() => c.exportState(0), disposed);
    assert.throws(() => c.defrag(), disposed);
  });
});
