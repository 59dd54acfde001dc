// @strata/wire: the messages (buf-generated from proto/), NATS subjects, codecs and chunking.
export * from './gen/strata/v1/common_pb.ts';
export * from './gen/strata/v1/worker_pb.ts';
export * from './gen/strata/v1/coordinator_pb.ts';
export { StageInputAssembler, encodeStageInput, type StageMessage } from './activations.ts';
export { decode, encode, toJson } from './codec.ts';
export { MIGRATION_ACTIVE_STATES, migrationJson, sessionJson, type MigrationJson, type PlanPartJson, type SessionJson } from './admin-json.ts';
export { WireError } from './errors.ts';
export { checkId, isGatewayBatch, isId, subjects } from './subjects.ts';
export { isSessionKey, sessionKey, splitSessionKey } from './session-key.ts';
export { NATS_ROLES, natsPermissions, type NatsPermissions, type NatsRole } from './permissions.ts';
export { FenceGuard, FenceSigner, FenceVerifier } from './fence-proof.ts';
export * from './gen/strata/v1/kv_transfer_pb.ts';
export { grpcClient, grpcService } from './grpc.ts';
export { connectNats, drainNats, natsOptions, request, requestOnce } from './nats.ts';
