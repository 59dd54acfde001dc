// Leader election: coordinators race for one Redis key that expires unless its holder renews it.
//   strata:coordinator:lease   string  "<coordinator id>/<term>", expiring after the lease time
//   strata:coordinator:term    counter raised by every new leader
//   strata:coordinators        sorted set: coordinator id -> when its presence expires (ms)
// The term is the fencing token: the leader puts it on everything it sends workers, and workers
// drop what comes with an older term than the newest they have seen, so a leader that was paused
// past its lease (and does not know yet) cannot touch what its successor owns.
import type { Redis } from 'ioredis';

const LEASE = 'strata:coordinator:lease';
const TERM = 'strata:coordinator:term';
const MEMBERS = 'strata:coordinators';

// KEYS: lease, term; ARGV: id, ms. Takes a free lease under a new term; returns the term or 0.
const ACQUIRE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '/' .. term, 'PX', ARGV[2])
return term`;

// KEYS: lease, term; ARGV: holder, ms, term. Extends our own lease, or takes it back under the
// same term if it expired and no newer term was given out meanwhile (Redis restarted without the
// key, say: the counter is then restored too); 0: lost. A term once superseded never comes back:
// the workers fence it out, so a leader holding it again would hold the cluster up for nothing.
const RENEW = `
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v ~= false then return 0 end
local newest = tonumber(redis.call('GET', KEYS[2]) or '0')
local ours = tonumber(ARGV[3])
if newest > ours then return 0 end
if newest < ours then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`;

// KEYS: lease; ARGV: holder. Gives the lease up if it is still ours.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** How long a new term waits for a replica to hold it (Redis behind Sentinel), in milliseconds. */
const REPLICA_ACK_MS = 500;

/** The lease as held by one coordinator. */
export class LeaderLease {
  readonly #redis: Redis;
  readonly #id: string;
  readonly #ms: number;
  /** Redis is a primary with replicas (Sentinel): a term counts once a replica holds it */
  readonly #replicated: boolean;
  #term = 0;

  constructor(redis: Redis, id: string, ms: number, replicated = false) {
    this.#redis = redis;
    this.#id = id;
    this.#ms = ms;
    this.#replicated = replicated;
  }

  /** The term held, 0 when not the leader. */
  get term(): number {
    return this.#term;
  }

  #holder(): string {
    return `${this.#id}/${this.#term}`;
  }

  /** Takes the lease if it is free; the new term, or 0 when another coordinator holds it. */
  async acquire(): Promise<number> {
    const term = Number(await this.#redis.eval(ACQUIRE, 2, LEASE, TERM, this.#id, this.#ms));
    // Replication is asynchronous: a term the primary gave out and lost in a failover before any
    // replica had it would be given out again by the new primary, and two leaders would share a
    // fencing token. A term counts only once a replica holds it, when the primary has any (after
    // a failover that took the last one, the new primary alone holds everything); until then this
    // coordinator does not hold it.
    if (term > 0 && this.#replicated && (await this.#replicas()) > 0 && Number(await this.#redis.wait(1, REPLICA_ACK_MS)) < 1) {
      await this.#redis.eval(RELEASE, 1, LEASE, `${this.#id}/${term}`);
      return 0;
    }
    this.#term = term;
    return term;
  }

  /** Replicas connected to the primary now (INFO replication). */
  async #replicas(): Promise<number> {
    const info = await this.#redis.info('replication');
    return Number(/^connected_slaves:(\d+)/m.exec(info)?.[1] ?? 0);
  }

  /** Extends the lease; false when it was lost to another coordinator (the term is then 0). */
  async renew(): Promise<boolean> {
    if (this.#term === 0) return false;
    const ok = Number(await this.#redis.eval(RENEW, 2, LEASE, TERM, this.#holder(), this.#ms, this.#term)) === 1;
    if (!ok) this.#term = 0;
    return ok;
  }

  /** Gives the lease up at once, so a standby need not wait for it to expire. */
  async release(): Promise<void> {
    if (this.#term === 0) return;
    const holder = this.#holder();
    this.#term = 0;
    await this.#redis.eval(RELEASE, 1, LEASE, holder);
  }

  /** Says this coordinator is alive (leader or standby) for one more lease time. */
  async present(): Promise<void> {
    await this.#redis.zadd(MEMBERS, Date.now() + this.#ms, this.#id);
  }

  /** Leaves the set of live coordinators. */
  async absent(): Promise<void> {
    await this.#redis.zrem(MEMBERS, this.#id);
  }

  /** Other coordinators alive now (standbys, when this one leads). */
  async others(): Promise<string[]> {
    const now = Date.now();
    await this.#redis.zremrangebyscore(MEMBERS, 0, now);
    return (await this.#redis.zrangebyscore(MEMBERS, now, '+inf')).filter((id) => id !== this.#id);
  }

  /** Who holds the lease now: id and term, or null. */
  static async holder(redis: Redis): Promise<{ id: string; term: number } | null> {
    const v = await redis.get(LEASE);
    const slash = v?.lastIndexOf('/') ?? -1;
    return v && slash > 0 ? { id: v.slice(0, slash), term: Number(v.slice(slash + 1)) } : null;
  }
}
