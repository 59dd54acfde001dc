// Sessions in Redis, the source of truth for who owns a session and what it holds:
//   strata:session:<id>          hash  owner (coordinator id), pipeline, epoch, updated_ms
//   strata:session:<id>:tokens   list  token history (what a pipeline must prefill to rebuild it)
// Every write after a claim carries the claim's epoch; a Lua script refuses writes from an older
// epoch, so a stale owner can never change a session another owner has taken. Both keys expire
// a TTL after the session's last claim or write (--session-ttl-s; 0: never).
import type { Redis } from 'ioredis';
import { CoordinatorError } from './errors.ts';

/**
 * How long an operation keeps trying while Redis is away for a moment (a restart, a quick Sentinel
 * failover), in milliseconds: less than a gateway's leader lapse (6 s), so that a longer outage is
 * answered as what it is (store_unavailable) and not as a lost leader. Every operation here may be
 * repeated (claims raise the epoch again, writes keep a given prefix before appending).
 */
const STORE_WAIT_MS = 4_000;
const STORE_RETRY_MS = 200;

/** Redis answers that say it will take writes again soon (a replica being promoted, a primary loading). */
const TRANSIENT_REPLY = /^(READONLY|LOADING|MASTERDOWN|TRYAGAIN)/;

/** Whether an error is Redis being away for a moment rather than a refusal. */
function transient(err: unknown): boolean {
  return (err as Error).name !== 'ReplyError' || TRANSIENT_REPLY.test((err as Error).message);
}

/** Redis failing (down, unreachable, out of memory) for longer than a failover: a retriable error that says so. */
async function stored<T>(what: string, op: () => Promise<T>): Promise<T> {
  const until = Date.now() + STORE_WAIT_MS;
  const unavailable = (why: string) => new CoordinatorError('store_unavailable', `the session store (Redis) could not ${what}: ${why}`);
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    // An attempt gets what is left of the wait: ioredis holds a command through its own
    // reconnection attempts for longer than that.
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(unavailable(`no answer within ${STORE_WAIT_MS} ms`)), Math.max(0, until - Date.now()));
    });
    const attempt = op();
    // (an attempt that loses the race may still fail later: nobody waits for it then)
    attempt.catch(() => {});
    try {
      return await Promise.race([attempt, late]);
    } catch (err) {
      if (err instanceof CoordinatorError) throw err;
      if (!transient(err) || Date.now() >= until) throw unavailable((err as Error).message);
      await new Promise((r) => setTimeout(r, STORE_RETRY_MS));
    } finally {
      clearTimeout(timer);
    }
  }
}

const key = (id: string) => `strata:session:${id}`;
const tokensKey = (id: string) => `strata:session:${id}:tokens`;

// KEYS: hash, tokens; ARGV: epoch, ttl ms (0: none), keep (tokens to keep), ...tokens to append.
const FENCED_WRITE = `
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
local keep = tonumber(ARGV[3])
if keep >= 0 then
  if keep == 0 then redis.call('DEL', KEYS[2]) else redis.call('LTRIM', KEYS[2], 0, keep - 1) end
end
-- in slices: unpack() of a long prompt would overflow Lua's stack
for i = 4, #ARGV, 1000 do redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1`;

/** A session's record. */
export interface SessionRecord {
  owner: string;
  pipeline: string;
  epoch: number;
  tokens: number[];
}

/** Redis-backed session ownership and token history. */
export class SessionStore {
  readonly #redis: Redis;
  readonly #owner: string;
  /** ms a session's keys live after its last claim or write; 0: for ever */
  readonly #ttlMs: number;

  constructor(redis: Redis, owner: string, ttlMs = 0) {
    this.#redis = redis;
    this.#owner = owner;
    this.#ttlMs = ttlMs;
  }

  /** Takes the session for `pipeline`: raises its epoch and returns it. */
  async claim(id: string, pipeline: string): Promise<number> {
    const claim = () => {
      const m = this.#redis.multi()
        .hincrby(key(id), 'epoch', 1)
        .hset(key(id), 'owner', this.#owner, 'pipeline', pipeline, 'updated_ms', Date.now());
      if (this.#ttlMs > 0) m.pexpire(key(id), this.#ttlMs).pexpire(tokensKey(id), this.#ttlMs);
      return m.exec();
    };
    const r = await stored(`claim session ${id}`, claim);
    const epoch = r?.[0]?.[1];
    if (typeof epoch !== 'number') throw new Error(`claiming session ${id} failed: ${String(r?.[0]?.[0] ?? 'no reply')}`);
    return epoch;
  }

  /**
   * Keeps the first `keep` tokens of the history (-1: all) and appends `tokens`, if `epoch` is
   * still the session's; false when another owner has taken it since.
   */
  async write(id: string, epoch: number, keep: number, tokens: readonly number[]): Promise<boolean> {
    const ok = await stored(`write session ${id}`, () => this.#redis.eval(FENCED_WRITE, 2, key(id), tokensKey(id), epoch, this.#ttlMs, keep, ...tokens));
    return ok === 1;
  }

  /** The session's record, or null. */
  async get(id: string): Promise<SessionRecord | null> {
    const [h, t] = await stored(`read session ${id}`, () => Promise.all([this.#redis.hgetall(key(id)), this.#redis.lrange(tokensKey(id), 0, -1)]));
    if (!h.epoch) return null;
    return { owner: h.owner ?? '', pipeline: h.pipeline ?? '', epoch: Number(h.epoch), tokens: t.map(Number) };
  }

  /** Forgets a session. */
  async delete(id: string): Promise<void> {
    await this.#redis.del(key(id), tokensKey(id));
  }
}
