// The migration actor: moves one session's KV state from the stages of one pipeline to the
// stages of another, possibly split at other layers, while it keeps decoding (DESIGN.md,
// "Migration"): plan by layer overlap, pre-copy in rounds while the session decodes, hold it for
// the cells written since, switch ownership in Redis (epoch + 1), resume on the target, drop on
// the source. Any failure before the switch aborts: the source never stopped owning the
// session, the target frees what it took, the ledger says why.
//
// It sees the two pipelines only through two ports, MigrationSource and MigrationTarget (each
// pipeline's scheduler serves both), and the world through MigrationDeps (the ledger, the
// session's claim, the pushes of KV state between stages); its decisions are in migration-plan.ts.
import { randomBytes } from 'node:crypto';
import type { Logger } from '@strata/log';
import type { MigrationInfo } from '@strata/wire';
import { context } from '@opentelemetry/api';
import type { PipelineView } from './cluster.ts';
import { CoordinatorError } from './errors.ts';
import type { MigrationLedger, MigrationRecord } from './ledger.ts';
import { planMigration, planRound, type PlanPart, type RoundOptions } from './migration-plan.ts';
import type { MovedSession } from './pipeline-core.ts';
import { traceMigration } from './telemetry.ts';

/** Where a session stands on its pipeline, as a migration sees it. */
export interface SessionPlace {
  /** its sequence on every stage */
  seq: number;
  /** positions [0, done) every stage holds */
  done: number;
  /** cells it takes on a target: to the end of its running request, else what it holds */
  cells: number;
  /** a request of it is running: its positions grow */
  decoding: boolean;
}

/** The pipeline a session moves off. */
export interface MigrationSource {
  readonly view: PipelineView;
  /** where the session stands here, or null when it is not here */
  place(session: string): SessionPlace | null;
  /** the session starts moving: no new request of it starts here from now on */
  begin(session: string): void;
  /** stops scheduling the session; resolves once none of its steps is in flight */
  hold(session: string): Promise<void>;
  /** gives the held session up (its sequence here is emptied): what the target adopts */
  handOver(session: string): MovedSession;
  /** the move failed before the switch: the session takes requests and decodes here again */
  stay(session: string): void;
}

/** The pipeline a session moves to. */
export interface MigrationTarget {
  readonly view: PipelineView;
  /** whether it drains now (it then takes no session) */
  draining(): boolean;
  /** a sequence and `cells` cells for the session, emptied on every stage (CoordinatorError no_room when there is no room) */
  reserve(cells: number): Promise<number>;
  /** takes the session, handed over at `epoch`, into the reserved sequence */
  adopt(session: string, seq: number, moved: MovedSession, epoch: number): void;
  /** gives the reservation up; resolves once its sequence is emptied */
  cancel(seq: number): Promise<void>;
}

/** One part of one pre-copy round: a source stage pushes positions [p0, p1) of its layers to a target stage. */
export interface Push {
  migrationId: string;
  part: PlanPart;
  seq: number;
  targetSeq: number;
  p0: number;
  p1: number;
}

/** Settings of migrations. */
export interface MigrationOptions extends RoundOptions {
  /** a source's push unanswered for this long fails the migration (milliseconds) */
  pushTimeoutMs: number;
}

/** What the migration actor needs from the coordinator. */
export interface MigrationDeps {
  ledger: Pick<MigrationLedger, 'create' | 'update'>;
  /** carries out one push; the bytes sent (CoordinatorError when it fails) */
  push: (p: Push) => Promise<number>;
  /** takes the session for `pipeline` in Redis: the switch; its new epoch */
  claim: (session: string, pipeline: string) => Promise<number>;
  log: Logger;
  /** the coordinator that runs it (in the ledger) */
  owner: string;
  options: MigrationOptions;
}

/** A migration under way or ended. */
export interface Migration {
  record: MigrationRecord;
  /** resolves when it is done or aborted */
  finished: Promise<MigrationRecord>;
}

/** Pushes positions [p0, p1) of sequence `seq` by every part of a plan into `targetSeq`, at once; the bytes sent. */
export async function pushRange(push: MigrationDeps['push'], parts: readonly PlanPart[], migrationId: string, seq: number, targetSeq: number, p0: number, p1: number): Promise<number> {
  const bytes = await Promise.all(parts.map((part) => push({ migrationId, part, seq, targetSeq, p0, p1 })));
  return bytes.reduce((a, b) => a + b, 0);
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
export async function startMigration(d: MigrationDeps, session: string, src: MigrationSource, dst: MigrationTarget, reason: string): Promise<Migration> {
  // Taken before the first await: the migration's span is a child of the caller's context.
  const parent = context.active();
  const st = src.place(session);
  if (!st) throw new CoordinatorError('not_found', `no session ${session} on pipeline ${src.view.id}`);
  if (src.view.fingerprint !== dst.view.fingerprint) throw new CoordinatorError('model_mismatch', `pipelines ${src.view.id} and ${dst.view.id} run different models`);
  const parts = planMigration(src.view.stages, dst.view.stages);
  const record: MigrationRecord = {
    id: `m-${randomBytes(8).toString('hex')}`, session, from: src.view.id, to: dst.view.id, state: 'planned', reason, error: '',
    plan: JSON.stringify(parts.map((p) => ({ source: p.source.workerId, target: p.target.workerId, l0: p.l0, l1: p.l1 }))),
    bytes: 0, rounds: 0, copyMs: 0, holdMs: 0, pauseMs: 0, totalMs: 0, createdMs: Date.now(), positions: st.done, owner: d.owner, targetSeq: -1,
  };
  await d.ledger.create(record);
  src.begin(session);
  return { record, finished: traceMigration(record, parent, () => run(d, record, parts, src, dst)) };
}

async function run(d: MigrationDeps, m: MigrationRecord, parts: PlanPart[], src: MigrationSource, dst: MigrationTarget): Promise<MigrationRecord> {
  const t0 = performance.now();
  let targetSeq: number | null = null;
  let switched = false;
  try {
    const st = src.place(m.session);
    if (!st) throw new CoordinatorError('not_found', `session ${m.session} left pipeline ${src.view.id}`);
    targetSeq = await dst.reserve(st.cells);
    m.targetSeq = targetSeq;
    await d.ledger.update(m.id, m.session, 'copying', { targetSeq });
    const copy = (p0: number, p1: number) => (p1 <= p0 ? Promise.resolve(0) : pushRange(d.push, parts, m.id, st.seq, targetSeq!, p0, p1));

    // Pre-copy while the session decodes: what every stage holds now, then what it wrote since.
    let sent = 0;
    for (let round = 1; ; round++) {
      const now = src.place(m.session);
      const plan = planRound({ round, sent, end: now?.done ?? sent, decoding: now?.decoding ?? false }, d.options);
      if ('switch' in plan) break;
      m.bytes += await copy(plan.copy.p0, plan.copy.p1);
      m.rounds = round;
      sent = plan.copy.p1;
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
    const end = src.place(m.session)?.done;
    if (end === undefined) throw new CoordinatorError('not_found', `session ${m.session} ended during the migration`);
    if (end > sent) m.bytes += await copy(sent, end);
    m.positions = end;
    // A pipeline that began draining meanwhile takes no session: it stays on the source.
    if (dst.draining()) throw new CoordinatorError('pipeline_draining', `pipeline ${dst.view.id} began draining during the migration`);
    const epoch = await d.claim(m.session, dst.view.id);
    switched = true;
    dst.adopt(m.session, targetSeq, src.handOver(m.session), epoch);
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
      src.stay(m.session);
      if (targetSeq !== null) await dst.cancel(targetSeq).catch(() => {});
    }
    await d.ledger.update(m.id, m.session, 'aborted', { error: m.error, bytes: m.bytes, totalMs: m.totalMs }).catch((e: unknown) => d.log.error('ledger write failed', { err: e }));
    d.log.warn('migration aborted', { migration: m.id, session: m.session, error: m.error });
    return m;
  }
}
