// One model's engine against libllama, as llama-bench measures them: prompt processing (one
// `pp`-token batch into an empty cache) and generation (`tg` tokens one at a time from an empty
// cache), Strata's one-stage Pipeline against libllama driven directly on the same GGUF, build
// and threads, in alternating repetitions.
import { LlamaReference } from '@strata/ggml';
import { Pipeline } from '@strata/model';

/** tokens/s of both sides over the repetitions, for one test (pp512, tg128, …). */
export interface EngineRow { model: string; test: string; strata: number[]; llama: number[] }

function timeIt(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

/**
 * Measures `path` (labelled `model`): its pp and tg rows. The repetitions are spread over
 * `instances` fresh pairs of both sides (3 by default): where a side's buffers land is fixed for
 * the life of one instance and moves its figures by several per cent either way (the same llama
 * f16 model gave 0.92 and then 1.06 in two instances, one after the other), so medians over one
 * instance's repetitions measure that placement as much as the code. `step` is told after each
 * instance's warm-up and each repetition.
 */
export function measureEngine(path: string, model: string, o: { threads: number; pp: number; tg: number; reps: number; device?: string; instances?: number }, step: (detail?: string) => void): EngineRow[] {
  const pp: EngineRow = { model, test: `pp${o.pp}`, strata: [], llama: [] };
  const tg: EngineRow = { model, test: `tg${o.tg}`, strata: [], llama: [] };
  const instances = Math.max(1, Math.min(o.instances ?? 3, o.reps));
  let r = 0;
  for (let k = 0; k < instances; k++) {
    const reps = Math.floor(o.reps / instances) + (k < o.reps % instances ? 1 : 0);
    measureInstance(path, model, o, reps, r, pp, tg, step);
    r += reps;
  }
  return [pp, tg];
}

/** One instance of both sides: a warm-up, then `reps` alternating repetitions (numbered from `r0`) added to `pp` and `tg`. */
function measureInstance(path: string, model: string, o: { threads: number; pp: number; tg: number; reps: number; device?: string }, reps: number, r0: number, pp: EngineRow, tg: EngineRow, step: (detail?: string) => void): void {
  // Off the CPU both sides run every layer on the device (libllama: every layer offloaded).
  const onDevice = (o.device ?? 'CPU') !== 'CPU';
  // (room for the longest prompt asked, in whole 256-cell pages)
  const ctx = Math.max(1024, Math.ceil((o.pp + o.tg) / 256) * 256);
  const ref = LlamaReference.load(path, { nCtx: ctx, nBatch: o.pp, threads: o.threads, gpuLayers: onDevice ? 999 : 0 });
  const p = Pipeline.open({ model: path, threads: o.threads, ctxSize: ctx, device: o.device });
  try {
    const nVocab = p.hp.nVocab;
    const prompt = Int32Array.from({ length: o.pp }, (_, i) => 100 + ((i * 7919) % Math.min(20000, nVocab - 100)));
    const strataPp = () => {
      p.seqRemove(0);
      p.forward({ tokens: prompt, pos: Int32Array.from(prompt, (_, i) => i), seq: new Int32Array(prompt.length), outputs: Int32Array.of(prompt.length - 1) });
    };
    const llamaPp = () => {
      ref.clear();
      ref.decodeTokens(prompt, 0);
    };
    const tok = new Int32Array(1), pos = new Int32Array(1), seq = new Int32Array(1);
    const strataTg = () => {
      p.seqRemove(0);
      for (let i = 0; i < o.tg; i++) {
        tok[0] = prompt[i % prompt.length]!;
        pos[0] = i;
        p.forward({ tokens: tok, pos, seq });
      }
    };
    const llamaTg = () => {
      ref.clear();
      for (let i = 0; i < o.tg; i++) ref.decodeTokens(prompt.subarray(i % prompt.length, (i % prompt.length) + 1), i);
    };
    // Warm-up: a few prompts each, so that the JavaScript around Strata's graph (the mask, the
    // inputs) is optimized by V8 before it is timed, which one call does not do.
    for (let i = 0; i < 3; i++) {
      strataPp();
      llamaPp();
    }
    strataTg(); llamaTg();
    step(`${model} warm-up`);
    for (let r = r0; r < r0 + reps; r++) {
      // alternate the order so that drift of the machine hits both sides alike
      const first = r % 2 === 0;
      for (const side of first ? ['llama', 'strata'] : ['strata', 'llama']) {
        if (side === 'llama') pp.llama.push((o.pp * 1000) / timeIt(llamaPp));
        else pp.strata.push((o.pp * 1000) / timeIt(strataPp));
      }
      for (const side of first ? ['strata', 'llama'] : ['llama', 'strata']) {
        if (side === 'llama') tg.llama.push((o.tg * 1000) / timeIt(llamaTg));
        else tg.strata.push((o.tg * 1000) / timeIt(strataTg));
      }
      step(`${model} repetition ${r + 1}/${o.reps}`);
    }
  } finally {
    p.dispose();
    ref.dispose();
  }
}
