// strata model synth | info
import { GgmlType } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { ModelError, SUPPORTED_ARCHS, SYNTH_TYPES, balancedSplit, decodeCosts, formatRange, parseSplit, readHParams, stageTensors, synthesize, type Arch, type LayerRange, type SynthType } from '@strata/model';
import { Flags, parseArgs } from '../args.ts';
import { UsageError } from '../errors.ts';

/** `strata model synth --out F --arch llama|qwen2|qwen3|qwen2moe|qwen3moe|gpt-oss|phi3|exaone4|gemma2|gemma3 --n-layer N [--n-expert E --n-expert-used K] [--expert-type T] ...` */
export function modelSynth(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv));
  const arch = f.str('arch', 'llama')!;
  if (!(SUPPORTED_ARCHS as readonly string[]).includes(arch)) throw new UsageError(`--arch must be one of ${SUPPORTED_ARCHS.join(', ')}, got '${arch}'`);
  const type = f.str('type', 'f16')!.toLowerCase() as SynthType;
  if (!SYNTH_TYPES.includes(type)) throw new UsageError(`--type must be one of ${SYNTH_TYPES.join(', ')}, got '${type}'`);
  const expertType = f.str('expert-type')?.toLowerCase() as SynthType | undefined;
  if (expertType !== undefined && !SYNTH_TYPES.includes(expertType)) throw new UsageError(`--expert-type must be one of ${SYNTH_TYPES.join(', ')}, got '${expertType}'`);
  const nEmbd = f.int('n-embd', 256)!;
  const nHead = f.int('n-head', 8)!;
  const opts = {
    out: f.required('out'),
    arch: arch as Arch,
    nLayer: f.int('n-layer', 8)!,
    nEmbd,
    nHead,
    nHeadKv: f.int('n-head-kv', nHead)!,
    nFf: f.int('n-ff', nEmbd * 3)!,
    nCtxTrain: f.int('n-ctx-train', 4096)!,
    seed: f.int('seed', 42)!,
    type,
    headScale: f.num('head-scale', 12),
    vocab: f.str('vocab'),
    slidingWindow: f.int('sliding-window'),
    swaPattern: f.int('swa-pattern'),
    headDim: f.int('head-dim'),
    logitSoftcap: f.num('logit-softcap'),
    nExpert: f.int('n-expert'),
    nExpertUsed: f.int('n-expert-used'),
    nFfExp: f.int('n-ff-exp'),
    nFfShexp: f.int('n-ff-shexp'),
    expertType,
  };
  f.done();
  const t0 = performance.now();
  const params = synthesize(opts);
  out.write(`wrote ${opts.out}: ${opts.arch}, ${opts.nLayer} layers, ${(params / 1e6).toFixed(1)}M parameters, ${type} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
  return 0;
}

/** ggml's name of a tensor type (q4_K, bf16, ...). */
function typeName(type: number): string {
  const key = Object.entries(GgmlType).find(([, v]) => v === type)?.[0];
  return key ? key.toLowerCase().replace(/_k$/, '_K') : `type ${type}`;
}

/**
 * What one stage of a split loads (its tensors and their bytes, in all and by type) and what a
 * token reads there in a decode step (decodeCosts).
 */
function stageBytes(file: GgufFile, hp: ReturnType<typeof readHParams>, split: LayerRange[]) {
  const costs = decodeCosts(file, hp);
  return split.map((range) => {
    const tensors = stageTensors(file, hp, range);
    const byType: Record<string, number> = {};
    for (const t of tensors) byType[typeName(t.type)] = (byType[typeName(t.type)] ?? 0) + t.size;
    const decode = costs.layers.slice(range.l0, range.l1).reduce((a, b) => a + b, 0) + (range.l1 === hp.nLayer ? costs.head : 0);
    return { layers: formatRange(range), tensors: tensors.length, bytes: tensors.reduce((n, t) => n + t.size, 0), decodeBytes: Math.round(decode), byType };
  });
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

/** `strata model info --model F [--split 0:9,9:18 | --stages N] [--json]` */
export function modelInfo(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv, ['json']));
  const path = f.required('model');
  const split = f.str('split');
  const stagesWanted = f.int('stages');
  const json = f.bool('json');
  f.done();
  if (split && stagesWanted !== undefined) throw new UsageError('give --split or --stages, not both');
  const file = GgufFile.open(path);
  try {
    const hp = readHParams(file);
    const bytes = file.header.tensors.reduce((n, t) => n + t.size, 0);
    const ranges = split ? parseSplit(split, hp.nLayer) : stagesWanted !== undefined ? balancedSplit(decodeCosts(file, hp), stagesWanted) : undefined;
    const stages = ranges ? stageBytes(file, hp, ranges) : undefined;
    const info = { path, ...hp, tensors: file.header.tensors.length, tensorBytes: bytes };
    if (json) {
      out.write(`${JSON.stringify(stages ? { ...info, stages } : info)}\n`);
      return 0;
    }
    const w = Math.max(...Object.keys(info).map((k) => k.length));
    out.write(Object.entries(info).map(([k, v]) => `${k.padEnd(w)} ${v}`).join('\n') + '\n');
    if (stages) {
      out.write(`\nstage  layers  tensors  weights     read/token  by type\n`);
      stages.forEach((st, i) => {
        const types = Object.entries(st.byType).sort((a, b) => b[1] - a[1]).map(([t, b]) => `${t} ${mib(b)}`).join(', ');
        out.write(`${String(i).padStart(5)}  ${st.layers.padEnd(6)}  ${String(st.tensors).padStart(7)}  ${mib(st.bytes).padStart(10)}  ${mib(st.decodeBytes).padStart(10)}  ${types}\n`);
      });
    }
    return 0;
  } catch (err) {
    if (err instanceof ModelError && err.code === 'bad_split') throw new UsageError(`${split ? '--split' : '--stages'}: ${err.message}`);
    throw err;
  } finally {
    file.close();
  }
}
