// Exported KV state moves a sequence: export → import into a fresh pipeline (split the same way
// or elsewhere) → go on decoding gives the logits of never having moved; libllama's own state path
// gives the same. Corrupt, truncated or mismatched state is refused and leaves the cache as it was.
//
// Tolerance. Where the cells keep their order, the logits are the same bits (the libllama case
// below). The fragmented source here puts its next tokens into the holes before its older cells,
// while the target appends them after; ggml's CPU flash attention visits cells in index order and
// accumulates V in f16, so another order rounds differently, by up to ~1e-3 of the logits'
// magnitude (a single thread shows the same). We allow 2e-3 of the largest |logit| and require the
// same greedy token at every step.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { GgmlType, LlamaReference } from '@strata/ggml';
import { KvStateError } from '@strata/kv-cache';
import { Pipeline, type LayerRange } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const REL_TOL = 2e-3;
const path = synthModel({ arch: 'llama', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 71 });
const wide = synthModel({ arch: 'qwen2', nLayer: 4, nEmbd: 256, nHead: 4, nHeadKv: 2, nFf: 512, nCtxTrain: 1024, seed: 73 });
const other = synthModel({ arch: 'llama', nLayer: 4, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 384, nCtxTrain: 1024, seed: 72 });
const PROMPT = Array.from({ length: 60 }, (_, i) => 200 + ((i * 97) % 15000));
const NEXT = Array.from({ length: 12 }, (_, i) => 300 + i * 11);

const open: Pipeline[] = [];
after(() => open.forEach((p) => p.dispose()));
function pipeline(split?: LayerRange[], model = path, kvType: number = GgmlType.F16): Pipeline {
  const p = Pipeline.open({ model, threads: 2, ctxSize: 256, split, kvType });
  open.push(p);
  return p;
}

/** Feeds `tokens` one by one on `seq` after what the cache holds; returns each step's logits. */
function continueDecoding(p: Pipeline, seq: number, tokens: number[]): Float32Array[] {
  return tokens.map((t) => p.forward({ tokens: Int32Array.of(t), pos: Int32Array.of(p.seqPosMax(seq) + 1), seq: Int32Array.of(seq) }));
}

function prefill(p: Pipeline, seq: number, tokens: number[]): void {
  p.forward({ tokens: Int32Array.from(tokens), pos: Int32Array.from(tokens, (_, i) => p.seqPosMax(seq) + 1 + i), seq: new Int32Array(tokens.length).fill(seq), outputs: Int32Array.of(tokens.length - 1) });
}

function maxDiff(a: Float32Array[], b: Float32Array[]): number {
  let d = 0;
  a.forEach((row, i) => row.forEach((x, j) => { d = Math.max(d, Math.abs(x - b[i]![j]!)); }));
  return d;
}

/** Asserts two runs of logits agree within the tolerance above and pick the same tokens. */
function assertClose(t: { diagnostic: (m: string) => void }, ours: Float32Array[], theirs: Float32Array[], what: string): void {
  const d = maxDiff(ours, theirs);
  const scale = Math.max(...theirs.map((r) => r.reduce((m, x) => Math.max(m, Math.abs(x)), 0)));
  t.diagnostic(`largest |Δlogit| ${what}: ${d.toExponential(2)} (largest |logit| ${scale.toFixed(1)})`);
  assert.ok(d <= REL_TOL * scale, `logits differ by ${d} > ${REL_TOL} × ${scale}`);
  const argmax = (r: Float32Array) => r.indexOf(Math.max(...r));
  assert.deepEqual(ours.map(argmax), theirs.map(argmax), 'same greedy token at every step');
}

const H = [{ l0: 0, l1: 2 }, { l0: 2, l1: 4 }];
const SPLITS: [string, LayerRange[] | undefined][] = [
  ['the same split', H],
  ['one stage', undefined],
  ['0:1,1:4', [{ l0: 0, l1: 1 }, { l0: 1, l1: 4 }]],
  ['0:3,3:4', [{ l0: 0, l1: 3 }, { l0: 3, l1: 4 }]],
];

describe('KV state export and import', () => {
  // the source: two sequences interleaved in the cache, one of them moved by seq_add (pending K-shift)
  const src = pipeline(H);
  prefill(src, 0, PROMPT.slice(0, 20));
  prefill(src, 1, PROMPT.slice(30, 50));
  prefill(src, 0, PROMPT.slice(20, 60));
  src.seqRemove(0, 10, 20);
  src.seqAdd(0, 20, -1, -10);
  const blobs = src.exportState(0);
  const [srcMin, srcMax] = [src.seqPosMin(0), src.seqPosMax(0)];
  const unmoved = continueDecoding(src, 0, NEXT); // the sequence where it is, never moved

  for (const [label, split] of SPLITS) {
    it(`into ${label}: decoding goes on exactly as if never moved`, (t) => {
      const dst = pipeline(split);
      prefill(dst, 3, PROMPT.slice(0, 7)); // the target is not empty
      dst.importState(blobs, 2);
      assert.equal(dst.seqPosMax(2), srcMax);
      assert.equal(dst.seqPosMin(2), srcMin);
      assertClose(t, continueDecoding(dst, 2, NEXT), unmoved, 'against the unmoved sequence');
    });
  }

  it('matches libllama moving the same sequence through its own state', (t) => {
    const a = LlamaReference.load(path, { nCtx: 256, nSeqMax: 2, threads: 2 });
    const b = LlamaReference.load(path, { nCtx: 256, nSeqMax: 2, threads: 2 });
    try {
      const fresh = pipeline(H);
      prefill(fresh, 0, PROMPT);
      a.decode(PROMPT.map((token, pos) => ({ token, pos, seq: 0, logits: pos === PROMPT.length - 1 })));
      b.stateSet(a.stateGet(0), 0);
      const moved = pipeline([{ l0: 0, l1: 1 }, { l0: 1, l1: 4 }]);
      moved.importState(fresh.exportState(0), 0);
      const ours = continueDecoding(moved, 0, NEXT);
      const theirs = NEXT.map((token, i) => b.decode([{ token, pos: PROMPT.length + i, seq: 0, logits: true }])[0]!);
      assertClose(t, ours, theirs, 'against libllama after llama_state_seq_get/set_data');
    } finally {
      a.dispose();
      b.dispose();
    }
  });

  const conversions = [['f16', 'q8_0', 32], ['q8_0', 'f16', 32], ['f16', 'q4_0', 32], ['f16', 'q8_0', 64], ['q8_0', 'f16', 64], ['q4_0', 'q8_0', 64]] as const;
  for (const [from, to, head] of conversions) {
    it(`converts ${from} rows into a ${to} cache on import (heads of ${head}${head === 64 ? ', quantized rows Hadamard-rotated' : ''})`, (t) => {
      const type = { f16: GgmlType.F16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 };
      const model = head === 64 ? wide : path;
      const source = pipeline(H, model, type[from]);
      prefill(source, 0, PROMPT);
      const moved = pipeline([{ l0: 0, l1: 1 }, { l0: 1, l1: 4 }], model, type[to]);
      moved.importState(source.exportState(0), 0);
      // the same tokens prefilled into a cache of the target type, and into the source's type
      const native = pipeline(H, model, type[to]);
      prefill(native, 0, PROMPT);
      const lMoved = continueDecoding(moved, 0, NEXT), lNative = continueDecoding(native, 0, NEXT), lSource = continueDecoding(source, 0, NEXT);
      // the moved sequence goes on about as close to where it came from as the same prompt cached
      // natively in the target type; converting rounds twice (the source's type, then the
      // target's), so we allow a quarter more than the target type's own error
      const dMoved = maxDiff(lMoved, lSource), dNative = maxDiff(lNative, lSource);
      t.diagnostic(`|Δlogit| from the ${from} source: moved ${dMoved.toExponential(2)}, a native ${to} cache ${dNative.toExponential(2)}`);
      assert.ok(dMoved <= 1.25 * dNative + 1e-3, `conversion error ${dMoved} exceeds 1.25 × a native ${to} cache's ${dNative}`);
    });
  }

  it('refuses corrupt, truncated and mismatched state and leaves the cache unchanged', () => {
    const dst = pipeline(H);
    prefill(dst, 1, PROMPT.slice(0, 9));
    const before = dst.stages.map((s) => s.cache.cells.used);
    const expectRefused = (bad: Uint8Array[], code: string) => {
      assert.throws(() => dst.importState(bad, 0), (e: unknown) => e instanceof KvStateError && e.code === code);
      assert.deepEqual(dst.stages.map((s) => s.cache.cells.used), before, `cache unchanged after ${code}`);
      assert.equal(dst.seqPosMax(0), -1);
    };
    const flipped = blobs[1]!.slice();
    flipped[flipped.length - 100]! ^= 1;
    expectRefused([blobs[0]!, flipped], 'checksum');
    expectRefused([blobs[0]!, blobs[1]!.subarray(0, blobs[1]!.length - 7)], 'truncated');
    expectRefused([blobs[0]!], 'layer_mismatch');
    const foreign = pipeline(H, other);
    prefill(foreign, 0, PROMPT.slice(0, 5));
    expectRefused(foreign.exportState(0), 'model_mismatch');
    assert.throws(() => dst.importState(blobs, 1), (e: unknown) => e instanceof KvStateError && e.code === 'conflict');
    assert.throws(() => dst.stages[1]!.cache.importState(blobs[0]!, 0), (e: unknown) => e instanceof KvStateError && e.code === 'layer_mismatch');
  });

  it('a target built from parts cut at other positions (merge) fills what it holds and takes new cells for the rest', (t) => {
    // The stage 0:4 of a target gets layers 0:2 in pieces of 16 positions and layers 2:4 in one
    // piece of 48: the second overlaps the first two in part. Strict import refuses it; merge
    // builds the whole sequence, which then decodes as the source does.
    const s = pipeline(H);
    prefill(s, 0, PROMPT.slice(0, 48));
    const dst = pipeline(undefined);
    const stage = dst.stages[0]!;
    const part = (p: Pipeline, i: number, p0: number, p1: number) => p.stages[i]!.cache.exportState(0, { p0, p1 });
    stage.cache.importState(part(s, 0, 0, 16), 0, { merge: true });
    stage.cache.importState(part(s, 0, 16, 32), 0, { merge: true });
    assert.throws(() => stage.cache.importState(part(s, 1, 0, 48), 0), (e: unknown) => e instanceof KvStateError && e.code === 'conflict');
    stage.cache.importState(part(s, 1, 0, 48), 0, { merge: true });
    stage.cache.importState(part(s, 0, 32, 48), 0, { merge: true });
    assert.equal(stage.cache.seqPosMax(0), 47);
    assert.equal(stage.cache.cells.seqCells(0), 48, 'one cell per position');
    assertClose(t, continueDecoding(dst, 0, NEXT), continueDecoding(s, 0, NEXT), 'after a merged import');
  });
});
