// The migration ledger in Redis: a hash per migration and a Redis Stream entry for every state
// change, so operators (and a coordinator that restarts) can see what happened and why.
//   strata:migration:<id>     hash    id, session, from, to, plan, state, reason, error, bytes,
//                                     rounds, copyMs, holdMs, pauseMs, totalMs, createdMs, positions,
//                                     owner, target_seq
//   strata:migrations         stream  one entry per state change: id, session, state, reason/error
//   strata:migrations:index   zset    id by created_ms (listing, most recent first)
//   strata:migrations:active  set     ids not yet done or aborted
import type { Redis } from 'ioredis';

/** States a migration passes through. */
export type MigrationState = 'planned' | 'copying' | 'switching' | 'done' | 'aborted';

/** A migration's record. */
export interface MigrationRecord {
  id: string;
  session: string;
  from: string;
  to: string;
  /** JSON: [{source, target, l0, l1}] */
  plan: string;
  state: MigrationState;
  reason: string;
  error: string;
  bytes: number;
  rounds: number;
  /** milliseconds: pre-copy; waiting for the step in flight at the hold; no decoding (pause) */
  copyMs: number;
  holdMs: number;
  pauseMs: number;
  totalMs: number;
  createdMs: number;
  positions: number;
  /** coordinator running it */
  owner: string;
  targetSeq: number;
}

const key = (id: string) => `strata:migration:${id}`;
const STREAM = 'strata:migrations';
const INDEX = 'strata:migrations:index';
const ACTIVE = 'strata:migrations:active';

function toHash(r: Partial<MigrationRecord>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(r)) if (v !== undefined) out[k] = String(v);
  return out;
}

function fromHash(h: Record<string, string>): MigrationRecord {
  const n = (k: string) => Number(h[k] ?? 0);
  return {
    id: h.id ?? '', session: h.session ?? '', from: h.from ?? '', to: h.to ?? '', plan: h.plan ?? '[]', state: (h.state ?? 'planned') as MigrationState,
    reason: h.reason ?? '', error: h.error ?? '', bytes: n('bytes'), rounds: n('rounds'), copyMs: n('copyMs'), holdMs: n('holdMs'), pauseMs: n('pauseMs'), totalMs: n('totalMs'),
    createdMs: n('createdMs'), positions: n('positions'), owner: h.owner ?? '', targetSeq: n('targetSeq'),
  };
}

/** Migrations in Redis. */
export class MigrationLedger {
  readonly #redis: Redis;

  constructor(redis: Redis) {
    this.#redis = redis;
  }

  /** Records a new migration as planned. */
  async create(r: MigrationRecord): Promise<void> {
    await this.#redis.multi()
      .hset(key(r.id), toHash(r))
      .zadd(INDEX, r.createdMs, r.id)
      .sadd(ACTIVE, r.id)
      .xadd(STREAM, 'MAXLEN', '~', '10000', '*', 'id', r.id, 'session', r.session, 'state', r.state, 'from', r.from, 'to', r.to, 'reason', r.reason)
      .exec();
  }

  /** Moves a migration to `state`, with the fields that changed. */
  async update(id: string, session: string, state: MigrationState, fields: Partial<MigrationRecord> = {}): Promise<void> {
    const m = this.#redis.multi().hset(key(id), toHash({ ...fields, state }));
    m.xadd(STREAM, 'MAXLEN', '~', '10000', '*', 'id', id, 'session', session, 'state', state, 'error', fields.error ?? '');
    if (state === 'done' || state === 'aborted') m.srem(ACTIVE, id);
    await m.exec();
  }

  /** A migration's record, or null. */
  async get(id: string): Promise<MigrationRecord | null> {
    const h = await this.#redis.hgetall(key(id));
    return h.id ? fromHash(h) : null;
  }

  /** The most recent migrations, newest first. */
  async list(limit: number): Promise<MigrationRecord[]> {
    const ids = await this.#redis.zrevrange(INDEX, 0, limit - 1);
    const hs = await Promise.all(ids.map((id) => this.#redis.hgetall(key(id))));
    return hs.filter((h) => h.id).map(fromHash);
  }

  /** Migrations neither done nor aborted. */
  async active(): Promise<MigrationRecord[]> {
    const ids = await this.#redis.smembers(ACTIVE);
    const hs = await Promise.all(ids.map((id) => this.#redis.hgetall(key(id))));
    return hs.filter((h) => h.id).map(fromHash);
  }

  /** The state changes of one migration, in order (from the stream). */
  async history(id: string): Promise<MigrationState[]> {
    const entries = await this.#redis.xrange(STREAM, '-', '+');
    const out: MigrationState[] = [];
    for (const [, fields] of entries) {
      const f = new Map<string, string>();
      for (let i = 0; i + 1 < fields.length; i += 2) f.set(fields[i]!, fields[i + 1]!);
      if (f.get('id') === id) out.push(f.get('state') as MigrationState);
    }
    return out;
  }
}
