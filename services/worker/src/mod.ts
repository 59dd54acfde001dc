// @strata/worker: a layer-shard worker serving one stage over NATS.
export { workerConfig, workerSchema, type WorkerConfig } from './config.ts';
export { WorkerError } from './errors.ts';
export { SamplerSet, largest, logSumExp, samplingOptions } from './samplers.ts';
export { StepRunner, stepErrorCode, type StepRunnerOptions } from './step-runner.ts';
export type { StepOutput } from './stage-protocol.ts';
export { Worker } from './worker.ts';
