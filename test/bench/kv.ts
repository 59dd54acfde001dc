// KV cache figures: bytes per token per layer for each cache type (formula against what the
// backend allocated), and prefix sharing: 16 sequences on one 1,000-token prefix hold it once.
import { GgmlType, native } from '@strata/ggml';
import { Pipeline } from '@strata/model';
import { BENCH_SPEC, benchModel } from './common.ts';

const TYPES = { f32: GgmlType.F32, f16: GgmlType.F16, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 } as const;

/** Prints the KV cache benchmark; returns its figures. */
export function runKvBench(threads: number): Record<string, unknown> {
  const path = benchModel('f16');
  const nEmbdKv = (BENCH_SPEC.nEmbd / BENCH_SPEC.nHead) * BENCH_SPEC.nHeadKv;
  const ctx = 2048;
  console.log(`\nKV bytes per token per layer (K + V), n_embd_kv ${nEmbdKv}, ${ctx} cells, ${BENCH_SPEC.nLayer} layers:`);
  const perType: Record<string, { formula: number; measured: number }> = {};
  for (const [name, type] of Object.entries(TYPES)) {
    const formula = 2 * native().ggml.ggml_row_size(type, nEmbdKv);
    const p = Pipeline.open({ model: path, threads, ctxSize: ctx, kvType: type });
    const measured = p.stages[0]!.cache.storage.bytes / (ctx * BENCH_SPEC.nLayer);
    p.dispose();
    perType[name] = { formula, measured };
    console.log(`  ${name.padEnd(5)} formula 2 × row_size(${name}, ${nEmbdKv}) = ${String(formula).padStart(5)} B   measured ${measured.toFixed(1).padStart(7)} B   ratio ${(measured / formula).toFixed(4)}`);
  }

  const prefixLen = 1000, seqs = 16, own = 8;
  const p = Pipeline.open({ model: path, threads, ctxSize: ctx });
  const prefix = Int32Array.from({ length: prefixLen }, (_, i) => 100 + ((i * 7919) % 20000));
  const t0 = performance.now();
  for (let i = 0; i < prefixLen; i += 512) {
    const n = Math.min(512, prefixLen - i);
    p.forward({ tokens: prefix.subarray(i, i + n), pos: Int32Array.from({ length: n }, (_, k) => i + k), seq: new Int32Array(n), outputs: Int32Array.of(n - 1) });
  }
  const prefillMs = performance.now() - t0;
  for (let s = 1; s < seqs; s++) p.seqCopy(0, s);
  for (let k = 0; k < own; k++) {
    p.forward({
      tokens: Int32Array.from({ length: seqs }, (_, s) => 1000 + s * 31 + k),
      pos: new Int32Array(seqs).fill(prefixLen + k),
      seq: Int32Array.from({ length: seqs }, (_, s) => s),
    });
  }
  const used = p.stages[0]!.cache.cells.used;
  const unshared = seqs * (prefixLen + own);
  p.dispose();
  console.log(`\nprefix sharing: ${seqs} sequences on one ${prefixLen}-token prefix (seq_cp), then ${own} tokens each:`);
  console.log(`  cells used ${used} (prefix once + ${seqs}×${own}); without sharing ${unshared}; ${(unshared / used).toFixed(1)}× fewer cells; prefill ${prefillMs.toFixed(0)} ms once instead of ${seqs}×`);
  return { perType, prefix: { used, unshared, prefillMs } };
}
