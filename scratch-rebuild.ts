import { LlamaReference, strataCacheDir } from '@strata/ggml';
import { Pipeline, prefill } from '@strata/model';
import { join } from 'node:path';
const model = process.argv[2] ?? join(strataCacheDir(), 'models', 'gemma-3-270m-q4_k_m.gguf');
const C = 16, P = 40, D = 48;
const prompt = (s: number) => Array.from({ length: P }, (_, t) => 100 + ((s * 7919 + t * 104729) % 20000));
// every other step has C-1 sequences: the shape changes each step
const active = (d: number) => (d % 2 === 0 ? C : C - 1);
function strata(vary: boolean): number {
  const p = Pipeline.open({ model, threads: 2, ctxSize: 8192 });
  for (let s = 0; s < C; s++) prefill(p, prompt(s), s);
  const pos = new Int32Array(C).fill(P);
  const t0 = performance.now();
  for (let d = 0; d < D; d++) {
    const n = vary ? active(d) : C;
    const seq = Int32Array.from({ length: n }, (_, s) => s);
    p.forward({ tokens: new Int32Array(n).fill(500), pos: Int32Array.from(seq, (s) => pos[s]!++), seq });
  }
  const ms = (performance.now() - t0) / D; p.dispose(); return ms;
}
function ref(vary: boolean): number {
  const r = LlamaReference.load(model, { nCtx: 8192, nBatch: 512, nSeqMax: C, threads: 2, kvUnified: true });
  for (let s = 0; s < C; s++) r.decode(prompt(s).map((token, i) => ({ token, pos: i, seq: s, logits: i === P - 1 })));
  const pos = new Int32Array(C).fill(P);
  const t0 = performance.now();
  for (let d = 0; d < D; d++) { const n = vary ? active(d) : C; r.decode(Array.from({ length: n }, (_, s) => ({ token: 500, pos: pos[s]!++, seq: s, logits: true }))); }
  const ms = (performance.now() - t0) / D; r.dispose(); return ms;
}
for (let rep = 0; rep < 2; rep++) console.log(`same shape: strata ${strata(false).toFixed(1)} llama ${ref(false).toFixed(1)} | shape changes: strata ${strata(true).toFixed(1)} llama ${ref(true).toFixed(1)} ms/step`);
