// The drains the leader honours, kept in Redis so that a new leader honours them too:
//   strata:drains   hash  worker id -> JSON DrainMark (drains.ts)
// The leader reads them once when it takes the lead (until then it neither drains nor undrains)
// and mirrors them in memory: placement asks the mirror, never Redis.
import type { Redis } from 'ioredis';
import type { StageInfo } from '@strata/wire';
import { decodeMark, drainOf, encodeMark, staleMarks, type DrainMark, type MarkedWorker } from './drains.ts';

const KEY = 'strata:drains';

/** Drain marks: Redis, and the leader's copy of it. */
export class DrainBook {
  readonly #redis: Redis;
  readonly #marks = new Map<string, DrainMark>();
  #loaded = false;

  constructor(redis: Redis) {
    this.#redis = redis;
  }

  /** Whether the marks have been read since this coordinator took the lead. */
  get loaded(): boolean {
    return this.#loaded;
  }

  /** Reads every mark from Redis (a new leader); malformed entries are left out. */
  async load(): Promise<DrainMark[]> {
    const h = await this.#redis.hgetall(KEY);
    this.#marks.clear();
    for (const [worker, text] of Object.entries(h)) {
      const m = decodeMark(worker, text);
      if (m) this.#marks.set(worker, m);
    }
    this.#loaded = true;
    return [...this.#marks.values()];
  }

  /** Forgets the copy (standing down): the next lead reads Redis again. */
  unload(): void {
    this.#marks.clear();
    this.#loaded = false;
  }

  /** Whether a pipeline of these stages is drained. */
  drains(stages: readonly StageInfo[]): boolean {
    return drainOf(stages, this.#marks) !== null;
  }

  /** Whether `worker` has a mark. */
  has(worker: string): boolean {
    return this.#marks.has(worker);
  }

  /**
   * Adds a mark: in memory at once (before the first await, so a second drain decided in the
   * meantime sees it), then in Redis; a failed write takes it back out and throws.
   */
  async mark(m: DrainMark): Promise<void> {
    const before = this.#marks.get(m.worker);
    this.#marks.set(m.worker, m);
    try {
      await this.#redis.hset(KEY, m.worker, encodeMark(m));
    } catch (err) {
      if (this.#marks.get(m.worker) === m) {
        if (before) this.#marks.set(m.worker, before);
        else this.#marks.delete(m.worker);
      }
      throw err;
    }
  }

  /** Removes the marks of `workers` (in memory at once, then in Redis; a failed write puts them back and throws). */
  async forget(workers: readonly string[]): Promise<DrainMark[]> {
    const gone = workers.map((w) => this.#marks.get(w)).filter((m): m is DrainMark => m !== undefined);
    if (gone.length === 0) return [];
    for (const m of gone) this.#marks.delete(m.worker);
    try {
      await this.#redis.hdel(KEY, ...gone.map((m) => m.worker));
    } catch (err) {
      for (const m of gone) if (!this.#marks.has(m.worker)) this.#marks.set(m.worker, m);
      throw err;
    }
    return gone;
  }

  /** Workers whose marks drain nothing any more (drains.ts, staleMarks): for {@link forget}. */
  stale(workers: ReadonlyMap<string, MarkedWorker>): string[] {
    return staleMarks(this.#marks, workers);
  }
}
