// scratch: batched decode of C sequences, Strata Pipeline vs libllama (unified and per-seq streams)
import { LlamaReference, strataCacheDir } from '@strata/ggml';
import { Pipeline, prefill } from '@strata/model';
import { join } from 'node:path';
const model = process.argv[2] ?? join(strataCacheDir(), 'models', 'gemma-3-270m-q4_k_m.gguf');
const C = Number(process.argv[3] ?? 16), P = 40, D = 64;
const prompt = (s: number) => Array.from({ length: P }, (_, t) => 100 + ((s * 7919 + t * 104729) % 20000));
function strata(): number {
  const p = Pipeline.open({ model, threads: 2, ctxSize: 8192 });
  for (let s = 0; s < C; s++) prefill(p, prompt(s), s);
  const tok = new Int32Array(C).fill(500), pos = new Int32Array(C), seq = Int32Array.from({ length: C }, (_, s) => s);
  const t0 = performance.now();
  for (let d = 0; d < D; d++) { pos.fill(P + d); p.forward({ tokens: tok, pos, seq }); }
  const ms = (performance.now() - t0) / D; p.dispose(); return ms;
}
function ref(unified: boolean): number {
  const r = LlamaReference.load(model, { nCtx: 8192, nBatch: 512, nSeqMax: C, threads: 2, kvUnified: unified });
  for (let s = 0; s < C; s++) r.decode(prompt(s).map((token, i) => ({ token, pos: i, seq: s, logits: i === P - 1 })));
  const t0 = performance.now();
  for (let d = 0; d < D; d++) r.decode(Array.from({ length: C }, (_, s) => ({ token: 500, pos: P + d, seq: s, logits: true })));
  const ms = (performance.now() - t0) / D; r.dispose(); return ms;
}
for (let rep = 0; rep < 2; rep++) console.log(`C=${C}: strata ${strata().toFixed(1)} ms/step, llama unified ${ref(true).toFixed(1)}, llama per-seq ${ref(false).toFixed(1)}`);
