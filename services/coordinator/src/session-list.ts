// The operators' list of sessions (strata.v1.coordinator.sessions): what every pipeline's
// scheduler holds, merged and ordered. Pure: the coordinator hands it the schedulers' snapshots.
import type { SessionInfo, SessionList } from '@strata/wire';
import type { SessionView } from './pipeline-core.ts';

/** Sessions answered when a request gives no limit. */
export const DEFAULT_SESSION_LIMIT = 1000;
/** Sessions answered at most, whatever the request asks. */
export const MAX_SESSION_LIMIT = 10_000;

/** One pipeline's snapshot. */
export interface PipelineSessions {
  pipelineId: string;
  sessions: readonly SessionView[];
}

/**
 * Every session of `pipelines`, busy or moving ones first, then the most recently used, then by
 * id; at most `limit` (0: {@link DEFAULT_SESSION_LIMIT}). `moving` names sessions a migration holds
 * (the coordinator's own record, which covers the time before the source marks them).
 */
export function listSessions(pipelines: readonly PipelineSessions[], moving: ReadonlySet<string>, limit: number): SessionList {
  const all: SessionInfo[] = [];
  for (const p of pipelines) {
    for (const s of p.sessions) {
      all.push({
        $typeName: 'strata.v1.SessionInfo', id: s.id, pipelineId: p.pipelineId, seq: s.seq, positions: s.positions, busy: s.busy,
        moving: s.moving || moving.has(s.id), lastUsedMs: BigInt(Math.max(0, Math.floor(s.lastUsedMs))), epoch: BigInt(Math.max(0, s.epoch)), saved: s.saved,
      });
    }
  }
  const active = (s: SessionInfo) => (s.busy || s.moving ? 1 : 0);
  all.sort((a, b) => active(b) - active(a) || Number(b.lastUsedMs - a.lastUsedMs) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const n = Math.min(limit > 0 ? limit : DEFAULT_SESSION_LIMIT, MAX_SESSION_LIMIT);
  return { $typeName: 'strata.v1.SessionList', sessions: all.slice(0, n), total: all.length };
}
