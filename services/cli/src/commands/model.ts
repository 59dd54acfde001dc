// strata model synth | info
import { GgufFile } from '@strata/gguf';
import { SUPPORTED_ARCHS, SYNTH_TYPES, readHParams, synthesize, type Arch, type SynthType } from '@strata/model';
import { Flags, parseArgs } from '../args.ts';
import { UsageError } from '../errors.ts';

/** `strata model synth --out F --arch llama|qwen2|qwen3|phi3|exaone4|gemma2|gemma3 --n-layer N ...` */
export function modelSynth(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv));
  const arch = f.str('arch', 'llama')!;
  if (!(SUPPORTED_ARCHS as readonly string[]).includes(arch)) throw new UsageError(`--arch must be one of ${SUPPORTED_ARCHS.join(', ')}, got '${arch}'`);
  const type = f.str('type', 'f16')!.toLowerCase() as SynthType;
  if (!SYNTH_TYPES.includes(type)) throw new UsageError(`--type must be one of ${SYNTH_TYPES.join(', ')}, got '${type}'`);
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
  };
  f.done();
  const t0 = performance.now();
  const params = synthesize(opts);
  out.write(`wrote ${opts.out}: ${opts.arch}, ${opts.nLayer} layers, ${(params / 1e6).toFixed(1)}M parameters, ${type} (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
  return 0;
}

/** `strata model info --model F [--json]` */
export function modelInfo(argv: string[], out: NodeJS.WritableStream): number {
  const f = new Flags(parseArgs(argv, ['json']));
  const path = f.required('model');
  const json = f.bool('json');
  f.done();
  const file = GgufFile.open(path);
  try {
    const hp = readHParams(file);
    const bytes = file.header.tensors.reduce((n, t) => n + t.size, 0);
    const info = { path, ...hp, tensors: file.header.tensors.length, tensorBytes: bytes };
    const w = Math.max(...Object.keys(info).map((k) => k.length));
    out.write(json ? `${JSON.stringify(info)}\n` : Object.entries(info).map(([k, v]) => `${k.padEnd(w)} ${v}`).join('\n') + '\n');
    return 0;
  } finally {
    file.close();
  }
}
