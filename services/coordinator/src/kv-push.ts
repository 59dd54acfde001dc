// A migration's pushes over NATS (MigrationDeps.push): the coordinator asks a source stage to
// push positions of its layers to a target stage, which the source does over gRPC (KvTransfer),
// and answers with the bytes sent.
import { MigrateOutReplySchema, MigrateOutRequestSchema, request, subjects } from '@strata/wire';
import { natsHeaders } from '@strata/telemetry';
import type { NatsConnection } from 'nats';
import { CoordinatorError } from './errors.ts';
import type { Push } from './migration.ts';

/** What pushes need from the coordinator. */
export interface PushDeps {
  nc: NatsConnection;
  /** the owner's leader term (sources fence by it) */
  term: number;
  /** the proof of fence (term, generation) (empty when terms are not signed) */
  proof: (term: bigint, generation: bigint) => Uint8Array;
  /** a source's push unanswered for this long fails (milliseconds) */
  timeoutMs: number;
}

/** Pushes over NATS: each resolves with the bytes sent, or throws CoordinatorError. */
export function natsPush(d: PushDeps): (p: Push) => Promise<number> {
  return async ({ migrationId, part, seq, targetSeq, p0, p1 }) => {
    let r;
    try {
      r = await request(d.nc, subjects.workerMigrate(part.source.workerId), MigrateOutRequestSchema, {
        migrationId, seq, p0, p1, l0: part.l0, l1: part.l1, targetWorkerId: part.target.workerId, targetAddress: part.target.grpcAddress, targetSeq,
        timeoutMs: d.timeoutMs, term: BigInt(d.term), fenceProof: d.proof(BigInt(d.term), 0n),
      }, MigrateOutReplySchema, d.timeoutMs + 1000, natsHeaders());
    } catch (err) {
      throw new CoordinatorError('source_failed', `worker ${part.source.workerId} did not push layers ${part.l0}:${part.l1}: ${(err as Error).message}`);
    }
    if (r.error) throw new CoordinatorError(r.error.code || 'push_failed', `${part.source.workerId} → ${part.target.workerId}: ${r.error.message}`);
    return Number(r.bytes);
  };
}
