// Differential test of the KV cache against libllama on the same GGUF: scripted and randomized
// sequences of seq_rm / seq_cp / seq_keep / seq_add (K-shift) / seq_div interleaved with decodes
// on several sequences. After every step Strata's posMin/posMax equal libllama's, and every
// decode's logits match. Both sides place tokens in the same cells (Strata's slot search follows
// llama.cpp's), so the logits agree to the bit; we allow 1e-3 and report the largest difference.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { LlamaReference, type RefToken } from '@strata/ggml';
import { Pipeline } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const TOL = 1e-3;
const N_CTX = 256;
const N_SEQ = 4;
const path = synthModel({ arch: 'llama', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 61 });
/** keys re-rotated by a shift must use YaRN's frequencies and factors, as they were written */
const yarn = synthModel({ arch: 'qwen3', nLayer: 2, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 62, ropeScaling: { type: 'yarn', factor: 4, originalContext: 256 } });

/** a windowed model (every third layer full, a 16-position window), for streams with windowed layers */
const windowed = synthModel({ arch: 'gemma3', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 1, headDim: 64, nFf: 384, nCtxTrain: 1024, seed: 63, slidingWindow: 16, swaPattern: 3 });

interface Pair {
  p: Pipeline;
  ref: LlamaReference;
}

function open(split: boolean, streams = 1, model = path, swaFull = true, groupStreams = false, nCtx = N_CTX): Pair {
  return {
    // per-sequence streams: nCtx cells each here, nCtx * N_SEQ / N_SEQ each in libllama
    p: Pipeline.open({ model, threads: 2, ctxSize: nCtx, split: split ? [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }] : undefined, kvStreams: streams, kvSwaFull: swaFull, groupStreams }),
    ref: LlamaReference.load(model, { nCtx: nCtx * streams, nSeqMax: N_SEQ, threads: 2, kvUnified: streams === 1, swaFull }),
  };
}

/** Decodes the same batch on both sides; returns the largest logit difference. */
function decode(pair: Pair, items: { seq: number; tokens: number[] }[]): number {
  const batch: RefToken[] = [];
  for (const it of items) {
    const start = pair.p.seqPosMax(it.seq) + 1;
    it.tokens.forEach((token, k) => batch.push({ token, pos: start + k, seq: it.seq, logits: k === it.tokens.length - 1 }));
  }
  const outputs = Int32Array.from(batch.flatMap((b, i) => (b.logits ? [i] : [])));
  const ours = pair.p.forward({
    tokens: Int32Array.from(batch, (b) => b.token), pos: Int32Array.from(batch, (b) => b.pos),
    seq: Int32Array.from(batch, (b) => b.seq), outputs,
  });
  const theirs = pair.ref.decode(batch);
  const v = pair.p.hp.nVocab;
  let d = 0;
  theirs.forEach((row, r) => {
    let a = 0, b = 0;
    for (let j = 0; j < v; j++) {
      d = Math.max(d, Math.abs(row[j]! - ours[r * v + j]!));
      lastScale = Math.max(lastScale, Math.abs(row[j]!));
      if (row[j]! > row[a]!) a = j;
      if (ours[r * v + j]! > ours[r * v + b]!) b = j;
    }
    if (a !== b) argmaxMismatches++;
  });
  return d;
}

/** Largest |logit| libllama produced so far, and outputs whose greedy token differed. */
let lastScale = 0;
let argmaxMismatches = 0;

function checkPositions(pair: Pair, what: string): void {
  for (let s = 0; s < N_SEQ; s++) {
    assert.equal(pair.p.seqPosMin(s), pair.ref.seqPosMin(s), `posMin(${s}) after ${what}`);
    assert.equal(pair.p.seqPosMax(s), pair.ref.seqPosMax(s), `posMax(${s}) after ${what}`);
  }
}

const tokens = (n: number, salt: number) => Array.from({ length: n }, (_, i) => 100 + ((salt * 131 + i * 17) % 20000));

describe('KV cache operations against libllama', () => {
  const pairs: Pair[] = [];
  after(() => pairs.forEach((x) => { x.p.dispose(); x.ref.dispose(); }));

  for (const [label, model] of [['', path], [' (YaRN)', yarn]] as const) it(`context shift${label}: keep a prefix, discard the oldest, shift the rest, go on decoding`, (t) => {
    const pair = open(false, 1, model);
    pairs.push(pair);
    let worst = decode(pair, [{ seq: 0, tokens: tokens(120, 1) }]);
    const nKeep = 8, nDiscard = 40;
    for (const side of [pair.p, pair.ref]) {
      side.seqRemove(0, nKeep, nKeep + nDiscard);
      side.seqAdd(0, nKeep + nDiscard, -1, -nDiscard);
    }
    checkPositions(pair, 'context shift');
    assert.equal(pair.p.seqPosMax(0), 119 - nDiscard);
    for (let i = 0; i < 20; i++) worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(1, 200 + i) }]));
    assert.ok(pair.p.stages[0]!.counters.shifts >= 1, 'the keys were re-rotated');
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}`);
    assert.ok(worst <= TOL, `logits differ by ${worst}`);
  });

  for (const model of [path, windowed]) it(`a batch among other sequences' cells reads only the span it sees (${model === path ? 'llama' : 'windowed layers'}): libllama's bits`, (t) => {
    const pair = open(model === path, 1, model, true, false, 1024);
    pairs.push(pair);
    const skipped = () => pair.p.stages.reduce((n, st) => n + st.counters.skippedCells, 0);
    // seq 0 holds cells 0..299; seq 1's prompt takes 300..599 and reads cells 256..767 (windowed
    // layers, a 16-position window, from further up once it goes on)
    let worst = decode(pair, [{ seq: 0, tokens: tokens(300, 21) }]);
    assert.equal(skipped(), 0);
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(300, 22) }]));
    assert.ok(skipped() >= 256, `skipped ${skipped()} cells`);
    const before = skipped();
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(20, 23) }]));
    assert.ok(skipped() - before >= (model === path ? 256 : 512) * pair.p.stages.length, 'a chunk further on skips as much or more');
    // one token reads every used cell (libllama's split of the cells among threads); two sequences from cell 0
    const single = skipped();
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(1, 24) }]));
    assert.equal(skipped(), single);
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(3, 25) }, { seq: 1, tokens: tokens(3, 26) }]));
    // seq 0 gone, seq 2's prompt takes cells 0..199 below seq 1's and reads up to cell 256 only
    for (const side of [pair.p, pair.ref]) side.seqRemove(0, -1, -1);
    const below = skipped();
    worst = Math.max(worst, decode(pair, [{ seq: 2, tokens: tokens(200, 27) }]));
    assert.ok(skipped() - below >= 512 * pair.p.stages.length, `the cells above seq 2's were skipped too (${skipped() - below})`);
    checkPositions(pair, 'the batches');
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}; cells skipped: ${skipped()}`);
    assert.equal(worst, 0, 'the same bits as libllama reading from cell 0');
  });

  for (const groupStreams of [false, true]) it(`one stream per sequence${groupStreams ? ' in one graph' : ''}: windowed layers read only what their window sees of each stream; libllama's bits`, (t) => {
    const pair = open(false, N_SEQ, windowed, true, groupStreams, 1024);
    pairs.push(pair);
    const skipped = () => pair.p.stages[0]!.counters.skippedCells;
    let worst = decode(pair, [{ seq: 0, tokens: tokens(300, 31) }]);
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(300, 30) }]));
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(300, 32) }]));
    const before = skipped();
    // seq 0's next chunk sees positions 585.. of its stream (16-position window): cells 512..767
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(20, 33) }]));
    assert.ok(skipped() - before >= 512, `skipped ${skipped() - before} cells`);
    // both streams: one window over both (from cell 256, seq 1's window)
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(20, 34) }, { seq: 1, tokens: tokens(20, 35) }]));
    const single = skipped();
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(1, 36) }]));
    assert.equal(skipped(), single, 'one token of one stream reads every used cell');
    checkPositions(pair, 'the batches');
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}; cells skipped: ${skipped()}`);
    assert.equal(worst, 0, 'the same bits as libllama reading every used cell of each stream');
  });

  it('shared prefix: seq_cp shares cells, the copies diverge, seq_div and seq_keep', (t) => {
    const pair = open(true);
    pairs.push(pair);
    let worst = decode(pair, [{ seq: 0, tokens: tokens(40, 3) }]);
    for (const side of [pair.p, pair.ref]) {
      side.seqCopy(0, 1, -1, -1);
      side.seqCopy(0, 2, 0, 20);
    }
    checkPositions(pair, 'seq_cp');
    assert.equal(pair.p.stages[0]!.cache.cells.used, 40, 'copies share cells');
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(5, 4) }, { seq: 2, tokens: tokens(3, 5) }, { seq: 0, tokens: tokens(2, 6) }]));
    for (const side of [pair.p, pair.ref]) side.seqDivide(1, 10, -1, 2);
    checkPositions(pair, 'seq_div');
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(4, 7) }]));
    for (const side of [pair.p, pair.ref]) side.seqKeep(2);
    checkPositions(pair, 'seq_keep');
    worst = Math.max(worst, decode(pair, [{ seq: 2, tokens: tokens(6, 8) }]));
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}`);
    assert.ok(worst <= TOL, `logits differ by ${worst}`);
  });

  it('one stream per sequence: copies between streams copy data, each stream fills on its own', (t) => {
    const pair = open(true, N_SEQ);
    pairs.push(pair);
    // Positions must agree exactly, and so do the logits: a batch whose sequences bring unequal
    // token counts computes in the same equal micro-batches as libllama's (splitEqual), each
    // token attending to its own stream's cells only.
    let worst = decode(pair, [{ seq: 0, tokens: tokens(20, 21) }]);
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(12, 22) }]));
    for (const side of [pair.p, pair.ref]) side.seqCopy(0, 2, -1, -1);
    checkPositions(pair, 'seq_cp across streams');
    const cells = pair.p.stages[0]!.cache.cells;
    assert.equal(cells.used, 20 + 12 + 20, 'a copy between streams takes cells of its own');
    worst = Math.max(worst, decode(pair, [{ seq: 2, tokens: tokens(3, 23) }, { seq: 0, tokens: tokens(2, 24) }, { seq: 1, tokens: tokens(1, 25) }]));
    for (const side of [pair.p, pair.ref]) {
      side.seqAdd(2, 5, -1, -2);
      side.seqDivide(1, 4, -1, 2);
    }
    checkPositions(pair, 'seq_add / seq_div');
    worst = Math.max(worst, decode(pair, [{ seq: 1, tokens: tokens(2, 26) }, { seq: 2, tokens: tokens(2, 27) }]));
    for (const side of [pair.p, pair.ref]) side.seqKeep(0);
    checkPositions(pair, 'seq_keep (within its own stream)');
    assert.ok(pair.p.seqPosMax(1) >= 0 && pair.p.seqPosMax(2) >= 0, 'other streams keep their sequences');
    for (const side of [pair.p, pair.ref]) side.seqRemove(-1, 10, -1);
    checkPositions(pair, 'seq_rm of every sequence');
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(3, 28) }, { seq: 2, tokens: tokens(3, 29) }]));
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)} (largest |logit| ${lastScale.toFixed(1)})`);
    assert.ok(worst <= TOL, `logits differ by ${worst}`);
    assert.equal(argmaxMismatches, 0, 'the same greedy token at every output');
    // Part of a sequence copied into another stream (what the prefix cache does with a cached
    // prompt): libllama copies whole sequences only, so its side computes the same 5 positions
    // into seq 3; decoding on from them agrees.
    const prefix = tokens(20, 21).slice(0, 5);
    pair.p.seqCopy(0, 3, 0, 5);
    pair.ref.seqRemove(3, -1, -1);
    pair.ref.decode(prefix.map((token, pos) => ({ token, pos, seq: 3, logits: pos === 4 })));
    checkPositions(pair, 'seq_cp of a prefix across streams');
    assert.equal(pair.p.stages[1]!.cache.cells.seqsOf(3 * (N_CTX) + 0).join(), '3', 'the copy lives in seq 3\'s own stream');
    const after = decode(pair, [{ seq: 3, tokens: tokens(3, 30) }]);
    t.diagnostic(`after a prefix copy: |Δlogit| ${after.toExponential(2)}`);
    assert.ok(after <= TOL, `logits differ by ${after}`);
    assert.equal(argmaxMismatches, 0);
  });

  for (const swaFull of [true, false]) it(`one stream per sequence with windowed layers (swa_full ${swaFull}): every sequence past the window, batched together`, (t) => {
    const pair = open(true, N_SEQ, windowed, swaFull);
    pairs.push(pair);
    // prompts of unequal lengths in one batch (out of order: parts {3}, {0, 1, 2}, then the rest
    // of the longer ones), then every sequence decoding together well past the window
    let worst = decode(pair, [{ seq: 3, tokens: tokens(9, 40) }, { seq: 0, tokens: tokens(30, 41) }, { seq: 1, tokens: tokens(5, 42) }, { seq: 2, tokens: tokens(17, 43) }]);
    for (let i = 0; i < 40; i++) worst = Math.max(worst, decode(pair, [0, 1, 2, 3].map((seq) => ({ seq, tokens: tokens(1, 50 + 4 * i + seq) }))));
    checkPositions(pair, 'decoding past the window');
    for (const side of [pair.p, pair.ref]) side.seqRemove(1, -1, -1);
    worst = Math.max(worst, decode(pair, [{ seq: 0, tokens: tokens(2, 60) }, { seq: 2, tokens: tokens(2, 61) }, { seq: 3, tokens: tokens(2, 62) }]));
    checkPositions(pair, 'seq_rm of one stream');
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}`);
    assert.ok(worst <= TOL, `logits differ by ${worst}`);
  });

  for (const model of [path, windowed]) it(`one stream per sequence in one graph (${model === path ? 'llama' : 'windowed layers'}): any sequences, a group each, the same results`, (t) => {
    const pair = open(true, N_SEQ, model, false, true);
    pairs.push(pair);
    let worst = decode(pair, [{ seq: 2, tokens: tokens(9, 70) }, { seq: 0, tokens: tokens(30, 71) }]);
    const before = pair.p.stages[0]!.counters.batches;
    // seqs 2 and 0 decoding (1 idle between them), then a prompt of seq 3 beside 0 and 2
    for (let i = 0; i < 20; i++) worst = Math.max(worst, decode(pair, [{ seq: 2, tokens: tokens(1, 80 + i) }, { seq: 0, tokens: tokens(1, 100 + i) }]));
    worst = Math.max(worst, decode(pair, [{ seq: 3, tokens: tokens(4, 72) }, { seq: 0, tokens: tokens(1, 73) }, { seq: 2, tokens: tokens(1, 74) }]));
    assert.equal(pair.p.stages[0]!.counters.batches - before, 21, 'one graph a batch');
    for (let i = 0; i < 20; i++) worst = Math.max(worst, decode(pair, [0, 2, 3].map((seq) => ({ seq, tokens: tokens(1, 120 + 3 * i + seq) }))));
    checkPositions(pair, 'grouped batches');
    // other mat-mul shapes than libllama's micro-batches: the same greedy tokens, logits to rounding
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)} (largest |logit| ${lastScale.toFixed(1)})`);
    assert.ok(worst <= 2e-3 * lastScale, `logits differ by ${worst}`);
    assert.equal(argmaxMismatches, 0, 'the same greedy token at every output');
  });

  it('one stream per sequence in one graph: more groups than a graph holds compute in parts, with the same results', (t) => {
    // 40 streams, every other one decoding: 20 groups, more than a stage computes in one graph
    const streams = 40;
    const pair: Pair = {
      p: Pipeline.open({ model: path, threads: 2, ctxSize: 64, kvStreams: streams, groupStreams: true }),
      ref: LlamaReference.load(path, { nCtx: 64 * streams, nSeqMax: streams, threads: 2, kvUnified: false }),
    };
    pairs.push(pair);
    const seqs = Array.from({ length: 20 }, (_, i) => 2 * i);
    let worst = decode(pair, seqs.map((seq) => ({ seq, tokens: tokens(3, 200 + seq) })));
    const before = pair.p.stages[0]!.counters.batches;
    for (let i = 0; i < 5; i++) worst = Math.max(worst, decode(pair, seqs.map((seq) => ({ seq, tokens: tokens(1, 300 + 7 * i + seq) }))));
    assert.equal(pair.p.stages[0]!.counters.batches - before, 10, 'two graphs a step');
    for (const seq of seqs) assert.equal(pair.p.seqPosMax(seq), pair.ref.seqPosMax(seq));
    t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)} (largest |logit| ${lastScale.toFixed(1)})`);
    assert.ok(worst <= 2e-3 * lastScale, `logits differ by ${worst}`);
    assert.equal(argmaxMismatches, 0, 'the same greedy token at every output');
  });

  it('K/V of some layers kept in host memory give the same results', () => {
    const prompt = tokens(30, 9);
    const run = (hostLayers?: number[]) => {
      const p = Pipeline.open({ model: path, threads: 2, ctxSize: N_CTX, split: [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }], kvHostLayers: hostLayers });
      try {
        const out = p.forward({ tokens: Int32Array.from(prompt), pos: Int32Array.from(prompt, (_, i) => i), seq: new Int32Array(prompt.length) });
        const kvBytes = p.stages.reduce((n, s) => n + Object.values(s.memory().kv).reduce((a, b) => a + b, 0), 0);
        return { out, kvBytes };
      } finally {
        p.dispose();
      }
    };
    const all = run(), some = run([1, 2]);
    assert.deepEqual(some.out, all.out);
    assert.equal(some.kvBytes, all.kvBytes, 'the same K/V bytes, placed differently');
    assert.throws(() => Pipeline.open({ model: path, split: [{ l0: 0, l1: 4 }], kvHostLayers: [7] }), /host layer 7/);
  });

  for (const seed of [11, 12, 13]) {
    it(`random operations and decodes on ${N_SEQ} sequences (seed ${seed})`, (t) => {
      const pair = open(seed % 2 === 0);
      pairs.push(pair);
      let s = seed;
      const rnd = (n: number) => {
        s = (Math.imul(s, 1103515245) + 12345) >>> 0;
        return (s >>> 8) % n;
      };
      const bound = () => (rnd(3) === 0 ? -1 : rnd(80));
      let worst = 0;
      for (let step = 0; step < 60; step++) {
        const op = rnd(10);
        const seq = rnd(N_SEQ);
        let what = 'decode';
        if (op < 5) {
          const seqs = [...new Set([seq, rnd(N_SEQ), rnd(N_SEQ)])].slice(0, 1 + rnd(3));
          worst = Math.max(worst, decode(pair, seqs.map((q) => ({ seq: q, tokens: tokens(1 + rnd(6), step * 7 + q) }))));
        } else {
          const p0 = bound(), p1 = bound();
          const args: [number, number, number, number] = [seq, p0, p1, 0];
          if (op === 5) { what = `seq_rm(${seq}, ${p0}, ${p1})`; pair.p.seqRemove(seq, p0, p1); pair.ref.seqRemove(seq, p0, p1); }
          if (op === 6) { const dst = rnd(N_SEQ); what = `seq_cp(${seq}, ${dst})`; pair.p.seqCopy(seq, dst, p0, p1); pair.ref.seqCopy(seq, dst, p0, p1); }
          if (op === 7) { args[3] = rnd(31) - 15; what = `seq_add(${args})`; pair.p.seqAdd(...args); pair.ref.seqAdd(...args); }
          if (op === 8) { args[3] = 1 + rnd(3); what = `seq_div(${args})`; pair.p.seqDivide(...args); pair.ref.seqDivide(...args); }
          if (op === 9 && rnd(4) === 0) { what = `seq_keep(${seq})`; pair.p.seqKeep(seq); pair.ref.seqKeep(seq); }
        }
        checkPositions(pair, `step ${step}: ${what}`);
        // keep room in the cache: drop the sequence holding the most when it fills up
        if (pair.p.stages[0]!.cache.cells.used > N_CTX * 0.6) {
          const victim = rnd(N_SEQ);
          pair.p.seqRemove(victim); pair.ref.seqRemove(victim, -1, -1);
        }
      }
      t.diagnostic(`largest |Δlogit|: ${worst.toExponential(2)}`);
      assert.ok(worst <= TOL, `logits differ by ${worst}`);
    });
  }
});
