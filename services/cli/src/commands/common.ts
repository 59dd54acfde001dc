// Flags shared by the commands that run a model.
import { availableParallelism } from 'node:os';
import { GgufFile } from '@strata/gguf';
import { ensureDefaultModel, parseSplit, readHParams, Pipeline } from '@strata/model';
import { GgmlType } from '@strata/ggml';
import type { Flags } from '../args.ts';
import { UsageError } from '../errors.ts';

/** K/V cache types a worker can hold. */
const KV_TYPES: Record<string, number> = { f16: GgmlType.F16, f32: GgmlType.F32, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 };

/** A pipeline opened from --model/--split/--threads/--ctx-size/--device/--kv-type. */
export interface OpenedModel {
  path: string;
  pipeline: Pipeline;
}

/** Reads the model flags and opens the in-process pipeline they describe. */
export function openPipelineFromFlags(f: Flags): OpenedModel {
  const path = f.str('model') ?? ensureDefaultModel();
  const splitText = f.str('split');
  const threads = f.int('threads', Math.min(availableParallelism(), 8))!;
  const ctxSize = f.int('ctx-size', 4096)!;
  const device = f.str('device');
  const kvTypeName = f.str('kv-type', 'f16')!.toLowerCase();
  const kvType = KV_TYPES[kvTypeName];
  if (kvType === undefined) throw new UsageError(`--kv-type must be one of ${Object.keys(KV_TYPES).join(', ')}, got '${kvTypeName}'`);
  let split;
  if (splitText) {
    const file = GgufFile.open(path);
    try {
      split = parseSplit(splitText, readHParams(file).nLayer);
    } finally {
      file.close();
    }
  }
  const hostText = f.str('kv-host-layers');
  const kvHostLayers = hostText ? hostText.split(',').map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n)) throw new UsageError(`--kv-host-layers takes layer numbers separated by commas, got '${hostText}'`);
    return n;
  }) : undefined;
  const kvStreams = f.int('kv-streams', 1)!;
  // as llama.cpp's tools: windowed layers keep a cache sized for the window unless told otherwise
  const swaFullText = f.str('kv-swa-full', 'false')!;
  if (swaFullText !== 'true' && swaFullText !== 'false') throw new UsageError(`--kv-swa-full takes true or false, got '${swaFullText}'`);
  // STRATA_KV_DEBUG=1 draws every stage's cells after each batch (like LLAMA_KV_CACHE_DEBUG)
  const kvDebug = process.env.STRATA_KV_DEBUG === '1' ? (d: string) => process.stderr.write(d) : undefined;
  return { path, pipeline: Pipeline.open({ model: path, split, threads, ctxSize, device, kvType, kvHostLayers, kvStreams, kvSwaFull: swaFullText === 'true', kvDebug }) };
}
