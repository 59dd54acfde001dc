// npm run bench -- --only models: prompt processing and generation of Strata against libllama
// driven directly (same build, threads, GGUF), for each architecture Strata builds and for the
// weight types people download (q4_K, q6_K, q8_0; a Q4_K_M file mixes q4_K with q6_K and others,
// these are each type alone), on synthetic models of one shape (12 layers, n_embd 512) with each
// architecture's own vocabulary. Medians of alternating repetitions; target ≥ 0.97 each.
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { strataCacheDir } from '@strata/ggml';
import { synthesize, type SynthOptions } from '@strata/model';
import { median } from './common.ts';
import { measureEngine, type EngineRow } from './engine.ts';

type Spec = Omit<SynthOptions, 'out' | 'seed'> & { label: string };

const SHAPE = { nLayer: 12, nEmbd: 512, nHead: 8, nHeadKv: 4, nFf: 1536, nCtxTrain: 4096 };

/** The models measured: every architecture in f16, then llama in each downloaded weight type. */
export const MODEL_SPECS: Spec[] = [
  { label: 'llama', arch: 'llama', ...SHAPE },
  { label: 'llama MoE 8×2', arch: 'llama', ...SHAPE, nFf: 512, nExpert: 8, nExpertUsed: 2 },
  { label: 'qwen2', arch: 'qwen2', ...SHAPE },
  { label: 'qwen3', arch: 'qwen3', ...SHAPE },
  { label: 'qwen3moe 8×2', arch: 'qwen3moe', ...SHAPE, nExpert: 8, nExpertUsed: 2, nFfExp: 512 },
  { label: 'gpt-oss 8×2 mxfp4', arch: 'gpt-oss', ...SHAPE, headDim: 64, nExpert: 8, nExpertUsed: 2, nFfExp: 512, slidingWindow: 128, expertType: 'mxfp4' },
  { label: 'phi3', arch: 'phi3', ...SHAPE },
  { label: 'gemma2', arch: 'gemma2', ...SHAPE, headDim: 64, slidingWindow: 256 },
  { label: 'gemma3', arch: 'gemma3', ...SHAPE, headDim: 64, slidingWindow: 256 },
  { label: 'exaone4', arch: 'exaone4', ...SHAPE },
  ...(['q8_0', 'q6_k', 'q4_k'] as const).map((type) => ({ label: `llama ${type}`, arch: 'llama' as const, ...SHAPE, type })),
];

/** The synthetic model of `spec`, made once into the model cache. */
export function modelOf(spec: Spec): string {
  const dir = join(strataCacheDir(), 'models');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `bench-${spec.label.replace(/[^a-z0-9]+/gi, '-')}-${spec.type ?? 'f16'}.gguf`);
  if (!existsSync(file)) {
    const { label: _label, ...o } = spec;
    synthesize({ ...o, seed: 97, out: `${file}.tmp` });
    // renamed when whole: an interrupted run leaves no half model behind
    renameSync(`${file}.tmp`, file);
  }
  return file;
}

/** Runs the bench; prints its table. */
export function runModelsBench(o: { threads: number; reps: number; pp: number; tg: number; filter: string[] }, step: (detail?: string) => void): EngineRow[] {
  const specs = MODEL_SPECS.filter((s) => o.filter.length === 0 || o.filter.some((f) => s.label.includes(f)));
  const rows: EngineRow[] = [];
  for (const spec of specs) rows.push(...measureEngine(modelOf(spec), spec.label, o, step));
  console.log(`\nmodels: ${SHAPE.nLayer} layers, n_embd ${SHAPE.nEmbd}, each architecture's vocabulary; median tok/s over ${o.reps} alternating repetitions, ratio = Strata / libllama (target ≥ 0.97)`);
  console.log(`${'model'.padEnd(18)} ${'test'.padEnd(6)} ${'strata tok/s'.padStart(13)} ${'libllama tok/s'.padStart(15)}  ratio`);
  for (const r of rows) {
    console.log(`${r.model.padEnd(18)} ${r.test.padEnd(6)} ${median(r.strata).toFixed(1).padStart(13)} ${median(r.llama).toFixed(1).padStart(15)}  ${(median(r.strata) / median(r.llama)).toFixed(3)}`);
  }
  return rows;
}
