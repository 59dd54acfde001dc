// The drain actor: takes a worker's pipeline out of service (no new request, no session) and
// moves every session off it so the worker can stop, puts it back on an undrain, and keeps the
// schedulers' `draining` flags equal to the drain marks (drains.ts) that Redis keeps
// (drain-book.ts). It reads the coordinator's pipelines and migrations, and moves sessions
// through the coordinator's migrate().
import type { Logger } from '@strata/log';
import type { DrainReply, StageInfo, UndrainReply } from '@strata/wire';
import type { ClusterState } from './cluster.ts';
import { DrainBook } from './drain-book.ts';
import { CoordinatorError } from './errors.ts';
import type { MigrationRecord } from './ledger.ts';
import { migrationInfo } from './migration.ts';
import type { Moving } from './migrator.ts';
import { drainRefusal } from './placement.ts';
import type { PipelineScheduler } from './scheduler.ts';

/** What the drain actor needs from the coordinator. */
export interface DrainerDeps {
  book: DrainBook;
  cluster: ClusterState;
  schedulers: ReadonlyMap<string, PipelineScheduler>;
  /** session -> migration under way */
  moving: ReadonlyMap<string, Moving>;
  /** moves a session to the least loaded other pipeline that takes work; resolves when it ended */
  migrate: (session: string, reason: string) => Promise<MigrationRecord>;
  log: Logger;
}

/** Draining passes at most: each moves what landed on the pipeline during the one before. */
const PASSES = 3;
/** One-off requests are waited for at most this long (milliseconds). */
const ONE_OFF_WAIT_MS = 60_000;

/** Drains and undrains pipelines. */
export class Drainer {
  readonly #d: DrainerDeps;
  #loading = false;

  constructor(d: DrainerDeps) {
    this.#d = d;
  }

  /** Whether a pipeline of these stages is drained. */
  drains(stages: readonly StageInfo[]): boolean {
    return this.#d.book.drains(stages);
  }

  /**
   * Drains the pipeline of `workerId`: it takes no new request and no session from now on (kept
   * in Redis, so a new leader keeps it, until the worker restarts or stops, or an undrain), every
   * session moves off it, and its one-off requests are waited for, so the worker can stop.
   * Refused (last_pipeline) when the model would be left with no pipeline that takes work,
   * unless `force`.
   */
  async drain(workerId: string, force: boolean): Promise<DrainReply> {
    const { cluster, schedulers, book, log } = this.#d;
    const pid = cluster.memberOf.get(workerId);
    const src = pid === undefined ? undefined : schedulers.get(pid);
    const worker = cluster.workers.get(workerId);
    if (!src || !worker) throw new CoordinatorError('not_found', `worker ${workerId} is in no pipeline`);
    if (!book.loaded) throw new CoordinatorError('unavailable', 'the drains kept in Redis have not been read yet; retry in a moment');
    if (!src.draining) {
      // Decided and marked with no await between: of two drains at once, the second sees the first.
      const refusal = force ? null : drainRefusal(workerId, { ...src.view, draining: false }, [...schedulers.values()]);
      if (refusal) throw new CoordinatorError('last_pipeline', refusal);
      const marked = book.mark({ worker: workerId, startedAtMs: Number(worker.info.startedAtMs), pipeline: src.view.id, forced: force, atMs: Date.now() });
      this.apply();
      try {
        await marked;
      } catch (err) {
        this.apply();
        throw new CoordinatorError('unavailable', `the drain could not be kept in Redis: ${(err as Error).message}`);
      }
    }
    log.info('draining', { pipeline: src.view.id, worker: workerId, force });
    const records = await this.#moveAllOff(src.view.id, `drain ${workerId}`);
    let waited = 0;
    for (const until = Date.now() + ONE_OFF_WAIT_MS; Date.now() < until;) {
      const p = schedulers.get(src.view.id);
      if (!p?.draining || p.oneOff === 0) break;
      waited = Math.max(waited, p.oneOff);
      await new Promise((r) => setTimeout(r, 100));
    }
    const now = schedulers.get(src.view.id);
    return {
      $typeName: 'strata.v1.DrainReply', pipelineId: src.view.id, migrations: records.map(migrationInfo), waited,
      failed: now?.sessionIds().length ?? 0, undrained: now !== undefined && !now.draining,
    };
  }

  /**
   * Moves every session off pipeline `pid` while it drains, in passes: each first waits for the
   * migrations into it (a session that lands there anyway moves on), then moves what lives there;
   * a pass that moved nothing is the last. Stops when the pipeline goes down or is undrained.
   */
  async #moveAllOff(pid: string, reason: string): Promise<MigrationRecord[]> {
    const { schedulers, moving, migrate, log } = this.#d;
    const here = () => {
      const p = schedulers.get(pid);
      return p?.draining ? p : undefined;
    };
    const records: MigrationRecord[] = [];
    for (let pass = 0; pass < PASSES && here(); pass++) {
      for (const m of [...moving.values()]) if (m.to === pid) await m.finished;
      let moved = 0;
      for (const session of here()?.sessionIds() ?? []) {
        if (!here()?.session(session)) continue;
        try {
          // A session moving already (an operator's migrate, the rebalancer) is waited for.
          const r = await (moving.get(session)?.finished ?? migrate(session, reason));
          if (r) records.push(r);
          if (r?.state === 'done') moved++;
        } catch (err) {
          log.warn('a session could not leave a draining pipeline', { session, err });
        }
      }
      if (moved === 0) break;
    }
    return records;
  }

  /**
   * Lets the pipeline of `workerId` take work again: forgets the drain of every worker of it (of
   * the worker alone when it is in no pipeline now). A drain still moving sessions off it stops.
   */
  async undrain(workerId: string): Promise<UndrainReply> {
    const { cluster, schedulers, book, log } = this.#d;
    if (!book.loaded) throw new CoordinatorError('unavailable', 'the drains kept in Redis have not been read yet; retry in a moment');
    const pid = cluster.memberOf.get(workerId);
    const p = pid === undefined ? undefined : schedulers.get(pid);
    if (!p && !book.has(workerId)) throw new CoordinatorError('not_found', `worker ${workerId} is in no pipeline and not drained`);
    const forgotten = book.forget(p ? p.view.stages.map((s) => s.workerId) : [workerId]);
    this.apply();
    let gone: readonly { worker: string }[];
    try {
      gone = await forgotten;
    } catch (err) {
      this.apply();
      throw new CoordinatorError('unavailable', `the undrain could not be kept in Redis: ${(err as Error).message}`);
    }
    const workers = gone.map((m) => m.worker);
    if (workers.length > 0) log.info('undrained', { pipeline: p?.view.id ?? '', workers });
    return { $typeName: 'strata.v1.UndrainReply', pipelineId: p?.view.id ?? '', workers };
  }

  /** Every pipeline drains or not as the marks say. */
  apply(): void {
    for (const s of this.#d.schedulers.values()) s.draining = this.#d.book.drains(s.view.stages);
  }

  /** Reads the marks from Redis (a new leader; again on every tick until it could). */
  async load(): Promise<void> {
    if (this.#loading) return;
    this.#loading = true;
    try {
      const marks = await this.#d.book.load();
      this.apply();
      if (marks.length > 0) this.#d.log.info('drains kept in Redis', { workers: marks.map((m) => m.worker) });
    } catch (err) {
      this.#d.log.warn('the drains could not be read from Redis: no drain or undrain is taken until they are', { err });
    } finally {
      this.#loading = false;
    }
  }

  /** On every tick of the leader: reads the marks until it could, then forgets the stale ones. */
  tick(): void {
    if (!this.#d.book.loaded) {
      void this.load();
      return;
    }
    const workers = new Map([...this.#d.cluster.workers].map(([id, w]) => [id, { startedAtMs: Number(w.info.startedAtMs), stopping: w.draining }]));
    const stale = this.#d.book.stale(workers);
    if (stale.length === 0) return;
    void this.#d.book.forget(stale).then(
      (gone) => this.#d.log.info('forgot the drains of workers that restarted or stopped', { workers: gone.map((m) => m.worker) }),
      (err: unknown) => this.#d.log.warn('stale drains could not be removed from Redis', { err }),
    );
  }

  /** Forgets the marks (standing down): the next lead reads Redis again. */
  unload(): void {
    this.#d.book.unload();
  }
}
