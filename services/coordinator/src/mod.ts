// @strata/coordinator: the cluster actor, each pipeline's pure core and its scheduler, jobs, placement, migrations, and the process around them.
export { clusterTransition, initialCluster, pipelineId, type ClusterEffect, type ClusterMsg, type ClusterOptions, type ClusterState, type PipelineView, type WorkerView } from './cluster.ts';
export { applyPlan, decodeCap, planMicroBatch, type BatchLimits, type PlannedEntry } from './batcher.ts';
export { coordinatorConfig, coordinatorSchema, type CoordinatorConfig } from './config.ts';
export { Coordinator } from './coordinator.ts';
export { CoordinatorError } from './errors.ts';
export { drainOf, staleMarks, type DrainMark, type MarkedWorker } from './drains.ts';
export { drainRefusal, leastLoaded, placeMove, placeRebuild, placeRequest, type DrainTarget, type Placeable, type Placement, type Refusal } from './placement.ts';
export { refuse } from './replies.ts';
export { PipelineScheduler, type SchedulerDeps } from './scheduler.ts';
export { commonPrefix, openPipeline, transition, type PipelineCore, type PipelineEffect, type PipelineMsg, type PipelineOptions } from './pipeline-core.ts';
export { SeqRoom, type Resident, type RoomAsk, type RoomGrant } from './seq-room.ts';
export { SessionStore, type SessionRecord } from './session-store.ts';
export { cachedTokens, jobTransition, newJob, type Job, type JobEffect, type JobMsg } from './job.ts';
export { pickRebalance, type PipelineLoad, type RebalanceMove } from './rebalance.ts';
