// npm run bench: Strata against libllama on the same synthetic ~134M llama, same ggml build and
// threads, side by side. Prompt processing (one 512-token batch) and generation (128 tokens, one
// at a time from an empty cache), as llama.cpp's llama-bench measures pp512 and tg128. The
// reference is libllama driven directly (batches into llama_decode). Prints Strata/llama.cpp.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { format } from 'node:util';
import { Sampler, loadNative, loadOptionsFromEnv, strataCacheDir } from '@strata/ggml';
import { measureEngine, type EngineRow } from './engine.ts';
import { runModelsBench } from './models.ts';
import { benchModel, median, parseBenchArgs, std } from './common.ts';
import { runClusterBench } from './cluster.ts';
import { runGrammarBench } from './grammar.ts';
import { runKvBench } from './kv.ts';
import { runLoadBench } from './load.ts';
import { runMigrationBench } from './migration.ts';
import { runResponsiveBench } from './responsive.ts';
import { runPrefixBench } from './prefix.ts';
import { runServingBench } from './serving.ts';
import { runScaleBench } from './scale.ts';
import { runNetworkBench } from './network.ts';
import { runKvBandwidthBench } from './kv-bandwidth.ts';
import { Progress } from '../../services/cli/src/format.ts';
import { measureQuiet, sayQuiet } from './quiet.ts';

const opts = parseBenchArgs(process.argv.slice(2));
const native = loadNative(loadOptionsFromEnv());
console.log(`ggml: ${native.libs.kind} build (${native.libs.dir}), threads ${opts.threads}, ${opts.reps} repetitions`);
// A figure only counts from a quiet machine: said before and after, loudly when it is not.
const quietBefore = await measureQuiet();
sayQuiet(quietBefore, 'before');

const rows: EngineRow[] = [];

/**
 * Runs one section under a bar of its own on stderr (a terminal; plain lines otherwise): `steps`
 * counted by the `step` it is handed, or only the elapsed time when 0. While the bar shows and
 * stdout is the terminal too, the section's console.log lines print above it.
 */
async function section<T>(name: string, steps: number, fn: (step: (detail?: string) => void) => T | Promise<T>): Promise<T> {
  const bar = new Progress({ label: `bench ${name}`, total: steps, unit: steps > 0 ? 'steps' : undefined });
  let done = 0;
  bar.update(0);
  const log = console.log;
  if (bar.tty && process.stdout.isTTY) console.log = (...args: unknown[]) => bar.log(format(...args), process.stdout);
  // Asynchronous sections leave the event loop free: the elapsed time keeps moving.
  const tick = setInterval(() => bar.update(done), 250);
  try {
    return await fn((detail) => bar.update(++done, detail));
  } finally {
    clearInterval(tick);
    console.log = log;
    bar.finish();
  }
}

function engineBench(step: (detail?: string) => void): void {
  for (const type of opts.types) rows.push(...measureEngine(benchModel(type), type, opts, step));
}

function printEngine(): void {
const fmt = (xs: number[]) => `${median(xs).toFixed(1).padStart(7)} ± ${std(xs).toFixed(1).padStart(5)}`;
console.log(`\nmedian tok/s ± std over ${opts.reps} alternating repetitions; ratio = median Strata / median llama.cpp`);
console.log(`${'model'.padEnd(22)} ${'test'.padEnd(6)} ${'strata tok/s'.padStart(16)} ${'llama.cpp tok/s'.padStart(16)}  ratio`);
for (const r of rows) {
  const ratio = median(r.strata) / median(r.llama);
  console.log(`${`llama 134M ${r.model}`.padEnd(22)} ${r.test.padEnd(6)} ${fmt(r.strata)} ${fmt(r.llama)}  ${ratio.toFixed(3)}`);
}
}

// Sampling must cost a small fraction of a decode step: libllama's chain on a 32000-token row.
function samplingBench(sampling: Record<string, number>): void {
const nVocab = 32000;
const row = new Float32Array(nVocab);
for (let i = 0; i < nVocab; i++) row[i] = 12 * Math.sin(i * 12.9898) * Math.cos(i * 78.233);
const stepMs = 1000 / median(rows.find((r) => r.test.startsWith('tg'))!.strata);
for (const [name, o] of [
  ['greedy', { temperature: 0 }],
  ['top-k 40, top-p 0.95, min-p 0.05, temp 0.8, penalties', { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1.1, seed: 1 }],
  ['temp 0.8 over the whole vocabulary', { temperature: 0.8, seed: 1 }],
] as const) {
  const sm = Sampler.create(nVocab, o);
  for (let i = 0; i < 20; i++) sm.sample(row);
  const t0 = performance.now();
  for (let i = 0; i < 300; i++) sm.sample(row);
  sampling[name] = ((performance.now() - t0) / 300) * 1000;
  sm.dispose();
}
console.log(`\nsampling a ${nVocab}-token row (libllama's chain), against a ${stepMs.toFixed(2)} ms decode step:`);
for (const [name, us] of Object.entries(sampling)) {
  console.log(`  ${name.padEnd(54)} ${us.toFixed(1).padStart(7)} µs  ${((us / 1000 / stepMs) * 100).toFixed(2)}% of a step`);
}

}

const sampling: Record<string, number> = {};
if (opts.only.has('engine')) {
  for (const type of opts.types) benchModel(type);
  await section('engine', opts.types.length * (opts.reps + Math.min(3, opts.reps)), (step) => engineBench(step));
  printEngine();
  samplingBench(sampling);
}
const models = opts.only.has('models')
  ? await section('models', 0, (step) => runModelsBench({ threads: opts.threads, reps: opts.modelsReps, pp: opts.modelsPp, tg: opts.modelsTg, filter: opts.models }, step))
  : null;
const kv = opts.only.has('kv') ? await section('kv', 0, () => runKvBench(opts.threads)) : null;
const clusterModel = opts.only.has('cluster') ? benchModel('f16') : '';
const cluster = opts.only.has('cluster') ? await section('cluster', 0, () => runClusterBench(clusterModel, Math.max(1, Math.min(opts.reps, 3)))) : null;
const migration = opts.only.has('migration') ? await section('migration', 5, (step) => runMigrationBench(step)) : null;
const load = opts.only.has('load') ? await section('load', 0, () => runLoadBench()) : null;
const responsive = opts.only.has('responsive') ? await section('responsive', 8, (step) => runResponsiveBench(step)) : null;
const grammar = opts.only.has('grammar') ? await section('grammar', 0, () => runGrammarBench()) : null;
const servingModel = opts.servingModel || join(strataCacheDir(), 'models', 'gemma-3-270m-q4_k_m.gguf');
const serving = opts.only.has('serving')
  ? await section('serving', 1 + opts.clients.length * opts.servingReps, (step) => runServingBench({
    model: servingModel, threads: opts.threads, clients: opts.clients, reps: opts.servingReps, tokens: opts.servingTokens, strata: opts.servingStrata, coordinatorFlags: opts.servingFlags, workerFlags: opts.servingWorkerFlags, endpoint: opts.servingEndpoint, split: opts.servingSplit, kv: opts.servingKv,
  }, step))
  : null;
const prefix = opts.only.has('prefix')
  ? await section('prefix', 2 + 5 * opts.prefixReps, (step) => runPrefixBench({
    model: servingModel, threads: opts.threads, clients: opts.prefixClients, systemSentences: opts.prefixSentences, reps: opts.prefixReps, parts: opts.prefixParts, longPrompt: opts.longPrompt,
  }, step))
  : null;
const scale = opts.only.has('scale')
  ? await section('scale', 0, () => runScaleBench({
    pipelines: opts.scalePipelines, stages: opts.scaleStages, sessions: opts.scaleSessions, sessionConcurrency: opts.scaleConcurrency,
    sweep: opts.scaleSweep, sweepSeconds: opts.scaleSeconds, stepBaseMs: opts.scaleStepMs, stepPerTokenMs: opts.scaleStepTokenMs,
    promptTokens: 16, genTokens: 16,
  }))
  : null;
const network = opts.only.has('network')
  ? await section('network', 0, () => runNetworkBench({ sessions: opts.networkSessions, latencyMs: opts.networkLatencyMs, reps: 3, tokens: 64 }))
  : null;
const kvBandwidth = opts.only.has('kv-bandwidth')
  ? await section('kv-bandwidth', 1 + opts.kvMbits.length * opts.kvReps, (step) => runKvBandwidthBench({ promptTokens: opts.kvPrompt, mbits: opts.kvMbits, reps: opts.kvReps }, step))
  : null;

const quietAfter = await measureQuiet();
sayQuiet(quietAfter, 'after');

const out = join(process.cwd(), '.bench');
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'engine.json'), JSON.stringify({ date: new Date().toISOString(), quiet: { before: quietBefore, after: quietAfter }, native: native.libs, threads: opts.threads, rows, samplingUs: sampling, models, kv, cluster, migration, load, responsive, grammar, serving, prefix, scale, network, kvBandwidth }, null, 2));
