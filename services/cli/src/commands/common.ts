// Flags shared by the commands that run a model.
import { availableParallelism } from 'node:os';
import { GgufFile } from '@strata/gguf';
import { ensureDefaultModel, parseSplit, readHParams, Pipeline } from '@strata/model';
import type { Flags } from '../args.ts';

/** A pipeline opened from --model/--split/--threads/--ctx-size/--device. */
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
  let split;
  if (splitText) {
    const file = GgufFile.open(path);
    try {
      split = parseSplit(splitText, readHParams(file).nLayer);
    } finally {
      file.close();
    }
  }
  return { path, pipeline: Pipeline.open({ model: path, split, threads, ctxSize, device }) };
}
