// A model's hyperparameters, read from GGUF metadata and checked.
import { createHash } from 'node:crypto';
import type { GgufFile } from '@strata/gguf';
import { RopeType } from '@strata/ggml';
import { ModelError } from './errors.ts';

/** Architectures whose graph Strata builds. */
export const SUPPORTED_ARCHS = ['llama', 'qwen2', 'qwen3', 'phi3', 'exaone4', 'gemma2', 'gemma3', 'qwen3moe', 'qwen2moe', 'gpt-oss'] as const;
export type Arch = (typeof SUPPORTED_ARCHS)[number];

/** Everything the graph needs to know about a model. */
export interface HParams {
  arch: Arch;
  nLayer: number;
  nEmbd: number;
  nFf: number;
  /**
   * experts of a mixture-of-experts FFN (llama as Mixtral ships, qwen3moe); 0: a dense FFN.
   * Each token runs the `nExpertUsed` experts its router ranks highest, each `nFfExp` wide, and
   * sums their outputs weighted by the router's softmax renormalized over them
   */
  nExpert: number;
  nExpertUsed: number;
  nFfExp: number;
  /** multiplier of the experts' weights (`expert_weights_scale`; 0 or 1: none) */
  expertWeightsScale: number;
  /** the chosen experts' weights renormalized to sum to 1 (llama, qwen3moe), or the router's probabilities as they are (qwen2moe) */
  expertWeightsNorm: boolean;
  /**
   * how the router weighs the experts it chose: the softmax over every expert's logit ('softmax'),
   * or the softmax over the chosen experts' logits only ('softmax_weight', gpt-oss)
   */
  expertGating: 'softmax' | 'softmax_weight';
  /** width of the shared expert every token also runs, gated by a sigmoid (qwen2moe; 0: none) */
  nFfShexp: number;
  nHead: number;
  nHeadKv: number;
  /** per-head dimension of K and V */
  headDim: number;
  /** rotated dimensions per head */
  nRot: number;
  nCtxTrain: number;
  nVocab: number;
  rmsEps: number;
  ropeType: number;
  /** RoPE base and frequency scale of the full-attention layers (every layer without a window) */
  ropeFreqBase: number;
  ropeFreqScale: number;
  /**
   * YaRN as ggml_rope_ext takes it: the extrapolation mix (1 with `rope.scaling.type` yarn, else
   * 0), the attention factor, and the context the model was trained at before scaling
   * (`rope.scaling.original_context_length`, else context_length)
   */
  ropeExtFactor: number;
  ropeAttnFactor: number;
  nCtxOrig: number;
  /** RoPE base and frequency scale of the windowed layers (gemma3: `rope.freq_base_swa`, default 10000) */
  ropeFreqBaseSwa: number;
  ropeFreqScaleSwa: number;
  /** multiplier of the token embeddings (gemma3: √n_embd; 1 elsewhere) */
  embdScale: number;
  /**
   * scale of Q·K before the softmax. gemma3 multiplies Q by it after RoPE and passes 1 to the
   * attention (`qScaled`); the others pass it to the attention
   */
  attnScale: number;
  /** whether Q is multiplied by `attnScale` before the attention rather than inside it */
  qScaled: boolean;
  /** final logit soft-capping: logits = c·tanh(logits / c); 0: none */
  logitSoftcap: number;
  /** attention logit soft-capping, inside the attention (gemma2: `attn_logit_softcapping`, default 50); 0: none */
  attnSoftcap: number;
  /** sliding window (positions a token sees, itself included); 0: full attention everywhere */
  nSwa: number;
  /** per layer: attends within the sliding window // [n_layer] */
  swaLayers: boolean[];
  /**
   * how an embedding pools the final hidden states of its tokens (`<arch>.pooling_type`: 2 cls:
   * the first token, 3 last: the last; none, mean and anything else: their mean)
   */
  pooling: 'mean' | 'cls' | 'last';
  /**
   * sha256 over every metadata entry and the tensor layout (names, types, shapes, offsets): the
   * stages of one file share it. Weights are not read for it (a stage reads only its own), so two
   * files with identical metadata and layout but other weights would share it.
   */
  fingerprint: string;
}

/** llama.cpp's pooling types that change which rows an embedding takes (the rest: mean). */
const POOLING: Record<number, HParams['pooling']> = { 2: 'cls', 3: 'last' };

function num(file: GgufFile, key: string, fallback?: number): number {
  const kv = file.kv(key);
  if (!kv) {
    if (fallback !== undefined) return fallback;
    throw new ModelError('missing_metadata', `${file.path}: metadata key ${key} is missing`);
  }
  const v = Number(kv.value);
  if (!Number.isFinite(v)) throw new ModelError('missing_metadata', `${file.path}: metadata key ${key} is not a number`);
  return v;
}

/** Reads and validates the hyperparameters of a llama-family GGUF. */
export function readHParams(file: GgufFile): HParams {
  const archKv = file.kv('general.architecture');
  if (!archKv || typeof archKv.value !== 'string') {
    throw new ModelError('missing_metadata', `${file.path}: general.architecture is missing`);
  }
  const arch = archKv.value;
  if (!(SUPPORTED_ARCHS as readonly string[]).includes(arch)) {
    throw new ModelError('unknown_architecture', `${file.path}: architecture '${arch}' is not supported (supported: ${SUPPORTED_ARCHS.join(', ')})`);
  }
  const a = arch as Arch;
  const nEmbd = num(file, `${a}.embedding_length`);
  const nHead = num(file, `${a}.attention.head_count`);
  const nHeadKv = num(file, `${a}.attention.head_count_kv`, nHead);
  const headDim = num(file, `${a}.attention.key_length`, nEmbd / nHead);
  const tokens = file.kv('tokenizer.ggml.tokens');
  const nVocab = tokens ? (tokens.value as string[]).length : num(file, `${a}.vocab_size`);
  const scaling = ropeScaling(file, a);
  const ropeFreqScale = scaling.freqScale;
  const nLayer = num(file, `${a}.block_count`);
  if (a === 'phi3' && file.header.tensors.some((t) => t.name.startsWith('rope_factors_') || /^blk\.\d+\.rope_factors_/.test(t.name))) {
    throw new ModelError('unknown_architecture', `${file.path}: phi3 with LongRoPE factors (the 128k-context variants) is not supported yet`);
  }
  const swa = slidingWindow(file, a, nLayer);
  const gemma = a === 'gemma3' || a === 'gemma2';
  // (gpt-oss has only experts: libllama does not need the dense width)
  const nFf = num(file, `${a}.feed_forward_length`, a === 'gpt-oss' ? 0 : undefined);
  const experts = mixture(file, a, nFf);
  const hp: Omit<HParams, 'fingerprint'> = {
    arch: a,
    nLayer,
    nEmbd,
    nFf,
    ...experts,
    nHead,
    nHeadKv,
    headDim,
    nRot: num(file, `${a}.rope.dimension_count`, headDim),
    nCtxTrain: num(file, `${a}.context_length`),
    nVocab,
    rmsEps: num(file, `${a}.attention.layer_norm_rms_epsilon`),
    ropeType: a === 'llama' ? RopeType.NORMAL : RopeType.NEOX,
    ropeFreqBase: num(file, `${a}.rope.freq_base`, 10000),
    ropeFreqScale,
    ropeExtFactor: scaling.extFactor,
    ropeAttnFactor: scaling.attnFactor,
    nCtxOrig: num(file, `${a}.rope.scaling.original_context_length`, 0) || num(file, `${a}.context_length`),
    // libllama reads a windowed layers' base only where the window is on (gemma3), and never
    // scales their frequencies
    ropeFreqBaseSwa: a === 'gemma3' && swa.nSwa > 0 ? num(file, `${a}.rope.freq_base_swa`, 10000)
      // gemma2's windowed layers take the global base unless the file names their own
      : a === 'gemma2' || a === 'gpt-oss' ? num(file, `${a}.rope.freq_base_swa`, num(file, `${a}.rope.freq_base`, 10000)) : num(file, `${a}.rope.freq_base`, 10000),
    ropeFreqScaleSwa: a === 'gemma3' && swa.nSwa > 0 ? 1 : ropeFreqScale,
    embdScale: gemma ? Math.sqrt(nEmbd) : 1,
    // gpt-oss: 1/√n_rot, in f32
    attnScale: gemma ? gemmaAttnScale(a, nLayer, nEmbd, nHead, headDim) : a === 'gpt-oss' ? Math.fround(1 / Math.fround(Math.sqrt(num(file, `${a}.rope.dimension_count`, headDim)))) : 1 / Math.sqrt(headDim),
    // gemma and phi3 scale Q after RoPE and pass 1 to the attention
    qScaled: gemma || a === 'phi3',
    logitSoftcap: gemma ? num(file, `${a}.final_logit_softcapping`, a === 'gemma2' ? 30 : 0) : 0,
    attnSoftcap: a === 'gemma2' ? num(file, `${a}.attn_logit_softcapping`, 50) : 0,
    ...swa,
    pooling: POOLING[num(file, `${a}.pooling_type`, 0)] ?? 'mean',
  };
  for (const [k, v] of Object.entries(hp)) {
    if (typeof v === 'number' && (!Number.isFinite(v) || v < 0)) throw new ModelError('missing_metadata', `${file.path}: ${k} = ${v} is invalid`);
  }
  if (!Number.isInteger(headDim) || headDim <= 0 || nHead % nHeadKv !== 0 || hp.nLayer < 1) {
    throw new ModelError('missing_metadata', `${file.path}: inconsistent attention shape (n_embd ${nEmbd}, heads ${nHead}/${nHeadKv})`);
  }
  const h = createHash('sha256').update(JSON.stringify(hp));
  for (const kv of file.header.kv.values()) {
    h.update(kv.key);
    const v = kv.value;
    h.update(ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x)));
  }
  for (const t of file.header.tensors) h.update(`${t.name}:${t.type}:${t.ne.join('x')}@${t.offset};`);
  return { ...hp, fingerprint: h.digest('hex').slice(0, 32) };
}

/**
 * RoPE scaling as libllama reads it: `rope.scaling.type` linear (the default), none or yarn, its
 * `factor` (frequencies scaled by 1 / factor; none: never scaled). YaRN mixes in extrapolation
 * (ext factor 1) and takes an attention factor that cancels the one ggml's YaRN applies itself,
 * computed in f32 as libllama does, times `rope.scaling.attn_factor`. LongRoPE and the others
 * are refused by name.
 */
function ropeScaling(file: GgufFile, arch: Arch): { freqScale: number; extFactor: number; attnFactor: number } {
  const type = file.kv(`${arch}.rope.scaling.type`)?.value ?? 'linear';
  if (type !== 'linear' && type !== 'none' && type !== 'yarn') {
    throw new ModelError('unknown_architecture', `${file.path}: rope scaling '${String(type)}' is not supported (linear, yarn, none)`);
  }
  const factor = num(file, `${arch}.rope.scaling.factor`, 0) || num(file, `${arch}.rope.scale_linear`, 0);
  const freqScale = type === 'none' || factor === 0 ? 1 : Math.fround(1 / factor);
  const f32 = Math.fround;
  let attnFactor = 1;
  if (type === 'yarn') {
    const s = f32(1 / freqScale);
    const ln = f32(Math.log(s));
    const mscale = s <= 1 ? 1 : f32(f32(f32(0.1) * ln) + 1);
    attnFactor = f32(mscale * f32(1 / f32(1 + f32(f32(0.1) * ln))));
  }
  return { freqScale, extFactor: type === 'yarn' ? 1 : 0, attnFactor: f32(attnFactor * num(file, `${arch}.rope.scaling.attn_factor`, 1)) };
}

/**
 * The mixture of experts as libllama reads it: llama with `expert_count` > 0 (Mixtral; experts as
 * wide as `feed_forward_length`), qwen3moe and qwen2moe (always; `expert_feed_forward_length`,
 * else feed_forward_length / experts used; qwen2moe's weights not renormalized, and a shared
 * expert `expert_shared_feed_forward_length` wide, else feed_forward_length). Other architectures
 * with experts are refused by name.
 */
function mixture(file: GgufFile, arch: Arch, nFf: number): Pick<HParams, 'nExpert' | 'nExpertUsed' | 'nFfExp' | 'expertWeightsScale' | 'expertWeightsNorm' | 'expertGating' | 'nFfShexp'> {
  const nExpert = num(file, `${arch}.expert_count`, 0);
  const nExpertUsed = num(file, `${arch}.expert_used_count`, 0);
  const qwenMoe = arch === 'qwen3moe' || arch === 'qwen2moe';
  const always = qwenMoe || arch === 'gpt-oss';
  if (nExpert === 0 && !always) return { nExpert: 0, nExpertUsed: 0, nFfExp: 0, expertWeightsScale: 0, expertWeightsNorm: false, expertGating: 'softmax', nFfShexp: 0 };
  if (arch !== 'llama' && !always) throw new ModelError('unknown_architecture', `${file.path}: ${arch} with experts is not supported (mixtures of experts: llama, qwen2moe, qwen3moe, gpt-oss)`);
  if (nExpert < 1 || nExpertUsed < 1 || nExpertUsed > nExpert || !Number.isInteger(nExpert) || !Number.isInteger(nExpertUsed)) {
    throw new ModelError('missing_metadata', `${file.path}: ${arch} needs expert_count and 1 ≤ expert_used_count ≤ expert_count, got ${nExpert} and ${nExpertUsed}`);
  }
  const nFfExp = arch === 'gpt-oss' ? num(file, `${arch}.expert_feed_forward_length`) : qwenMoe ? num(file, `${arch}.expert_feed_forward_length`, 0) || Math.floor(nFf / nExpertUsed) : nFf;
  return {
    nExpert, nExpertUsed, nFfExp, expertWeightsScale: num(file, `${arch}.expert_weights_scale`, 0),
    expertWeightsNorm: arch !== 'qwen2moe' && arch !== 'gpt-oss',
    expertGating: arch === 'gpt-oss' ? 'softmax_weight' : 'softmax',
    nFfShexp: arch === 'qwen2moe' ? num(file, `${arch}.expert_shared_feed_forward_length`, 0) || nFf : 0,
  };
}

/**
 * gemma's attention scale as libllama computes it in f32: 1/√head_dim, except the 27B shapes
 * (gemma3: 62 layers, gemma2: 46), which use 1/√(n_embd / n_head) (`query_pre_attn_scalar` of
 * Google's configs).
 */
function gemmaAttnScale(arch: Arch, nLayer: number, nEmbd: number, nHead: number, headDim: number): number {
  const d = nLayer === (arch === 'gemma2' ? 46 : 62) ? Math.floor(nEmbd / nHead) : headDim;
  return Math.fround(1 / Math.fround(Math.sqrt(d)));
}

/**
 * The sliding window as libllama reads it. gemma3 turns it on where `attention.sliding_window` is
 * set and > 0: every layer but each `pattern`-th (a scalar; default 6; an array is ignored, as
 * libllama does) attends within the window. exaone4 turns it on for its 64-layer shape only (every
 * layer but each `pattern`-th, default 4, attends within `attention.sliding_window`, default 4096);
 * llama and qwen2 attend to everything.
 */
function slidingWindow(file: GgufFile, arch: Arch, nLayer: number): { nSwa: number; swaLayers: boolean[] } {
  const none = { nSwa: 0, swaLayers: new Array<boolean>(nLayer).fill(false) };
  if (arch === 'gemma2') {
    // always windowed (4096 unless the file says), every other layer unless a pattern is given
    return { nSwa: num(file, `${arch}.attention.sliding_window`, 4096), swaLayers: patternLayers(file, arch, nLayer, 2) };
  }
  if (arch === 'gemma3') {
    const nSwa = num(file, `${arch}.attention.sliding_window`, 0);
    if (nSwa === 0) return none;
    return { nSwa, swaLayers: windowedEvery(nLayer, scalarPeriod(file, arch, 6)) };
  }
  if (arch === 'gpt-oss') {
    // every other layer windowed (the even ones), unless a period is given
    return { nSwa: num(file, `${arch}.attention.sliding_window`), swaLayers: windowedEvery(nLayer, scalarPeriod(file, arch, 2)) };
  }
  if (arch !== 'exaone4' || nLayer !== 64) return none;
  return { nSwa: num(file, `${arch}.attention.sliding_window`, 4096), swaLayers: patternLayers(file, arch, nLayer, 4) };
}

/**
 * `attention.sliding_window_pattern` as gemma2 and exaone4 read it: an array, one flag per layer
 * (windowed where true), or a period (each `period`-th layer full; absent: `fallback`).
 */
function patternLayers(file: GgufFile, arch: Arch, nLayer: number, fallback: number): boolean[] {
  const kv = file.kv(`${arch}.attention.sliding_window_pattern`);
  if (kv && (ArrayBuffer.isView(kv.value) || Array.isArray(kv.value))) {
    const arr = Array.from(kv.value as ArrayLike<number | boolean>, (x) => Boolean(x));
    if (arr.length !== nLayer) throw new ModelError('missing_metadata', `${file.path}: sliding_window_pattern has ${arr.length} entries for ${nLayer} layers`);
    return arr;
  }
  return windowedEvery(nLayer, kv ? Number(kv.value) : fallback);
}

/** Every layer windowed but each `period`-th (libllama's set_swa_pattern; 0: every layer windowed). */
function windowedEvery(nLayer: number, period: number): boolean[] {
  return Array.from({ length: nLayer }, (_, il) => period === 0 || il % period < period - 1);
}

/** A scalar `attention.sliding_window_pattern`, else `fallback` (an array is ignored, as libllama does for these). */
function scalarPeriod(file: GgufFile, arch: Arch, fallback: number): number {
  const kv = file.kv(`${arch}.attention.sliding_window_pattern`);
  return kv && !ArrayBuffer.isView(kv.value) && !Array.isArray(kv.value) ? Number(kv.value) : fallback;
}

/** RoPE base and frequency scale of layer `il` (libllama's get_rope_freq_base/scale). */
export function layerRope(hp: HParams, il: number): { freqBase: number; freqScale: number } {
  return hp.swaLayers[il] ? { freqBase: hp.ropeFreqBaseSwa, freqScale: hp.ropeFreqScaleSwa } : { freqBase: hp.ropeFreqBase, freqScale: hp.ropeFreqScale };
}

/** Elements of K (and V) per token and layer: head_dim × n_head_kv. */
export function nEmbdKvGqa(hp: HParams): number {
  return hp.headDim * hp.nHeadKv;
}
