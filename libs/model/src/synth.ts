// Synthetic llama/qwen2/qwen3/phi3/exaone4/gemma2/gemma3/MoE/gpt-oss models: seeded random weights with a real tokenizer vocabulary (copied
// from the snapshot's vocab GGUFs), a file libllama loads and runs. The output head is scaled so
// that next-token choices are clear rather than near ties.
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { GgufFile, kvF32, kvStr, kvU32, writeGguf, type GgufKv, type TensorSpec } from '@strata/gguf';
import { GgmlType, encodeF32, strataCacheDir, vocabDir } from '@strata/ggml';
import { ModelError } from './errors.ts';
import type { Arch } from './hparams.ts';

/** What to synthesize. */
export interface SynthOptions {
  out: string;
  arch: Arch;
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  nFf: number;
  nCtxTrain: number;
  seed: number;
  /** type of the 2-D weights (default f16) */
  type?: SynthType;
  /** std of the logits the head produces (default 12) */
  headScale?: number;
  /** vocabulary GGUF (default: the snapshot's qwen2 for qwen2 and qwen3, llama-spm for the others) */
  vocab?: string;
  /** write RoPE frequency factors (rope_freqs.weight, as llama 3.1 files carry) */
  ropeFreqs?: boolean;
  /** attention.sliding_window (exaone4: libllama windows a 64-layer exaone4 only; gemma3: any) */
  slidingWindow?: number;
  /** gemma3: attention.sliding_window_pattern (every n-th layer attends to everything; libllama's default 6) */
  swaPattern?: number;
  /** per-head dimension of K and V when it is not n_embd / n_head (attention.key_length; gemma3's 270M: 256 at n_embd 640) */
  headDim?: number;
  /** gemma2: attn_logit_softcapping (absent: libllama's 50) */
  attnSoftcap?: number;
  /** gemma2, gemma3: final_logit_softcapping (0 or absent: none for gemma3, libllama's 30 for gemma2) */
  logitSoftcap?: number;
  /**
   * a mixture of experts (llama: Mixtral's shape, experts nFf wide; qwen3moe: required, experts
   * nFfExp wide): experts per layer and experts each token uses
   */
  nExpert?: number;
  nExpertUsed?: number;
  /**
   * RoPE scaling metadata (`rope.scaling.type`, `.factor`, `.original_context_length`,
   * `.attn_factor`): yarn as Qwen and others extend their context, or linear
   */
  ropeScaling?: { type: 'yarn' | 'linear'; factor: number; originalContext?: number; attnFactor?: number };
  /** qwen3moe, qwen2moe: an expert's FFN width (expert_feed_forward_length) */
  nFfExp?: number;
  /** qwen2moe: the shared expert's width (expert_shared_feed_forward_length; default n_ff) */
  nFfShexp?: number;
  /** llama experts without a gate (SiLU of the up projection alone, as libllama allows) */
  noExpertGate?: boolean;
  /** type of the experts' weights when it is not `type` (gpt-oss ships MXFP4 experts) */
  expertType?: SynthType;
  /** called after each tensor with the parameters written so far and in all (a progress bar) */
  onProgress?: (done: number, total: number) => void;
}

const WEIGHT_TYPES = {
  f32: GgmlType.F32, f16: GgmlType.F16, bf16: GgmlType.BF16, q8_0: GgmlType.Q8_0, q5_0: GgmlType.Q5_0, q4_0: GgmlType.Q4_0,
  q6_k: GgmlType.Q6_K, q5_k: GgmlType.Q5_K, q4_k: GgmlType.Q4_K, q3_k: GgmlType.Q3_K, q2_k: GgmlType.Q2_K, iq4_nl: GgmlType.IQ4_NL, iq4_xs: GgmlType.IQ4_XS,
  mxfp4: GgmlType.MXFP4,
  iq3_s: GgmlType.IQ3_S, iq3_xxs: GgmlType.IQ3_XXS, iq2_s: GgmlType.IQ2_S, iq2_xs: GgmlType.IQ2_XS, iq2_xxs: GgmlType.IQ2_XXS, iq1_m: GgmlType.IQ1_M, iq1_s: GgmlType.IQ1_S,
} as const;
// llama_ftype of a file whose matrices are all of the type (the _M mixes' numbers for k-quants)
const FILE_TYPES = { f32: 0, f16: 1, bf16: 32, q8_0: 7, q5_0: 8, q4_0: 2, q6_k: 18, q5_k: 17, q4_k: 15, q3_k: 12, q2_k: 10, iq4_nl: 25, iq4_xs: 30, mxfp4: 38,
  iq3_s: 26, iq3_xxs: 23, iq2_s: 28, iq2_xs: 20, iq2_xxs: 19, iq1_m: 31, iq1_s: 24 } as const;
const BLOCK = { f32: 1, f16: 1, bf16: 1, q8_0: 32, q5_0: 32, q4_0: 32, q6_k: 256, q5_k: 256, q4_k: 256, q3_k: 256, q2_k: 256, iq4_nl: 32, iq4_xs: 256, mxfp4: 32,
  iq3_s: 256, iq3_xxs: 256, iq2_s: 256, iq2_xs: 256, iq2_xxs: 256, iq1_m: 256, iq1_s: 256 } as const;

/** Weight types `synthesize` writes. */
export type SynthType = keyof typeof WEIGHT_TYPES;
/** Every weight type `synthesize` writes. */
export const SYNTH_TYPES = Object.keys(WEIGHT_TYPES) as SynthType[];

/** Seeded generator of normal deviates (mulberry32 + Box-Muller). */
export class Rng {
  #s: number;
  #spare: number | null = null;
  constructor(seed: number) { this.#s = seed >>> 0; }
  uniform(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  normal(): number {
    if (this.#spare !== null) { const v = this.#spare; this.#spare = null; return v; }
    const u = 1 - this.uniform(), v = this.uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    this.#spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
  fill(n: number, mean: number, std: number): Float32Array {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = mean + std * this.normal();
    return a;
  }
}

/** Default vocabulary file for an architecture. */
export function defaultVocab(arch: Arch): string {
  const file = join(vocabDir(), arch === 'qwen2' || arch === 'qwen3' || arch === 'qwen3moe' || arch === 'qwen2moe' ? 'ggml-vocab-qwen2.gguf' : 'ggml-vocab-llama-spm.gguf');
  if (!existsSync(file)) {
    throw new ModelError('missing_vocab', `vocabulary ${file} is missing: run \`npm run build:native\` (it extracts the vocabularies from node-llama-cpp's llama.cpp snapshot; needs git)`);
  }
  return file;
}

function validate(o: SynthOptions): void {
  const ints: (keyof SynthOptions)[] = ['nLayer', 'nEmbd', 'nHead', 'nHeadKv', 'nFf', 'nCtxTrain'];
  for (const k of ints) {
    const v = o[k] as number;
    if (!Number.isInteger(v) || v < 1) throw new ModelError('bad_input', `${k} must be a positive integer, got ${v}`);
  }
  if (o.headDim === undefined && o.nEmbd % o.nHead !== 0) throw new ModelError('bad_input', `n_embd ${o.nEmbd} is not a multiple of n_head ${o.nHead}`);
  if (o.headDim !== undefined && (!Number.isInteger(o.headDim) || o.headDim < 2)) throw new ModelError('bad_input', `head dimension ${o.headDim} is invalid`);
  if (o.headDim !== undefined && o.arch === 'llama' && o.headDim !== o.nEmbd / o.nHead) throw new ModelError('bad_input', 'llama needs head dimension n_embd / n_head (libllama checks it)');
  if (o.nHead % o.nHeadKv !== 0) throw new ModelError('bad_input', `n_head ${o.nHead} is not a multiple of n_head_kv ${o.nHeadKv}`);
  if ((o.headDim ?? o.nEmbd / o.nHead) % 2 !== 0) throw new ModelError('bad_input', 'head dimension must be even (RoPE rotates pairs)');
  const type = o.type ?? 'f16';
  if (!(type in WEIGHT_TYPES)) throw new ModelError('bad_input', `weight type ${type} is not one of ${SYNTH_TYPES.join(', ')}`);
  const block = BLOCK[type];
  if (o.nEmbd % block !== 0 || o.nFf % block !== 0 || ((o.headDim ?? 0) * o.nHead) % block !== 0 || (o.nFfExp ?? 0) % block !== 0) {
    throw new ModelError('bad_input', `${type} needs n_embd, n_ff, n_ff_exp and head_dim × n_head to be multiples of ${block}`);
  }
  const moe = o.nExpert !== undefined || o.arch === 'qwen3moe' || o.arch === 'qwen2moe' || o.arch === 'gpt-oss';
  if (moe && (o.arch !== 'llama' && o.arch !== 'qwen3moe' && o.arch !== 'qwen2moe' && o.arch !== 'gpt-oss')) throw new ModelError('bad_input', `experts only for llama, qwen2moe, qwen3moe and gpt-oss, not ${o.arch}`);
  if (o.arch === 'gpt-oss' && !o.slidingWindow) throw new ModelError('bad_input', 'gpt-oss needs a sliding window (attention.sliding_window)');
  const et = o.expertType ?? type;
  if (!(et in WEIGHT_TYPES)) throw new ModelError('bad_input', `expert type ${et} is not one of ${SYNTH_TYPES.join(', ')}`);
  if (o.nEmbd % BLOCK[et] !== 0 || (o.nFfExp ?? o.nFf) % BLOCK[et] !== 0) throw new ModelError('bad_input', `${et} experts need n_embd and n_ff_exp to be multiples of ${BLOCK[et]}`);
  if (moe && !(Number.isInteger(o.nExpert) && Number.isInteger(o.nExpertUsed) && o.nExpertUsed! >= 1 && o.nExpertUsed! <= o.nExpert!)) {
    throw new ModelError('bad_input', `a mixture of experts needs nExpert and 1 ≤ nExpertUsed ≤ nExpert, got ${o.nExpert} and ${o.nExpertUsed}`);
  }
}

/** Writes a synthetic model; returns the number of parameters. */
export function synthesize(o: SynthOptions): number {
  validate(o);
  const vocabPath = o.vocab ?? defaultVocab(o.arch);
  const vf = GgufFile.open(vocabPath);
  const tokenizer: GgufKv[] = [...vf.header.kv.values()].filter((kv) => kv.key.startsWith('tokenizer.'));
  vf.close();
  const tokens = tokenizer.find((kv) => kv.key === 'tokenizer.ggml.tokens');
  if (!tokens) throw new ModelError('missing_vocab', `${vocabPath} has no tokenizer.ggml.tokens`);
  const nVocab = (tokens.value as string[]).length;
  if (!tokenizer.some((kv) => kv.key === 'tokenizer.chat_template')) tokenizer.push(kvStr('tokenizer.chat_template', 'chatml'));

  const a = o.arch, type = o.type ?? 'f16', wt = WEIGHT_TYPES[type], et = WEIGHT_TYPES[o.expertType ?? type];
  const gptOss = a === 'gpt-oss';
  const hd = o.headDim ?? o.nEmbd / o.nHead, q = hd * o.nHead, kv = hd * o.nHeadKv;
  const gemma = a === 'gemma3' || a === 'gemma2';
  const qwen = a === 'qwen2' || a === 'qwen3' || a === 'qwen3moe' || a === 'qwen2moe';
  const moe = o.nExpert !== undefined;
  const ffExp = a === 'qwen3moe' || a === 'qwen2moe' || gptOss ? o.nFfExp ?? Math.floor(o.nFf / o.nExpertUsed!) : o.nFf;
  const ffShexp = a === 'qwen2moe' ? o.nFfShexp ?? o.nFf : 0;
  const kvs: GgufKv[] = [
    kvStr('general.architecture', a),
    // (libllama gives tokens of a model named like Phi-3 attributes by their text, '<|endoftext|>'
    // among them, which the llama-spm vocabulary lacks: the name avoids it)
    kvStr('general.name', `strata-synth-${a === 'phi3' ? 'phi-three' : a}-${o.nLayer}x${o.nEmbd}-s${o.seed}`),
    kvU32('general.file_type', FILE_TYPES[o.expertType ?? type]),
    kvU32(`${a}.context_length`, o.nCtxTrain),
    kvU32(`${a}.embedding_length`, o.nEmbd),
    kvU32(`${a}.block_count`, o.nLayer),
    kvU32(`${a}.feed_forward_length`, o.nFf),
    kvU32(`${a}.attention.head_count`, o.nHead),
    kvU32(`${a}.attention.head_count_kv`, o.nHeadKv),
    kvU32(`${a}.rope.dimension_count`, hd),
    ...(o.headDim !== undefined ? [kvU32(`${a}.attention.key_length`, hd), kvU32(`${a}.attention.value_length`, hd)] : []),
    // gemma3 as Google ships it: a global base of 1e6, 1e4 on the windowed layers (gemma2: 1e4 on all)
    kvF32(`${a}.rope.freq_base`, qwen || a === 'gemma3' ? 1000000 : gptOss ? 150000 : 10000),
    ...(a === 'gemma3' && o.slidingWindow ? [kvF32(`${a}.rope.freq_base_swa`, 10000)] : []),
    ...(a === 'gemma2' && o.attnSoftcap ? [kvF32(`${a}.attn_logit_softcapping`, o.attnSoftcap)] : []),
    kvF32(`${a}.attention.layer_norm_rms_epsilon`, qwen || gemma ? 1e-6 : 1e-5),
    ...(moe ? [kvU32(`${a}.expert_count`, o.nExpert!), kvU32(`${a}.expert_used_count`, o.nExpertUsed!)] : []),
    ...(o.ropeScaling ? [kvStr(`${a}.rope.scaling.type`, o.ropeScaling.type), kvF32(`${a}.rope.scaling.factor`, o.ropeScaling.factor)] : []),
    ...(o.ropeScaling?.originalContext ? [kvU32(`${a}.rope.scaling.original_context_length`, o.ropeScaling.originalContext)] : []),
    ...(o.ropeScaling?.attnFactor ? [kvF32(`${a}.rope.scaling.attn_factor`, o.ropeScaling.attnFactor)] : []),
    ...((a === 'qwen3moe' || a === 'qwen2moe') && o.nFfExp !== undefined ? [kvU32(`${a}.expert_feed_forward_length`, o.nFfExp)] : []),
    ...(gptOss ? [kvU32(`${a}.expert_feed_forward_length`, ffExp)] : []),
    ...(a === 'qwen2moe' && o.nFfShexp !== undefined ? [kvU32(`${a}.expert_shared_feed_forward_length`, o.nFfShexp)] : []),
    kvU32(`${a}.vocab_size`, nVocab),
    ...(o.slidingWindow ? [kvU32(`${a}.attention.sliding_window`, o.slidingWindow)] : []),
    ...(o.swaPattern !== undefined ? [kvU32(`${a}.attention.sliding_window_pattern`, o.swaPattern)] : []),
    ...(o.logitSoftcap ? [kvF32(`${a}.final_logit_softcapping`, o.logitSoftcap)] : []),
    ...tokenizer,
  ];
  // One deterministic generator per tensor, so a tensor's values depend only on (seed, name).
  type Spec = TensorSpec & { mean: number; std: number };
  const specs: Spec[] = [];
  const add = (name: string, ne: number[], t: number, mean: number, std: number) => specs.push({ name, type: t, ne, mean, std });
  const resid = 1 / Math.sqrt(2 * o.nLayer);
  // gemma3 multiplies the embeddings by √n_embd: rows of std 1/√n_embd come out at about 1
  add('token_embd.weight', [o.nEmbd, nVocab], wt, 0, gemma ? 1 / Math.sqrt(o.nEmbd) : 1);
  if (o.ropeFreqs) add('rope_freqs.weight', [hd / 2], GgmlType.F32, 2, 0.5);
  // exaone4 normalizes after attention and the FFN; gemma3 before and after both; those two and
  // qwen3 normalize Q and K per head
  const post = a === 'exaone4' || gemma, pre = a !== 'exaone4';
  for (let l = 0; l < o.nLayer; l++) {
    const p = `blk.${l}.`;
    if (a === 'exaone4' || a === 'gemma3' || a === 'qwen3' || a === 'qwen3moe') {
      add(`${p}attn_q_norm.weight`, [hd], GgmlType.F32, 1, 0.1);
      add(`${p}attn_k_norm.weight`, [hd], GgmlType.F32, 1, 0.1);
    }
    if (pre) add(`${p}attn_norm.weight`, [o.nEmbd], GgmlType.F32, 1, 0.1);
    // phi3 fuses Q/K/V into one projection, and the FFN's gate into its up projection (first half)
    if (a === 'phi3') add(`${p}attn_qkv.weight`, [o.nEmbd, q + 2 * kv], wt, 0, 1 / Math.sqrt(o.nEmbd));
    else {
      add(`${p}attn_q.weight`, [o.nEmbd, q], wt, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}attn_k.weight`, [o.nEmbd, kv], wt, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}attn_v.weight`, [o.nEmbd, kv], wt, 0, 1 / Math.sqrt(o.nEmbd));
    }
    if (a === 'qwen2' || a === 'qwen2moe' || gptOss) {
      add(`${p}attn_q.bias`, [q], GgmlType.F32, 0, 0.1);
      add(`${p}attn_k.bias`, [kv], GgmlType.F32, 0, 0.1);
      add(`${p}attn_v.bias`, [kv], GgmlType.F32, 0, 0.1);
    }
    add(`${p}attn_output.weight`, [q, o.nEmbd], wt, 0, resid / Math.sqrt(q));
    if (gptOss) {
      // the output projection's bias, a sink logit per head (near the scores' scale), and the
      // norm of the FFN's input (named post_attention_norm)
      add(`${p}attn_output.bias`, [o.nEmbd], GgmlType.F32, 0, 0.02);
      add(`${p}attn_sinks.weight`, [o.nHead], GgmlType.F32, 0, 1);
      add(`${p}post_attention_norm.weight`, [o.nEmbd], GgmlType.F32, 1, 0.1);
    }
    // exaone4 normalizes after attention and after the FFN; with a unit-ish scale there the
    // residual would grow by one per layer, so the post-norms are scaled like a residual branch
    if (post) add(`${p}post_attention_norm.weight`, [o.nEmbd], GgmlType.F32, resid, 0.1 * resid);
    if (pre && !gptOss) add(`${p}ffn_norm.weight`, [o.nEmbd], GgmlType.F32, 1, 0.1);
    if (moe) {
      // the router in f32, as converted files keep it; its logits of std ~2 make clear choices
      const e = o.nExpert!;
      add(`${p}ffn_gate_inp.weight`, [o.nEmbd, e], GgmlType.F32, 0, 2 / Math.sqrt(o.nEmbd));
      if (!o.noExpertGate) add(`${p}ffn_gate_exps.weight`, [o.nEmbd, ffExp, e], et, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}ffn_up_exps.weight`, [o.nEmbd, ffExp, e], et, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}ffn_down_exps.weight`, [ffExp, o.nEmbd, e], et, 0, resid / Math.sqrt(ffExp));
      if (gptOss) {
        add(`${p}ffn_gate_inp.bias`, [e], GgmlType.F32, 0, 0.5);
        add(`${p}ffn_gate_exps.bias`, [ffExp, e], GgmlType.F32, 0, 0.1);
        add(`${p}ffn_up_exps.bias`, [ffExp, e], GgmlType.F32, 0, 0.1);
        add(`${p}ffn_down_exps.bias`, [o.nEmbd, e], GgmlType.F32, 0, 0.1 * resid);
      }
      if (ffShexp > 0) {
        // the shared expert and its gate (a sigmoid of one projection, near 0.5)
        add(`${p}ffn_gate_inp_shexp.weight`, [o.nEmbd], GgmlType.F32, 0, 1 / Math.sqrt(o.nEmbd));
        add(`${p}ffn_gate_shexp.weight`, [o.nEmbd, ffShexp], wt, 0, 1 / Math.sqrt(o.nEmbd));
        add(`${p}ffn_up_shexp.weight`, [o.nEmbd, ffShexp], wt, 0, 1 / Math.sqrt(o.nEmbd));
        add(`${p}ffn_down_shexp.weight`, [ffShexp, o.nEmbd], wt, 0, resid / Math.sqrt(ffShexp));
      }
    } else {
      if (a !== 'phi3') add(`${p}ffn_gate.weight`, [o.nEmbd, o.nFf], wt, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}ffn_up.weight`, [o.nEmbd, a === 'phi3' ? 2 * o.nFf : o.nFf], wt, 0, 1 / Math.sqrt(o.nEmbd));
      add(`${p}ffn_down.weight`, [o.nFf, o.nEmbd], wt, 0, resid / Math.sqrt(o.nFf));
    }
    if (post) add(`${p}post_ffw_norm.weight`, [o.nEmbd], GgmlType.F32, resid, 0.1 * resid);
  }
  add('output_norm.weight', [o.nEmbd], GgmlType.F32, 1, 0.1);
  // gemma2's head is its embedding matrix (libllama refuses a file with an output.weight)
  if (a !== 'gemma2') add('output.weight', [o.nEmbd, nVocab], wt, 0, (o.headScale ?? 12) / Math.sqrt(o.nEmbd));

  let params = 0;
  const total = specs.reduce((t, spec) => t + spec.ne.reduce((x, y) => x * y, 1), 0);
  writeGguf(o.out, kvs, specs, (spec, i) => {
    const s = specs[i]!;
    const n = spec.ne.reduce((x, y) => x * y, 1);
    const rng = new Rng((o.seed * 1000003 + i * 7919) >>> 0);
    const bytes = encodeF32(spec.type, rng.fill(n, s.mean, s.std), spec.ne[0]!);
    params += n;
    o.onProgress?.(params, total);
    return bytes;
  });
  return params;
}


/** The embedded default model: small enough to synthesize in seconds, real vocabulary. */
export const DEFAULT_MODEL: Omit<SynthOptions, 'out'> = {
  arch: 'llama', nLayer: 8, nEmbd: 256, nHead: 8, nHeadKv: 4, nFf: 768, nCtxTrain: 4096, seed: 42, type: 'f16',
};

/**
 * Path of the default model in the cache, synthesizing it on first use (into a scratch file
 * renamed when complete, so an interrupted synthesis leaves no half model behind); `onProgress`
 * as {@link SynthOptions.onProgress}.
 */
export function ensureDefaultModel(cacheRoot?: string, onProgress?: (done: number, total: number) => void): string {
  const dir = join(strataCacheDir(cacheRoot), 'models');
  const spec = DEFAULT_MODEL;
  const file = join(dir, `default-${spec.arch}-${spec.nLayer}x${spec.nEmbd}-s${spec.seed}-${spec.type}.gguf`);
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true });
    const scratch = `${file}.${process.pid}.tmp`;
    try {
      synthesize({ ...spec, out: scratch, onProgress });
      renameSync(scratch, file);
    } finally {
      rmSync(scratch, { force: true });
    }
  }
  return file;
}
