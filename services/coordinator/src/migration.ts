// The migration actor: moves one session's KV state from the stages of one pipeline to the
// stages of another, possibly split at other layers, while it keeps decoding (DESIGN.md,
// "Migration"): plan by layer overlap, pre-copy in rounds while the session decodes, hold it for
// the cells written since, switch ownership in Redis (epoch + 1), resume on the target, drop on
// the source. Any failure before the switch aborts: the source never stopped owning the
// session, the target frees what it took, the ledger says why.
import { randomBytes } from 'node:crypto';
import type { Logger } from '@strata/log';
import { MigrateOutReplySchema, MigrateOutRequestSchema, request, subjects, type MigrationInfo, type StageInfo } from '@strata/wire';
import type { NatsConnection } from 'nats';
import { CoordinatorError } from './errors.ts';
import type { MigrationLedger, MigrationRecord } from './ledger.ts';
import type { PipelineScheduler } from './scheduler.ts';
import { cellsNeeded } from './session.ts';
import type { SessionStore } from './session-store.ts';
import { traceMigration } from './telemetry.ts';
import { context } from '@opentelemetry/api';
import { natsHeaders } from '@strata/telemetry';

/** One source stage feeding one target stage with the layers both hold. */
export interface PlanPart {
  source: StageInfo;
  target: StageInfo;
  /** layers, half-open */
  l0: number;
  l1: number;
}

/** For every target stage, the source stages that hold its layers, and which layers each sends. */
export function planMigration(from: readonly StageInfo[], to: readonly StageInfo[]): PlanPart[] {
  const parts: PlanPart[] = [];
  for (const target of to) {
    for (const source of from) {
      const l0 = Math.max(source.l0, target.l0), l1 = Math.min(source.l1, target.l1);
      if (l0 < l1) parts.push({ source, target, l0, l1 });
    }
  }
  const covered = to.reduce((n, t) => n + (t.l1 - t.l0), 0);
  if (parts.reduce((n, p) => n + (p.l1 - p.l0), 0) !== covered) throw new CoordinatorError('bad_plan', 'the source pipeline does not hold every layer of the target');
  return parts;
}

/** Settings of migrations. */
export interface MigrationOptions {
  /** pre-copy rounds at most before the hold */
  maxRounds: number;
  /** a round that would send at most this many new positions goes straight to the hold */
  deltaPositions: number;
  /** a source's push unanswered for this long fails the migration (milliseconds) */
  pushTimeoutMs: number;
}

/** What the migration actor needs from the coordinator. */
export interface MigrationDeps {
  nc: NatsConnection;
  ledger: MigrationLedger;
  store: SessionStore;
  log: Logger;
  owner: string;
  options: MigrationOptions;
  /** the owner's leader term (sources fence by it) */
  term: number;
  /** the proof of fence (term, generation) (empty when terms are not signed) */
  proof: (term: bigint, generation: bigint) => Uint8Array;
}

/** A migration under way or ended. */
export interface Migration {
  record: MigrationRecord;
  /** resolves when it is done or aborted */
  finished: Promise<MigrationRecord>;
}

/** A ledger record on the wire. */
export function migrationInfo(r: MigrationRecord): MigrationInfo {
  return {
    $typeName: 'strata.v1.MigrationInfo', id: r.id, sessionId: r.session, fromPipeline: r.from, toPipeline: r.to, state: r.state, reason: r.reason,
    error: r.error, bytes: BigInt(r.bytes), rounds: r.rounds, copyMs: r.copyMs, holdMs: r.holdMs, pauseMs: r.pauseMs, totalMs: r.totalMs, createdMs: BigInt(r.createdMs),
    plan: r.plan, positions: r.positions,
  };
}

/** Starts moving `session` from `src` to `dst`; the returned record is already in the ledger. */
export async function startMigration(d: MigrationDeps, session: string, src: PipelineScheduler, dst: PipelineScheduler, reason: string): Promise<Migration> {
  // Taken before the first await: the migration's span is a child of the caller's context.
  const parent = context.active();
  const st = src.session(session);
  if (!st) throw new CoordinatorError('not_found', `no session ${session} on pipeline ${src.view.id}`);
  if (src.view.fingerprint !== dst.view.fingerprint) throw new CoordinatorError('model_mismatch', `pipelines ${src.view.id} and ${dst.view.id} run different models`);
  const parts = planMigration(src.view.stages, dst.view.stages);
  const record: MigrationRecord = {
    id: `m-${randomBytes(8).toString('hex')}`, session, from: src.view.id, to: dst.view.id, state: 'planned', reason, error: '',
    plan: JSON.stringify(parts.map((p) => ({ source: p.source.workerId, target: p.target.workerId, l0: p.l0, l1: p.l1 }))),
    bytes: 0, rounds: 0, copyMs: 0, holdMs: 0, pauseMs: 0, totalMs: 0, createdMs: Date.now(), positions: st.done, owner: d.owner, targetSeq: -1,
  };
  await d.ledger.create(record);
  src.beginMigration(session);
  return { record, finished: traceMigration(record, parent, () => run(d, record, parts, src, dst)) };
}

async function run(d: MigrationDeps, m: MigrationRecord, parts: PlanPart[], src: PipelineScheduler, dst: PipelineScheduler): Promise<MigrationRecord> {
  const t0 = performance.now();
  let targetSeq: number | null = null;
  let switched = false;
  try {
    const st = src.session(m.session);
    if (!st) throw new CoordinatorError('not_found', `session ${m.session} left pipeline ${src.view.id}`);
    const cells = st.job ? cellsNeeded(st.job) : st.done;
    targetSeq = dst.reserveIncoming(cells);
    if (targetSeq === null) throw new CoordinatorError('no_room', `pipeline ${dst.view.id} cannot take ${cells} cells and a sequence`);
    m.targetSeq = targetSeq;
    await dst.clearSeq(targetSeq);
    await d.ledger.update(m.id, m.session, 'copying', { targetSeq });

    // Pre-copy while the session decodes: what every stage holds now, then what it wrote since.
    let sent = 0;
    for (let round = 1; round <= d.options.maxRounds; round++) {
      const end = src.session(m.session)?.done ?? sent;
      if (round > 1 && end - sent <= d.options.deltaPositions) break;
      m.bytes += await copy(d, m, parts, st.seq, targetSeq, sent, end);
      m.rounds = round;
      sent = end;
      if (!src.session(m.session)?.job) break;
    }
    m.copyMs = performance.now() - t0;
    await d.ledger.update(m.id, m.session, 'switching', { bytes: m.bytes, rounds: m.rounds, copyMs: m.copyMs });

    // Switch: hold the session, copy the cells written since, move ownership, resume on the target.
    // The pause is the time the session does not decode: from its last step's return to its
    // resumption on the target (the step in flight when the hold began still yields its token).
    const tHold = performance.now();
    await src.hold(m.session);
    const tHeld = performance.now();
    m.holdMs = tHeld - tHold;
    const end = src.session(m.session)?.done;
    if (end === undefined) throw new CoordinatorError('not_found', `session ${m.session} ended during the migration`);
    if (end > sent) m.bytes += await copy(d, m, parts, st.seq, targetSeq, sent, end);
    m.positions = end;
    // A pipeline that began draining meanwhile takes no session: it stays on the source.
    if (dst.draining) throw new CoordinatorError('pipeline_draining', `pipeline ${dst.view.id} began draining during the migration`);
    const epoch = await d.store.claim(m.session, dst.view.id);
    switched = true;
    dst.adopt(m.session, targetSeq, src.detach(m.session), epoch);
    m.pauseMs = performance.now() - tHeld;
    m.totalMs = performance.now() - t0;
    m.state = 'done';
    await d.ledger.update(m.id, m.session, 'done', { bytes: m.bytes, holdMs: m.holdMs, pauseMs: m.pauseMs, totalMs: m.totalMs, positions: m.positions });
    d.log.info('migration done', { migration: m.id, session: m.session, from: m.from, to: m.to, bytes: m.bytes, pauseMs: m.pauseMs, totalMs: m.totalMs });
    return m;
  } catch (err) {
    m.state = 'aborted';
    m.error = err instanceof CoordinatorError ? `${err.code}: ${err.message}` : (err as Error).message;
    m.totalMs = performance.now() - t0;
    if (!switched) {
      src.endMigration(m.session);
      if (targetSeq !== null) await dst.cancelIncoming(targetSeq).catch(() => {});
    }
    await d.ledger.update(m.id, m.session, 'aborted', { error: m.error, bytes: m.bytes, totalMs: m.totalMs }).catch((e: unknown) => d.log.error('ledger write failed', { err: e }));
    d.log.warn('migration aborted', { migration: m.id, session: m.session, error: m.error });
    return m;
  }
}

/** Positions [p0, p1) of every planned part, sources pushing to targets in parallel; bytes sent. */
async function copy(d: MigrationDeps, m: MigrationRecord, parts: PlanPart[], seq: number, targetSeq: number, p0: number, p1: number): Promise<number> {
  if (p1 <= p0) return 0;
  const replies = await Promise.all(parts.map(async (p) => {
    try {
      const r = await request(d.nc, subjects.workerMigrate(p.source.workerId), MigrateOutRequestSchema, {
        migrationId: m.id, seq, p0, p1, l0: p.l0, l1: p.l1, targetWorkerId: p.target.workerId, targetAddress: p.target.grpcAddress, targetSeq, timeoutMs: d.options.pushTimeoutMs, term: BigInt(d.term), fenceProof: d.proof(BigInt(d.term), 0n),
      }, MigrateOutReplySchema, d.options.pushTimeoutMs + 1000, natsHeaders());
      return { p, r };
    } catch (err) {
      throw new CoordinatorError('source_failed', `worker ${p.source.workerId} did not push layers ${p.l0}:${p.l1}: ${(err as Error).message}`);
    }
  }));
  let bytes = 0;
  for (const { p, r } of replies) {
    if (r.error) throw new CoordinatorError(r.error.code || 'push_failed', `${p.source.workerId} → ${p.target.workerId}: ${r.error.message}`);
    bytes += Number(r.bytes);
  }
  return bytes;
}
