// The admin API's JSON for ledger records and sessions: one shape for the gateway's
// /admin/v1/migrations and /admin/v1/sessions, the dashboard that reads them, and `strata … --json`.
import { splitSessionKey } from './session-key.ts';
import type { MigrationInfo, SessionInfo } from './gen/strata/v1/coordinator_pb.ts';

/** One part of a migration plan: a source stage sends layers [l0, l1) to a target stage. */
export interface PlanPartJson {
  source: string;
  target: string;
  l0: number;
  l1: number;
}

/** A migration as the admin API shows it (snake_case, milliseconds, bytes). */
export interface MigrationJson {
  id: string;
  session_id: string;
  from: string;
  to: string;
  /** planned, copying, switching, done, aborted */
  state: string;
  reason: string;
  /** why it aborted; null otherwise */
  error: string | null;
  bytes: number;
  rounds: number;
  positions: number;
  copy_ms: number;
  hold_ms: number;
  pause_ms: number;
  total_ms: number;
  /** milliseconds since the epoch */
  created: number;
  plan: PlanPartJson[];
}

/** A session as the admin API shows it. */
export interface SessionJson {
  /** the session's key: [<tenant>:]<id> */
  id: string;
  /** the tenant that owns it ('' without API keys) */
  tenant: string;
  pipeline: string;
  seq: number;
  /** positions every stage of its pipeline holds (KV cells per stage) */
  positions: number;
  busy: boolean;
  moving: boolean;
  /** milliseconds since the epoch */
  last_used: number;
  epoch: number;
  /** saved to its pipeline's workers' tiers: no cells on the stages (seq -1) until its next turn */
  saved: boolean;
}

/** Migration states that are not final. */
export const MIGRATION_ACTIVE_STATES: readonly string[] = ['planned', 'copying', 'switching'];

/** A ledger record in the admin API's JSON. */
export function migrationJson(m: MigrationInfo): MigrationJson {
  let plan: PlanPartJson[] = [];
  try {
    const parsed = JSON.parse(m.plan || '[]') as unknown;
    if (Array.isArray(parsed)) plan = parsed as PlanPartJson[];
  } catch {
    // a plan the ledger could not hold whole: shown as none
  }
  return {
    id: m.id, session_id: m.sessionId, from: m.fromPipeline, to: m.toPipeline, state: m.state, reason: m.reason, error: m.error || null,
    bytes: Number(m.bytes), rounds: m.rounds, positions: m.positions, copy_ms: m.copyMs, hold_ms: m.holdMs, pause_ms: m.pauseMs, total_ms: m.totalMs,
    created: Number(m.createdMs), plan,
  };
}

/** A session in the admin API's JSON. */
export function sessionJson(s: SessionInfo): SessionJson {
  return { id: s.id, tenant: splitSessionKey(s.id).tenant, pipeline: s.pipelineId, seq: s.seq, positions: s.positions, busy: s.busy, moving: s.moving, last_used: Number(s.lastUsedMs), epoch: Number(s.epoch), saved: s.saved };
}
