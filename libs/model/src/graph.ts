// The ggml graph of one stage: layers [l0, l1) of a llama/qwen2/qwen3/qwen3moe/phi3/exaone4/gemma2/gemma3 model, op for op
// as llama.cpp builds it (flash attention over an f16 KV cache), so that the numbers match.
import { GgmlContext, GgmlPrec, GgmlType, native, tensorInfo, type GraphPtr, type RopeParams, type TensorPtr } from '@strata/ggml';
import type { KvStorage } from '@strata/kv-cache';

/** What a stage graph reads of its KV cache (a StageCache): the storage of each group, and each layer's group. */
export interface GraphKv {
  /** each group's K/V rows, and its cells' streams (none: one stream of every cell) */
  readonly groups: readonly { readonly storage: KvStorage; readonly cells?: { readonly streams: number } }[];
  layerGroup(layer: number): { group: number; slot: number };
}
import { layerRope, type HParams } from './hparams.ts';
import type { StageWeights } from './weights.ts';

/** Nodes reserved per graph (llama.cpp reserves a similar fixed budget). */
export const GRAPH_NODES = 8192;

/** The input and output tensors of a built stage graph. */
export interface StageGraph {
  ctx: GgmlContext;
  graph: GraphPtr;
  /** I32 [n_tokens] on the first stage */
  tokens: TensorPtr | null;
  /** F32 [n_embd, n_tokens] on later stages */
  hidden: TensorPtr | null;
  /** I32 [n_tokens] */
  pos: TensorPtr;
  /** I64 [n_tokens]: the cell each token's K/V row is written to (the cache's first group) */
  kvIdxs: TensorPtr;
  /** I64 [n_tokens]: the same in the windowed layers' own group, when the cache has one */
  kvIdxsSwa: TensorPtr | null;
  /**
   * per attention group (GraphShape.groups): F16 [n_kv, per, 1, streams], causal, same sequence
   * (`full`, null when every layer is windowed), and the same over the windowed group's cells,
   * also within the sliding window (`swa`, null when no layer is windowed)
   */
  masks: { full: TensorPtr | null; swa: TensorPtr | null }[];
  /** I32 [n_outputs + n_embed], last stage only, when not every token outputs */
  outIds: TensorPtr | null;
  /** F32 [n_embd, n_embed]: the final normalized hidden states of the embedding rows (last stage), or null */
  embd: TensorPtr | null;
  /** F32 [rot, rot] Hadamard matrices, when the cache is quantized and rotated */
  rotK: TensorPtr | null;
  rotV: TensorPtr | null;
  /** hidden state [n_embd, n_tokens] or logits [n_vocab, n_outputs] (a last stage without logit rows: embd) */
  out: TensorPtr;
}

/** GGML_HINT_SRC0_IS_HADAMARD */
const HINT_HADAMARD = 1;

/**
 * Multiplies every `rot`-wide chunk of a contiguous tensor by the Hadamard matrix `rot`
 * (llama.cpp's llama_mul_mat_hadamard); `shape` is the tensor's shape, restored after.
 */
export function mulHadamard(ctx: GgmlContext, cur: TensorPtr, rot: TensorPtr, n: number, shape: readonly number[]): TensorPtr {
  const total = shape.reduce((a, b) => a * b, 1);
  const res = ctx.mulMat(rot, ctx.reshape2d(cur, n, total / n));
  ctx.setMulMatHint(res, HINT_HADAMARD);
  return ctx.reshape4d(res, shape[0]!, shape[1] ?? 1, shape[2] ?? 1, shape[3] ?? 1);
}

/** Shape of one evaluation. */
export interface GraphShape {
  nTokens: number;
  /** cells the full layers' attention reads: [kvLo, kvLo + nKv) */
  nKv: number;
  kvLo: number;
  /**
   * the same for the windowed layers, in their own group's cells (the full layers' cells when
   * the cache has one group); a sliding window hides more of the oldest cells
   */
  nKvSwa: number;
  kvLoSwa: number;
  /** rows of logits to produce on the last stage */
  nOutputs: number;
  /** rows whose final normalized hidden states the last stage produces (embeddings), after the logit rows */
  nEmbed: number;
  /** select the output rows with an index input (false: every token, in order) */
  selectOutputs: boolean;
  /**
   * With one KV stream per sequence: the tokens' attention groups, in row order. Each group is
   * `streams` consecutive streams from `first`, each bringing `per` tokens (stream after stream),
   * and each token attends to nKv (nKvSwa) cells of its own stream only, from its kvLo (kvLoSwa)
   * on (llama.cpp's 4-D K/V views); the mat-muls take every row at once. Default: one group of one stream, every
   * token attending to cells [kvLo, kvLo + nKv) (windowed layers: [kvLoSwa, kvLoSwa + nKvSwa)).
   */
  groups?: readonly AttnGroup[];
}

/** Tokens of consecutive KV streams that attend together (GraphShape.groups). */
export interface AttnGroup {
  /** the first stream */
  first: number;
  streams: number;
  /** tokens from each stream */
  per: number;
  /** cells attended in each stream, by the full layers and by the windowed ones, from kvLo (kvLoSwa) on */
  nKv: number;
  nKvSwa: number;
  kvLo: number;
  kvLoSwa: number;
}

/**
 * Layer `il`'s RoPE as ggml_rope_ext takes it (YaRN's parameters as libllama passes them, β fast
 * 32 and slow 1); the base and scale differ between windowed and full layers on gemma3.
 */
export function ropeParams(hp: HParams, weights: Pick<StageWeights, 'ropeFreqs'>, il: number): RopeParams {
  return {
    nDims: hp.nRot, mode: hp.ropeType, nCtxOrig: hp.nCtxOrig, ...layerRope(hp, il),
    extFactor: hp.ropeExtFactor, attnFactor: hp.ropeAttnFactor, betaFast: 32, betaSlow: 1, factors: weights.ropeFreqs,
  };
}

/**
 * A mixture-of-experts FFN on `cur` [n_embd, n]: the router's softmax over the experts, the
 * `nExpertUsed` best per token, their weights renormalized to sum to 1 where the model does (and
 * scaled by `expertWeightsScale`), each picked expert's SwiGLU FFN through ggml_mul_mat_id, the
 * weighted outputs summed, and a shared expert's gated output added where there is one — op for
 * op as libllama's build_moe_ffn (softmax gating, no biases) and qwen2moe's graph, so the numbers
 * match.
 */
function mixtureOfExperts(ctx: GgmlContext, gf: GraphPtr, hp: HParams, w: StageWeights['layers'][number], cur: TensorPtr, n: number): TensorPtr {
  // n: rows of `cur`
  const { nExpert, nExpertUsed: k, nEmbd } = hp;
  let logits = ctx.mulMat(w.ffnGateInp!, cur); // [n_expert, n]
  if (w.ffnGateInpB) logits = ctx.add(logits, w.ffnGateInpB);
  // softmax_weight (gpt-oss): chosen by logit, weighed by the softmax over the chosen ones
  const probs = hp.expertGating === 'softmax_weight' ? logits : ctx.softMax(logits);
  const selected = ctx.argsortTopK(probs, k); // I32 [k, n]
  let weights = ctx.getRows(ctx.reshape3d(probs, 1, nExpert, n), selected); // [1, k, n]
  if (hp.expertGating === 'softmax_weight') weights = ctx.reshape3d(ctx.softMax(ctx.reshape2d(weights, k, n)), 1, k, n);
  if (hp.expertWeightsNorm) {
    weights = ctx.reshape2d(weights, k, n);
    // the sum is kept off zero: at least f16's smallest normal, as libllama clamps it
    weights = ctx.div(weights, ctx.clamp(ctx.sumRows(weights), 6.103515625e-5, Infinity));
    weights = ctx.reshape3d(weights, 1, k, n);
  }
  if (hp.expertWeightsScale !== 0 && hp.expertWeightsScale !== 1) weights = ctx.scale(weights, hp.expertWeightsScale);
  ctx.expand(gf, weights);
  const x = ctx.reshape3d(cur, nEmbd, 1, n);
  let up = ctx.mulMatId(w.ffnUpExps!, x, selected); // [n_ff_exp, k, n]
  if (w.ffnUpExpsB) up = ctx.addId(up, w.ffnUpExpsB, selected);
  let gated = w.ffnGateExps ? ctx.mulMatId(w.ffnGateExps, x, selected) : null;
  if (gated && w.ffnGateExpsB) gated = ctx.addId(gated, w.ffnGateExpsB, selected);
  // gpt-oss's SwiGLU (alpha 1.702, limit 7, as libllama fixes them)
  const act = !gated ? ctx.silu(up) : hp.arch === 'gpt-oss' ? ctx.swigluOai(gated, up, 1.702, 7) : ctx.swigluSplit(gated, up);
  let down = ctx.mulMatId(w.ffnDownExps!, act, selected);
  if (w.ffnDownExpsB) down = ctx.addId(down, w.ffnDownExpsB, selected);
  const experts = ctx.mul(down, weights); // [n_embd, k, n]
  ctx.expand(gf, experts);
  // each expert's rows as a view, then their sum, in libllama's order
  const row = native().ggml.ggml_row_size(GgmlType.F32, nEmbd);
  const views = Array.from({ length: k }, (_, i) => ctx.view2d(experts, nEmbd, n, row * k, i * row));
  for (const v of views) ctx.expand(gf, v);
  let out = views[0]!;
  for (let i = 1; i < k; i++) {
    out = ctx.add(out, views[i]!);
    ctx.expand(gf, out);
  }
  if (k === 1) out = ctx.cont(out);
  if (!w.ffnGateInpShexp) return out;
  // qwen2moe's shared expert: a SwiGLU FFN every token runs, scaled by a sigmoid gate (as
  // libllama writes the sigmoid: silu(x) / x)
  const g = ctx.mulMat(w.ffnGateInpShexp, cur); // [1, n]
  const gate = ctx.div(ctx.silu(g), g);
  const sharedUp = ctx.mulMat(w.ffnUpShexp!, cur);
  const shared = ctx.mulMat(w.ffnDownShexp!, ctx.swigluSplit(ctx.mulMat(w.ffnGateShexp!, cur), sharedUp));
  return ctx.add(out, ctx.mul(shared, gate));
}

/** Builds the graph of `weights`' layers for one batch. */
export function buildStageGraph(hp: HParams, weights: StageWeights, cache: GraphKv, shape: GraphShape): StageGraph {
  const { nTokens: n, nKv, nKvSwa, kvLo, kvLoSwa, nOutputs, nEmbed, selectOutputs } = shape;
  const groups = shape.groups ?? [{ first: 0, streams: 1, per: n, nKv, nKvSwa, kvLo, kvLoSwa }];
  if (groups.reduce((t, g) => t + g.streams * g.per, 0) !== n) throw new RangeError(`attention groups do not hold the ${n} tokens`);
  const kv = cache.groups[0]!.storage;
  const twoGroups = cache.groups.length > 1;
  const { l0, l1 } = weights.range;
  const isFirst = l0 === 0, isLast = l1 === hp.nLayer;
  const ctx = GgmlContext.create({ maxTensors: GRAPH_NODES, graphNodes: GRAPH_NODES });
  const gf = ctx.graph(GRAPH_NODES);
  const g = native().ggml;
  const rowSize = (type: number, ne: number) => g.ggml_row_size(type, ne);

  const tokens = isFirst ? ctx.input(GgmlType.I32, [n], 'inp_tokens') : null;
  const hidden = isFirst ? null : ctx.input(GgmlType.F32, [hp.nEmbd, n], 'inp_hidden');
  const pos = ctx.input(GgmlType.I32, [n], 'inp_pos');
  const kvIdxs = ctx.input(GgmlType.I64, [n], 'inp_kv_idxs');
  const kvIdxsSwa = twoGroups ? ctx.input(GgmlType.I64, [n], 'inp_kv_idxs_swa') : null;
  const swa = hp.swaLayers.slice(l0, l1);
  const masks = groups.map((g, i) => ({
    full: swa.some((x) => !x) ? ctx.input(GgmlType.F16, [g.nKv, g.per, 1, g.streams], `inp_kq_mask${i || ''}`) : null,
    swa: swa.some((x) => x) ? ctx.input(GgmlType.F16, [g.nKvSwa, g.per, 1, g.streams], `inp_kq_mask_swa${i || ''}`) : null,
  }));
  const outIds = isLast && selectOutputs ? ctx.input(GgmlType.I32, [nOutputs + nEmbed], 'inp_out_ids') : null;
  const rotK = kv.rot.k ? ctx.input(GgmlType.F32, [kv.rot.k, kv.rot.k], 'attn_inp_k_rot') : null;
  const rotV = kv.rot.v ? ctx.input(GgmlType.F32, [kv.rot.v, kv.rot.v], 'attn_inp_v_rot') : null;

  const hd = hp.headDim, nKvEmbd = hd * hp.nHeadKv;
  const kvType = kv.type;
  // gemma3 scales Q after RoPE and attends with scale 1
  const kqScale = hp.qScaled ? 1 : hp.attnScale;

  let inpL = isFirst ? ctx.getRows(weights.tokEmbd!, tokens!) : hidden!;
  if (isFirst && hp.embdScale !== 1) inpL = ctx.scale(inpL, hp.embdScale);
  for (let il = l0; il < l1; il++) {
    const w = weights.layers[il - l0]!;
    // the layer's K/V: its group's storage and cells
    const { group, slot } = cache.layerGroup(il);
    const store = cache.groups[group]!.storage;
    const idxs = group === 0 ? kvIdxs : kvIdxsSwa!;
    const rope = ropeParams(hp, weights, il);
    let inpSA = inpL;
    // llama/qwen2/qwen3/gemma3 normalize before attention; exaone4 after it; exaone4, gemma3 and qwen3 also normalize Q and K per head
    let cur = w.attnNorm ? ctx.mul(ctx.rmsNorm(inpL, hp.rmsEps), w.attnNorm) : inpL;

    let q: TensorPtr, k: TensorPtr, v: TensorPtr;
    if (w.wqkv) {
      // phi3: one projection, Q, K and V its views (as llama.cpp's build_qkv); V is made
      // contiguous for the cache (the same values)
      const qkv = ctx.mulMat(w.wqkv, cur);
      const row = rowSize(GgmlType.F32, hd * (hp.nHead + 2 * hp.nHeadKv)), head = rowSize(GgmlType.F32, hd);
      q = ctx.view3d(qkv, hd, hp.nHead, n, head, row, 0);
      k = ctx.view3d(qkv, hd, hp.nHeadKv, n, head, row, rowSize(GgmlType.F32, hd * hp.nHead));
      v = ctx.cont(ctx.view3d(qkv, hd, hp.nHeadKv, n, head, row, rowSize(GgmlType.F32, hd * (hp.nHead + hp.nHeadKv))));
    } else {
      q = ctx.mulMat(w.wq!, cur);
      if (w.bq) q = ctx.add(q, w.bq);
      k = ctx.mulMat(w.wk!, cur);
      if (w.bk) k = ctx.add(k, w.bk);
      v = ctx.mulMat(w.wv!, cur);
      if (w.bv) v = ctx.add(v, w.bv);
      q = ctx.reshape3d(q, hd, hp.nHead, n);
      k = ctx.reshape3d(k, hd, hp.nHeadKv, n);
      v = ctx.reshape3d(v, hd, hp.nHeadKv, n);
    }
    if (w.qNorm) q = ctx.mul(ctx.rmsNorm(q, hp.rmsEps), w.qNorm);
    if (w.kNorm) k = ctx.mul(ctx.rmsNorm(k, hp.rmsEps), w.kNorm);
    // with a sliding window, exaone4's full-attention layers use no positions (NoPE)
    if (hp.arch !== 'exaone4' || hp.nSwa === 0 || hp.swaLayers[il]) {
      q = ctx.ropeExt(q, pos, rope);
      k = ctx.ropeExt(k, pos, rope);
    }
    if (hp.qScaled) q = ctx.scale(q, hp.attnScale);
    if (rotK) {
      q = mulHadamard(ctx, q, rotK, kv.rot.k, [hd, hp.nHead, n]);
      k = mulHadamard(ctx, k, rotK, kv.rot.k, [hd, hp.nHeadKv, n]);
    }
    if (rotV) v = mulHadamard(ctx, v, rotV, kv.rot.v, [hd, hp.nHeadKv, n]);
    ctx.expand(gf, q);
    ctx.expand(gf, v);
    ctx.expand(gf, k);

    // store this batch's K/V rows in their cells
    const rowF32 = rowSize(GgmlType.F32, nKvEmbd);
    ctx.expand(gf, ctx.setRows(store.k[slot]!, ctx.view2d(k, nKvEmbd, n, rowF32, 0), idxs));
    ctx.expand(gf, ctx.setRows(store.v[slot]!, ctx.view2d(v, nKvEmbd, n, rowF32, 0), idxs));

    // each attention group: its tokens' Q rows against its window of cells in each of its streams
    // (store.size / streams cells each); the groups' outputs one after the other
    const streamCells = store.size / (cache.groups[group]!.cells?.streams ?? 1);
    const kvRow = rowSize(kvType, nKvEmbd), kvHead = rowSize(kvType, hd), kvStream = rowSize(kvType, nKvEmbd * streamCells);
    const qi = groups.length > 1 || groups[0]!.streams > 1 ? tensorInfo(q) : null;
    let row = 0;
    let outs: TensorPtr[] = [];
    for (const [gi, g] of groups.entries()) {
      const [nKvG, loG] = hp.swaLayers[il] ? [g.nKvSwa, g.kvLoSwa] : [g.nKv, g.kvLo];
      const at = kvStream * g.first + kvRow * loG;
      let kc = ctx.permute(ctx.view4d(store.k[slot]!, [hd, hp.nHeadKv, nKvG, g.streams], kvHead, kvRow, kvStream, at), 0, 2, 1, 3);
      let vc = ctx.permute(ctx.view4d(store.v[slot]!, [hd, hp.nHeadKv, nKvG, g.streams], kvHead, kvRow, kvStream, at), 0, 2, 1, 3);
      // flash attention reads f16 or quantized K/V; an f32 cache is cast, as llama.cpp does
      if (kvType === GgmlType.F32) {
        kc = ctx.cast(kc, GgmlType.F16);
        vc = ctx.cast(vc, GgmlType.F16);
      }
      // q [hd, n_head, n_tokens]: the group's rows as [hd, n_head, per, streams], then [hd, per, n_head, streams]
      const qg = qi ? ctx.view4d(q, [hd, hp.nHead, g.per, g.streams], qi.nb[1], qi.nb[2], qi.nb[2] * g.per, qi.nb[2] * row) : q;
      const m = hp.swaLayers[il] ? masks[gi]!.swa : masks[gi]!.full;
      const out = ctx.reshape2d(ctx.flashAttnExt(ctx.permute(qg, 0, 2, 1, 3), kc, vc, m, kqScale, GgmlPrec.F32, hp.attnSoftcap, w.attnSinks), hd * hp.nHead, g.per * g.streams);
      outs.push(out);
      row += g.per * g.streams;
    }
    // the groups' rows one after the other, concatenated pairwise (each row copied log2(groups) times)
    while (outs.length > 1) outs = Array.from({ length: Math.ceil(outs.length / 2) }, (_, i) => (outs[2 * i + 1] ? ctx.concat(outs[2 * i]!, outs[2 * i + 1]!, 1) : outs[2 * i]!));
    cur = outs[0]!;
    if (rotV) cur = mulHadamard(ctx, cur, rotV, kv.rot.v, [hd * hp.nHead, n]);
    cur = ctx.mulMat(w.wo, cur);
    if (w.bo) cur = ctx.add(cur, w.bo);

    if (il === hp.nLayer - 1 && outIds) {
      cur = ctx.getRows(cur, outIds);
      inpSA = ctx.getRows(inpSA, outIds);
    }
    if (w.attnPostNorm) cur = ctx.mul(ctx.rmsNorm(cur, hp.rmsEps), w.attnPostNorm);
    const ffnInp = ctx.add(cur, inpSA);
    cur = w.ffnNorm ? ctx.mul(ctx.rmsNorm(ffnInp, hp.rmsEps), w.ffnNorm) : ffnInp;
    if (w.ffnGateInp) {
      // the last layer's rows are the output rows only, when those were picked above
      cur = mixtureOfExperts(ctx, gf, hp, w, cur, il === hp.nLayer - 1 && outIds ? nOutputs + nEmbed : n);
    } else {
      const up = ctx.mulMat(w.ffnUp!, cur);
      if (w.ffnGate) {
        const gate = ctx.mulMat(w.ffnGate, cur);
        // gemma's FFN gates with GELU (tanh approximation), the others with SiLU
        cur = ctx.mulMat(w.ffnDown!, hp.arch === 'gemma3' || hp.arch === 'gemma2' ? ctx.gegluSplit(gate, up) : ctx.swigluSplit(gate, up));
      } else {
        // phi3: the up projection's first half is the gate
        cur = ctx.mulMat(w.ffnDown!, ctx.swiglu(up));
      }
    }
    if (w.ffnPostNorm) cur = ctx.mul(ctx.rmsNorm(cur, hp.rmsEps), w.ffnPostNorm);
    inpL = ctx.add(cur, ffnInp);
  }

  let out = inpL;
  let embd: TensorPtr | null = null;
  if (isLast) {
    const normed = ctx.mul(ctx.rmsNorm(out, hp.rmsEps), weights.outputNorm!);
    // embedding rows (llama.cpp's t_embd): the normalized state after the logit rows
    const row = rowSize(GgmlType.F32, hp.nEmbd);
    if (nEmbed > 0) {
      embd = ctx.cont(ctx.view2d(normed, hp.nEmbd, nEmbed, row, nOutputs * row));
      ctx.setOutput(embd);
      ctx.expand(gf, embd);
    }
    if (nOutputs > 0) {
      out = ctx.mulMat(weights.output!, nEmbed > 0 ? ctx.view2d(normed, hp.nEmbd, nOutputs, row, 0) : normed);
      if (hp.logitSoftcap > 0) out = ctx.scale(ctx.tanh(ctx.scale(out, 1 / hp.logitSoftcap)), hp.logitSoftcap);
    } else {
      out = embd!;
    }
  }
  ctx.setOutput(out);
  ctx.expand(gf, out);
  return { ctx, graph: gf, tokens, hidden, pos, kvIdxs, kvIdxsSwa, masks, outIds, embd, rotK, rotV, out };
}
