// Interleaved sliding-window attention with two cell groups per stage, as llama.cpp's iSWA cache
// with swa_full off (llama-server's default): a stage holding windowed and full layers keeps the
// windowed layers' K/V in a group of pad256(min(cells, n_swa · seqs + ubatch)) cells that drops
// what no window sees, while the full layers keep every position. Checked against libllama with
// swa_full off on a synthetic gemma3 (8 layers, every sixth full, a 32-position window, 64-token
// micro-batches: a 256-cell windowed group against 1,024 full cells) over 448 positions, so the
// windowed group wraps round its cells more than once: logits at every position, whole and split
// (an all-windowed stage, then a mixed one), two sequences batched together, seq_rm of a tail and
// seq_pos_min as libllama reports them; then a sequence's state exported from two groups (a
// version 2 blob) and imported into a pipeline with one full-size group and into one split
// elsewhere, each continuing exactly as the source.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { LlamaReference, Vocab } from '@strata/ggml';
import { decodeState } from '@strata/kv-cache';
import { Pipeline, type LayerRange, type PipelineOptions } from '@strata/model';
import { LONG_TEXT, maxAbsDiff, synthModel } from './helpers/models.ts';

const THREADS = 2;
const WINDOW = 32;
const UBATCH = 64;
const CTX = 1024;
const path = synthModel({
  arch: 'gemma3', nLayer: 8, nEmbd: 128, nHead: 4, nHeadKv: 1, headDim: 64, nFf: 384, nCtxTrain: 2048, seed: 17,
  slidingWindow: WINDOW, logitSoftcap: 30,
});
const ISWA: Omit<PipelineOptions, 'model'> = { threads: THREADS, ctxSize: CTX, maxBatch: UBATCH, kvSwaFull: false };

/** Runs `tokens` of sequence `seq` from `pos0` in micro-batches of UBATCH; logits of every token. */
function runStrata(p: Pipeline, tokens: ArrayLike<number>, pos0: number, seq = 0): Float32Array[] {
  const rows: Float32Array[] = [];
  for (let i = 0; i < tokens.length; i += UBATCH) {
    const t = Int32Array.from(Array.from(tokens).slice(i, i + UBATCH));
    const logits = p.forward({ tokens: t, pos: Int32Array.from(t, (_, j) => pos0 + i + j), seq: new Int32Array(t.length).fill(seq) });
    for (let j = 0; j < t.length; j++) rows.push(logits.slice(j * p.hp.nVocab, (j + 1) * p.hp.nVocab));
  }
  return rows;
}

function runRef(r: LlamaReference, tokens: ArrayLike<number>, pos0: number, seq = 0): Float32Array[] {
  const rows: Float32Array[] = [];
  for (let i = 0; i < tokens.length; i += UBATCH) {
    const chunk = Array.from(tokens).slice(i, i + UBATCH);
    rows.push(...r.decode(chunk.map((token, j) => ({ token, pos: pos0 + i + j, seq, logits: true }))));
  }
  return rows;
}

const argmax = (x: Float32Array) => x.reduce((b, v, i) => (v > x[b]! ? i : b), 0);

/** `n` greedy tokens after logits `last`, position `pos` on. */
function greedy(p: Pipeline, last: Float32Array, pos: number, n: number, seq = 0): number[] {
  const out: number[] = [];
  let tok = argmax(last);
  for (let i = 0; i < n; i++) {
    out.push(tok);
    const l = p.forward({ tokens: Int32Array.of(tok), pos: Int32Array.of(pos + i), seq: Int32Array.of(seq) });
    tok = argmax(l);
  }
  return out;
}

describe('iSWA: windowed layers in a cell group of their own, against libllama with swa_full off', () => {
  const vocab = Vocab.load(path);
  const text = vocab.tokenize(`${LONG_TEXT} ${LONG_TEXT} ${LONG_TEXT} ${LONG_TEXT}`);
  const prompt = Int32Array.from({ length: 448 }, (_, i) => text[i % text.length]!);
  const ref = LlamaReference.load(path, { nCtx: CTX, nBatch: UBATCH, threads: THREADS, swaFull: false });
  const refRows = runRef(ref, prompt, 0);
  const refPosMin = ref.seqPosMin(0);
  after(() => {
    vocab.dispose();
    ref.dispose();
  });

  it('keeps 256 windowed cells beside 1,024 full ones and matches libllama\'s logits at all 448 positions', () => {
    const p = Pipeline.open({ model: path, ...ISWA });
    const full = Pipeline.open({ model: path, threads: THREADS, ctxSize: CTX, maxBatch: UBATCH });
    try {
      const c = p.stages[0]!.cache;
      assert.deepEqual(c.groups.map((g) => [g.layers.length, g.cells.size, g.windowed]), [[1, CTX, false], [7, 256, true]]);
      const kvBytes = (q: Pipeline) => Object.values(q.stages[0]!.memory().kv).reduce((s, x) => s + x, 0);
      const row = 2 * c.storage.rowBytes;
      assert.equal(kvBytes(p), row * (CTX + 7 * 256), 'K/V of 1 full layer × 1,024 cells and 7 windowed × 256');
      assert.equal(kvBytes(full), row * 8 * CTX);
      const rows = runStrata(p, prompt, 0);
      assert.equal(maxAbsDiff(rows, refRows), 0, 'the same bits as libllama');
      assert.equal(p.seqPosMin(0), refPosMin, 'seq_pos_min: what the windowed group still holds, as libllama says');
      assert.equal(refPosMin, 448 - 256, 'both windowed caches hold their 256 newest positions');
      assert.ok(c.groups[1]!.cells.windowReused > 0, 'its cells were taken over as the window moved on');
      assert.equal(c.cells.used, 448);
    } finally {
      p.dispose();
      full.dispose();
    }
  });

  it('split into an all-windowed stage and a mixed one, the same bits', () => {
    const split: LayerRange[] = [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }];
    const p = Pipeline.open({ model: path, ...ISWA, split });
    try {
      assert.deepEqual(p.stages.map((s) => s.cache.groups.map((g) => g.cells.size)), [[256], [CTX, 256]], 'the all-windowed stage has one small group; the mixed one two');
      assert.equal(maxAbsDiff(runStrata(p, prompt, 0), refRows), 0);
    } finally {
      p.dispose();
    }
  });

  it('two sequences batched together (groups sized for 2), as libllama decodes the same batches', () => {
    const r2 = LlamaReference.load(path, { nCtx: CTX, nBatch: UBATCH, threads: THREADS, swaFull: false, nSeqMax: 2 });
    const p = Pipeline.open({ model: path, ...ISWA, kvSwaSeqs: 2 });
    try {
      assert.equal(p.stages[0]!.cache.groups[1]!.cells.size, 256, 'pad256(32 · 2 + 64)');
      // 160 positions each, interleaved 32 + 32 per micro-batch
      const other = Int32Array.from(prompt).reverse();
      const mine: Float32Array[] = [], theirs: Float32Array[] = [];
      for (let i = 0; i < 160; i += 32) {
        const toks = [...Array.from(prompt.subarray(i, i + 32)), ...Array.from(other.subarray(i, i + 32))];
        const pos = toks.map((_, j) => i + (j % 32)), seq = toks.map((_, j) => (j < 32 ? 0 : 1));
        const l = p.forward({ tokens: Int32Array.from(toks), pos: Int32Array.from(pos), seq: Int32Array.from(seq) });
        for (let j = 0; j < toks.length; j++) mine.push(l.slice(j * p.hp.nVocab, (j + 1) * p.hp.nVocab));
        theirs.push(...r2.decode(toks.map((token, j) => ({ token, pos: pos[j]!, seq: seq[j]!, logits: true }))));
      }
      assert.equal(maxAbsDiff(mine, theirs), 0);
      assert.deepEqual([p.seqPosMin(0), p.seqPosMin(1)], [r2.seqPosMin(0), r2.seqPosMin(1)]);
    } finally {
      p.dispose();
      r2.dispose();
    }
  });

  it('seq_rm of a tail inside the window, then on: as libllama', () => {
    const p = Pipeline.open({ model: path, ...ISWA });
    const r = LlamaReference.load(path, { nCtx: CTX, nBatch: UBATCH, threads: THREADS, swaFull: false });
    try {
      runStrata(p, prompt.subarray(0, 300), 0);
      runRef(r, prompt.subarray(0, 300), 0);
      // drop the last 10 positions (still inside the window) in both, then go on from 290
      p.seqRemove(0, 290, -1);
      assert.equal(r.seqRemove(0, 290, -1), true);
      assert.deepEqual([p.seqPosMin(0), p.seqPosMax(0)], [r.seqPosMin(0), r.seqPosMax(0)]);
      assert.equal(maxAbsDiff(runStrata(p, prompt.subarray(290, 400), 290), runRef(r, prompt.subarray(290, 400), 290)), 0);
    } finally {
      p.dispose();
      r.dispose();
    }
  });

  it('a state exported from two groups imports into a full-size cache and into another split, each continuing exactly', () => {
    const src = Pipeline.open({ model: path, ...ISWA });
    const full = Pipeline.open({ model: path, threads: THREADS, ctxSize: CTX, maxBatch: UBATCH });
    const other = Pipeline.open({ model: path, ...ISWA, split: [{ l0: 0, l1: 6 }, { l0: 6, l1: 8 }] });
    try {
      const rows = runStrata(src, prompt.subarray(0, 400), 0);
      const blobs = src.exportState(0);
      const st = decodeState(blobs[0]!);
      assert.equal(st.sets.length, 2, 'one cell set per group (version 2)');
      assert.deepEqual([st.sets[0]!.length, st.sets[1]!.length], [400, WINDOW - 1], 'the windowed layers send what the next token\'s window sees');
      assert.deepEqual(Array.from(st.layerSet), [1, 1, 1, 1, 1, 0, 1, 1]);
      // the source's own continuation is the reference
      const expected = greedy(src, rows[399]!, 400, 24);
      for (const dst of [full, other]) {
        dst.importState(blobs, 0);
        assert.deepEqual(greedy(dst, rows[399]!, 400, 24), expected);
      }
      // the full-size cache holds every position in full layers and the window's in windowed ones;
      // the other split's mixed stage keeps the window in its own group
      assert.equal(other.stages[0]!.cache.groups[1]!.cells.size, 256);
    } finally {
      src.dispose();
      full.dispose();
      other.dispose();
    }
  });

  it('refuses a nonsense kvSwaSeqs by name', () => {
    assert.throws(() => Pipeline.open({ model: path, ...ISWA, kvSwaSeqs: 0 }), /kvSwaSeqs must be 1\.\.256, got 0/);
  });
});
