// @strata/model: llama-family models cut into layer-range stages.
export { KvCacheFullError, ModelError } from './errors.ts';
export { generate, prefill, scoreAll, topK, type GenerateOptions, type GenerateResult } from './generate.ts';
export { GRAPH_NODES, buildStageGraph, ropeParams, type GraphShape, type StageGraph } from './graph.ts';
export { SUPPORTED_ARCHS, nEmbdKvGqa, readHParams, type Arch, type HParams } from './hparams.ts';
export { balancedSplit, checkSplit, evenSplit, formatRange, parseRange, parseSplit, type LayerCosts, type LayerRange } from './layer-range.ts';
export { Pipeline, type PipelineBatch, type PipelineOptions } from './pipeline.ts';
export { Stage, type StageBatch, type StageCounters, type StageMemory, type StageOptions } from './stage.ts';
export { StageCache, type CacheCounters, type StageCacheOptions } from './stage-cache.ts';
export { DEFAULT_MODEL, Rng, SYNTH_TYPES, defaultVocab, ensureDefaultModel, synthesize, type SynthOptions, type SynthType } from './synth.ts';
export { StageWeights, decodeCosts, stageTensorList, stageTensors, type LayerWeights, type WeightOptions } from './weights.ts';
export { buildShiftGraph, type ShiftGraph } from './k-shift.ts';
export type { ExportOptions, ImportOptions } from './stage-state.ts';
export { modelIdOf } from './model-id.ts';
