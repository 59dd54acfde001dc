// K-shift: after seqAdd/seqDivide moved cells to new positions, their cached keys still carry
// the rotation of the old ones. This graph re-rotates every layer's keys by each cell's pending
// shift (RoPE is additive in the angle), as llama.cpp's build_graph_shift does.
import { GgmlContext, GgmlType, type GraphPtr, type RopeParams, type TensorPtr } from '@strata/ggml';
import type { KvStorage } from '@strata/kv-cache';
import { native } from '@strata/ggml';
import { mulHadamard } from './graph.ts';
import type { HParams } from './hparams.ts';

/** The shift graph of a stage and its one input. */
export interface ShiftGraph {
  ctx: GgmlContext;
  graph: GraphPtr;
  /** I32 [size]: the rotation each cell still needs */
  shift: TensorPtr;
  /** F32 [rot, rot]: the Hadamard matrix of rotated quantized keys */
  rot: TensorPtr | null;
}

/**
 * Builds the graph that re-rotates the keys of every layer of `kv` by that layer's RoPE
 * (`rope(slot)`, slot = layer - l0: windowed and full layers may differ in base and scale).
 */
export function buildShiftGraph(hp: HParams, rope: (slot: number) => RopeParams, kv: KvStorage): ShiftGraph {
  const nodes = 8 * kv.k.length + 8;
  const ctx = GgmlContext.create({ maxTensors: nodes, graphNodes: nodes });
  const gf = ctx.graph(nodes);
  const g = native().ggml;
  const shift = ctx.input(GgmlType.I32, [kv.size], 'inp_k_shift');
  const quantized = kv.type !== GgmlType.F16 && kv.type !== GgmlType.F32;
  const rot = kv.rot.k ? ctx.input(GgmlType.F32, [kv.rot.k, kv.rot.k], 'inp_k_rot') : null;
  const shape = [hp.nRot, hp.nHeadKv, kv.size];
  kv.k.forEach((k, slot) => {
    const view = ctx.view3d(k, hp.nRot, hp.nHeadKv, kv.size, g.ggml_row_size(kv.type, hp.headDim), g.ggml_row_size(kv.type, hp.headDim * hp.nHeadKv), 0);
    let out: TensorPtr;
    if (quantized) {
      // quantized keys: to f32, out of the Hadamard domain, rotated, back in, requantized in place
      let tmp = ctx.cast(view, GgmlType.F32);
      if (rot) tmp = mulHadamard(ctx, tmp, rot, kv.rot.k, shape);
      tmp = ctx.ropeExt(tmp, shift, rope(slot));
      if (rot) tmp = mulHadamard(ctx, tmp, rot, kv.rot.k, shape);
      out = ctx.cpy(tmp, view);
    } else {
      out = ctx.ropeExtInplace(view, shift, rope(slot));
    }
    ctx.expand(gf, out);
  });
  return { ctx, graph: gf, shift, rot };
}
