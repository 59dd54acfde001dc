import { Sampler, Vocab, strataCacheDir } from '@strata/ggml';
import { join } from 'node:path';
const model = join(strataCacheDir(), 'models', 'gemma-3-270m-q4_k_m.gguf');
const vocab = Vocab.load(model);
const n = 262144;
const row = new Float32Array(n); for (let i = 0; i < n; i++) row[i] = Math.sin(i * 12.9898) * 5;
for (const [name, o] of [['greedy', { temperature: 0 }], ['default chat', { temperature: 1, topK: 40, topP: 0.95, minP: 0.05, seed: 1 }]] as const) {
  const s = Sampler.create(n, o, vocab);
  for (let i = 0; i < 10; i++) s.sample(row);
  const t0 = performance.now(); for (let i = 0; i < 100; i++) s.sample(row);
  console.log(name, ((performance.now() - t0) / 100).toFixed(3), 'ms per sample');
  let t1 = performance.now(); for (let i = 0; i < 100; i++) vocab.isEog(5); console.log('isEog', ((performance.now() - t1) / 100 * 1000).toFixed(2), 'us');
}
