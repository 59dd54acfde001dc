// Every NATS subject Strata uses, built here and nowhere else: strata.v1.<role>.<verb>[.<id>].
import { WireError } from './errors.ts';

const PREFIX = 'strata.v1';
// A NATS subject token: no dots, wildcards or whitespace.
const ID = /^[A-Za-z0-9_-]{1,128}$/;

/** Whether `id` can be one token of a subject (worker, coordinator, request and session ids). */
export function isId(id: string): boolean {
  return ID.test(id);
}

/** Throws unless `id` can be one token of a subject. */
export function checkId(id: string, what = 'id'): string {
  if (!ID.test(id)) throw new WireError('bad_subject', `${what} '${id}' must be 1-128 of A-Z a-z 0-9 _ -`);
  return id;
}

/** Whether `subject` is a gateway's subject for batched events (subjects.gatewayBatch). */
export function isGatewayBatch(subject: string): boolean {
  return /^strata\.v1\.gateway\.events\.batch-[A-Za-z0-9_-]{1,128}$/.test(subject);
}

/** Subjects, by role. */
export const subjects = {
  /** workers publish Heartbeat here */
  workerHeartbeat: () => `${PREFIX}.worker.heartbeat`,
  /** StageInput chunks for one worker */
  workerStep: (worker: string) => `${PREFIX}.worker.step.${checkId(worker, 'worker id')}`,
  /** RingTokens: a last stage's samples, to the first stage of its pipeline */
  workerRing: (worker: string) => `${PREFIX}.worker.ring.${checkId(worker, 'worker id')}`,
  /** SeqOpRequest -> SeqOpReply */
  workerSeq: (worker: string) => `${PREFIX}.worker.seq.${checkId(worker, 'worker id')}`,
  /** MigrateOutRequest -> MigrateOutReply: stream a sequence's state to a target stage */
  workerMigrate: (worker: string) => `${PREFIX}.worker.migrate.${checkId(worker, 'worker id')}`,
  /** StatsRequest -> StageStats */
  workerStats: (worker: string) => `${PREFIX}.worker.stats.${checkId(worker, 'worker id')}`,
  /** GenerateRequest -> GenerateReply (queue group: the leader answers) */
  coordinatorGenerate: () => `${PREFIX}.coordinator.generate`,
  /** GenerateRequest -> GenerateReply, to the leader by id (gateways, once they know it) */
  coordinatorGenerateAt: (coordinator: string) => `${PREFIX}.coordinator.generate.${checkId(coordinator, 'coordinator id')}`,
  /** CancelRequest */
  coordinatorCancel: () => `${PREFIX}.coordinator.cancel`,
  /** ClusterRequest -> ClusterState */
  coordinatorCluster: () => `${PREFIX}.coordinator.cluster`,
  /** MigrateRequest -> MigrateReply */
  coordinatorMigrate: () => `${PREFIX}.coordinator.migrate`,
  /** DrainRequest -> DrainReply */
  coordinatorDrain: () => `${PREFIX}.coordinator.drain`,
  /** UndrainRequest -> UndrainReply */
  coordinatorUndrain: () => `${PREFIX}.coordinator.undrain`,
  /** MigrationsRequest -> MigrationList */
  coordinatorMigrations: () => `${PREFIX}.coordinator.migrations`,
  /** SessionsRequest -> SessionList (the leader answers) */
  coordinatorSessions: () => `${PREFIX}.coordinator.sessions`,
  /** LeaderAnnouncement from the leader coordinator, at every lease renewal */
  coordinatorLeader: () => `${PREFIX}.coordinator.leader`,
  /** StepResult from last stages to one coordinator */
  coordinatorResult: (coordinator: string) => `${PREFIX}.coordinator.result.${checkId(coordinator, 'coordinator id')}`,
  /** GenerateEvent stream of one request */
  gatewayEvents: (request: string) => `${PREFIX}.gateway.events.${checkId(request, 'request id')}`,
  /**
   * GenerateEvents of one gateway's requests, batched per step: a gateway events subject whose id
   * starts with `batch-` (no request id does), so the roles' permissions cover it as they are
   */
  gatewayBatch: (gateway: string) => `${PREFIX}.gateway.events.batch-${checkId(gateway, 'gateway id')}`,
} as const;
