// The migrations' runtime in the coordinator: which sessions are moving, starting a migration
// (its target from placement.ts, its pipelines through their ports, its world in MigrationDeps),
// the rebalancer's moves (rebalance.ts decides), and finishing the migrations a previous leader
// left in the ledger.
import type { Logger } from '@strata/log';
import { isSessionKey } from '@strata/wire';
import type { NatsConnection } from 'nats';
import type { ClusterState } from './cluster.ts';
import { CoordinatorError } from './errors.ts';
import { natsPush } from './kv-push.ts';
import type { MigrationLedger, MigrationRecord } from './ledger.ts';
import { startMigration, type MigrationDeps, type MigrationOptions } from './migration.ts';
import { handOff, type HandOffResult } from './handoff.ts';
import { decodeTargets, placeMove } from './placement.ts';
import { stageCells } from './pipeline-state.ts';
import { pickRebalance } from './rebalance.ts';
import type { PipelineScheduler } from './scheduler.ts';
import type { SessionStore } from './session-store.ts';
import { countHandOff } from './telemetry.ts';

/** A migration under way, as the coordinator tracks it. */
export interface Moving {
  /** target pipeline */
  to: string;
  /** its end (null: it never started) */
  finished: Promise<MigrationRecord | null>;
}

/** What the migrations need from the coordinator. */
export interface MigratorDeps {
  nc: NatsConnection;
  ledger: MigrationLedger;
  store: SessionStore;
  log: Logger;
  /** the coordinator's id (the ledger's owner of its migrations) */
  owner: string;
  options: MigrationOptions;
  /** the leader term now (sources fence by it) */
  term: () => number;
  /** the proof of fence (term, generation) (empty when terms are not signed) */
  proof: (term: bigint, generation: bigint) => Uint8Array;
  schedulers: ReadonlyMap<string, PipelineScheduler>;
  cluster: ClusterState;
  /** the rebalancer's watermarks: a worker past `high` KV occupancy sheds a session to a pipeline below `low` (high 0: off) */
  rebalance: { high: number; low: number };
}

/** Starts, tracks and recovers migrations. */
export class Migrator {
  /** session -> migration under way */
  readonly moving = new Map<string, Moving>();
  readonly #d: MigratorDeps;

  constructor(d: MigratorDeps) {
    this.#d = d;
  }

  /**
   * Moves a session to `to` (or the least loaded other pipeline of its model that takes work);
   * with `wait`, resolves when it ended. A draining pipeline takes no session. One migration of a
   * session at a time: the session counts as moving from this call on, before the first await,
   * so a second call meanwhile is refused (session_busy).
   */
  async migrate(session: string, to: string, reason: string, wait: boolean): Promise<MigrationRecord> {
    const d = this.#d;
    if (!isSessionKey(session)) throw new CoordinatorError('bad_request', 'a session is [<tenant>:]<id>: tenant 1-40 of A-Z a-z 0-9 -, id 1-128 of A-Z a-z 0-9 _ -');
    if (this.moving.has(session)) throw new CoordinatorError('session_busy', `session ${session} is already moving`);
    const pipelines = [...d.schedulers.values()];
    const src = pipelines.find((s) => s.session(session) !== null);
    if (!src) {
      const saved = pipelines.find((s) => s.holds(session));
      if (saved) throw new CoordinatorError('bad_request', `session ${session} is saved to the tiers of pipeline ${saved.view.id}'s workers: its next turn brings it back, then it can move`);
      throw new CoordinatorError('not_found', `no pipeline holds session ${session}`);
    }
    const placed = placeMove(pipelines, session, src, to, src.session(session)?.done ?? 0);
    if ('refused' in placed) throw new CoordinatorError(placed.refused.code, placed.refused.message);
    const dst = placed.to;
    const deps: MigrationDeps = {
      ledger: d.ledger, claim: (s, pipeline) => d.store.claim(s, pipeline), log: d.log, owner: d.owner, options: d.options,
      push: natsPush({ nc: d.nc, term: d.term(), proof: d.proof, timeoutMs: d.options.pushTimeoutMs }),
    };
    const started = startMigration(deps, session, src.source, dst.target, reason);
    const entry: Moving = { to: dst.view.id, finished: started.then((m) => m.finished).catch(() => null) };
    this.moving.set(session, entry);
    // (Registered first, so it runs before anyone awaiting the end sees it.)
    void entry.finished.then(() => {
      if (this.moving.get(session) === entry) this.moving.delete(session);
    });
    const mig = await started;
    return wait ? (await entry.finished) ?? mig.record : mig.record;
  }

  /**
   * Moves a request (or session) that `from`, a prefill pipeline, starts to the least loaded
   * decode pipeline of its model with room (handoff.ts): its KV is copied as it is computed, and
   * it switches once `prefilled` (its first token) resolves; where no pipeline takes it, it
   * decodes on `from`.
   */
  async handOff(from: PipelineScheduler, key: string, prefilled: Promise<void>): Promise<HandOffResult> {
    const d = this.#d;
    const targets = decodeTargets([...d.schedulers.values()], from);
    const push = natsPush({ nc: d.nc, term: d.term(), proof: d.proof, timeoutMs: d.options.pushTimeoutMs });
    const r = await handOff({ push, claim: (s, pipeline) => d.store.claim(s, pipeline) }, key, from.source, targets.map((t) => t.target), prefilled);
    if (r.outcome === 'done') {
      from.handOffsOut++;
      const to = d.schedulers.get(r.to);
      if (to) to.handOffsIn++;
      d.log.debug('handed a request to a decode pipeline', { key, from: from.view.id, to: r.to, bytes: r.bytes, positions: r.positions, pauseMs: Math.round(r.pauseMs) });
    } else if (r.outcome === 'stayed') {
      from.handOffsFailed++;
      d.log.warn('a prefilled request decodes on its prefill pipeline: no hand-off', { key, pipeline: from.view.id, error: r.error });
    }
    countHandOff(from.view.id, r);
    return r;
  }

  /**
   * The rebalancer: when a worker's KV occupancy passes the high watermark, the largest session of
   * its pipeline that fits moves to the emptiest other pipeline of the model, so long as that one
   * stays below the low watermark with it. One move at a time.
   */
  rebalance(): void {
    const { schedulers, cluster, rebalance, log } = this.#d;
    if (this.moving.size > 0) return;
    const loads = [...schedulers.values()].map((s) => ({
      id: s.view.id, fingerprint: s.view.fingerprint, draining: s.draining, prefill: s.role === 'prefill',
      occupancy: Math.max(...s.view.stages.map((st) => {
        const w = cluster.workers.get(st.workerId);
        return w && st.kvCells > 0 ? w.kvCellsUsed / stageCells(st) : 0;
      })),
      cells: Math.min(...s.view.stages.map(stageCells)),
      perSeq: s.context,
      sessions: s.sessionIds().map((id) => ({ id, cells: s.session(id)?.done ?? 0 })),
    }));
    const move = pickRebalance(loads, rebalance.high, rebalance.low);
    if (!move) return;
    log.info('rebalancing', { ...move });
    void this.migrate(move.session, move.to, `rebalance: ${(move.occupancy * 100).toFixed(0)}% of KV cells used`, false).catch((err: unknown) => log.warn('rebalance failed', { err }));
  }

  /**
   * Migrations a previous coordinator left unfinished: the epoch claim is the commit point, so one
   * whose session is now owned by its target is done, and any other aborted. (The target's
   * sequence is emptied when its pipeline comes up: a new coordinator clears every sequence.)
   */
  async recover(): Promise<void> {
    const { ledger, store, log } = this.#d;
    for (const m of await ledger.active()) {
      const s = await store.get(m.session);
      const committed = m.state === 'switching' && s?.pipeline === m.to;
      await ledger.update(m.id, m.session, committed ? 'done' : 'aborted', committed ? {} : { error: `coordinator ${m.owner} stopped during the migration (${m.state})` });
      log.warn('finished a migration from the ledger', { migration: m.id, state: committed ? 'done' : 'aborted' });
    }
  }

  /** The most recent migrations of the ledger, newest first. */
  list(limit: number): Promise<MigrationRecord[]> {
    return this.#d.ledger.list(limit);
  }
}
