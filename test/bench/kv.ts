// KV cache figures: bytes per token per layer for each cache type (formula against what the
// backend allocated), prefix sharing (16 sequences on one 1,000-token prefix hold it once), and
// batched decode in one shared stream against one stream per sequence, each beside libllama.
import { GgmlType, LlamaReference, native } from '@strata/ggml';
import { Pipeline } from '@strata/model';
import { BENCH_SPEC, benchModel, median } from './common.ts';
import { MODEL_SPECS, modelOf } from './models.ts';

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
  return { perType, prefix: { used, unshared, prefillMs }, streams: runStreamsBench(threads, 3) };
}

/**
 * 8 sequences decoding together from 13-token prompts to 128 and to 300 positions, on the
 * models bench's 12-layer llama in Q8_0 (small layers: attention weighs most): ms per step with one
 * KV stream every sequence shares and with one stream per sequence, Strata and libllama
 * (kv_unified true / false) alternating, medians of `reps`.
 */
function runStreamsBench(threads: number, reps: number): Record<string, Record<string, number>> {
  const path = modelOf(MODEL_SPECS.find((s) => s.label === 'llama q8_0')!);
  const seqs = 8, prompt = 13, ctx = 4096;
  const tokAt = (s: number, i: number) => 100 + ((s * 131 + i * 7919) % 20000);
  const ours = { shared: Pipeline.open({ model: path, threads, ctxSize: ctx }), streams: Pipeline.open({ model: path, threads, ctxSize: ctx / seqs, kvStreams: seqs }) };
  const theirs = {
    shared: LlamaReference.load(path, { nCtx: ctx, nBatch: 512, threads, nSeqMax: seqs, kvUnified: true }),
    streams: LlamaReference.load(path, { nCtx: ctx, nBatch: 512, threads, nSeqMax: seqs, kvUnified: false }),
  };
  const strata = (p: Pipeline, steps: number) => {
    for (let s = 0; s < seqs; s++) p.seqRemove(s);
    for (let s = 0; s < seqs; s++) {
      const t = Int32Array.from({ length: prompt }, (_, i) => tokAt(s, i));
      p.forward({ tokens: t, pos: Int32Array.from(t, (_, i) => i), seq: new Int32Array(prompt).fill(s), outputs: Int32Array.of(prompt - 1) });
    }
    const t0 = performance.now();
    for (let k = 0; k < steps; k++) {
      p.forward({ tokens: Int32Array.from({ length: seqs }, (_, s) => tokAt(s, prompt + k)), pos: new Int32Array(seqs).fill(prompt + k), seq: Int32Array.from({ length: seqs }, (_, s) => s) });
    }
    return (performance.now() - t0) / steps;
  };
  const llama = (r: LlamaReference, steps: number) => {
    r.clear();
    for (let s = 0; s < seqs; s++) r.decode(Array.from({ length: prompt }, (_, i) => ({ token: tokAt(s, i), pos: i, seq: s, logits: i === prompt - 1 })));
    const t0 = performance.now();
    for (let k = 0; k < steps; k++) r.decode(Array.from({ length: seqs }, (_, s) => ({ token: tokAt(s, prompt + k), pos: prompt + k, seq: s, logits: true })));
    return (performance.now() - t0) / steps;
  };
  const out: Record<string, Record<string, number>> = {};
  try {
    console.log(`
batched decode: ${seqs} sequences from ${prompt}-token prompts, llama q8_0 (12 layers, n_embd 512), ms per step, medians of ${reps} alternating repetitions`);
    console.log(`${'positions'.padStart(9)} ${'strata shared'.padStart(14)} ${'libllama shared'.padStart(16)} ${'strata streams'.padStart(15)} ${'libllama streams'.padStart(17)}  speed vs libllama (streams)  streams / shared (strata)`);
    for (const steps of [128 - prompt, 300 - prompt]) {
      const m: Record<string, number[]> = { strataShared: [], llamaShared: [], strataStreams: [], llamaStreams: [] };
      for (let r = 0; r < reps; r++) {
        const order = r % 2 === 0 ? ['shared', 'streams'] as const : ['streams', 'shared'] as const;
        for (const kind of order) {
          const key = kind === 'shared' ? 'Shared' : 'Streams';
          if (r % 2 === 0) {
            m[`strata${key}`]!.push(strata(ours[kind], steps));
            m[`llama${key}`]!.push(llama(theirs[kind], steps));
          } else {
            m[`llama${key}`]!.push(llama(theirs[kind], steps));
            m[`strata${key}`]!.push(strata(ours[kind], steps));
          }
        }
      }
      const med = Object.fromEntries(Object.entries(m).map(([k, v]) => [k, median(v)]));
      out[String(prompt + steps)] = med;
      console.log(`${String(prompt + steps).padStart(9)} ${med.strataShared!.toFixed(1).padStart(14)} ${med.llamaShared!.toFixed(1).padStart(16)} ${med.strataStreams!.toFixed(1).padStart(15)} ${med.llamaStreams!.toFixed(1).padStart(17)}  ${(med.llamaStreams! / med.strataStreams!).toFixed(3).padStart(27)}  ${(med.strataStreams! / med.strataShared!).toFixed(3)}`);
    }
  } finally {
    for (const p of Object.values(ours)) p.dispose();
    for (const r of Object.values(theirs)) r.dispose();
  }
  return out;
}
