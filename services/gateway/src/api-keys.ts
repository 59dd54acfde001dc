// API keys of the gateway: who may call it, with which scope, as which tenant. Keys come from a
// file (a Kubernetes secret mounted as one): one key per line, `<key> <scope> [tenant]
// [cache=<group>]` with scope `user` or `admin` (`#` starts a comment). A tenant owns the sessions
// its keys make: keys that name the same tenant share them, and a key that names none is a tenant
// of its own (`key-` and 12 hex digits of its SHA-256). Cached prompt prefixes are the tenant's
// too, unless the operator puts the key in a cache group: keys of one group (of any tenants) share
// them. Only SHA-256 digests are kept and compared in constant time; a key never reaches a log line.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ApiError } from './errors.ts';

/** What a key may do: `user` the OpenAI API, `admin` that and the admin API. */
export type Scope = 'user' | 'admin';

/** Who a request comes from. */
export interface Caller {
  scope: Scope;
  /** the tenant whose sessions it reaches ('' without API keys: one open tenant) */
  tenant: string;
  /** the cache group whose cached prompt prefixes it shares ('': its tenant's own) */
  cacheGroup?: string;
}

/**
 * The prefix-cache scope of a caller's request: its tenant's, or its key's cache group's, and
 * within it the request's `cache_salt` (requests share cached prefixes only within one scope).
 */
export function cacheScope(caller: Caller, salt: string): string {
  const base = caller.cacheGroup ? `group:${caller.cacheGroup}` : `tenant:${caller.tenant}`;
  return salt ? `${base}/salt:${salt}` : base;
}

/** A tenant name: a token of a session key (see sessionKey). */
const TENANT = /^[A-Za-z0-9-]{1,40}$/;

const digest = (key: string) => createHash('sha256').update(key, 'utf8').digest();

/** The keys a gateway accepts. */
export class ApiKeys {
  readonly #keys: { digest: Buffer; caller: Caller }[];

  private constructor(keys: { digest: Buffer; caller: Caller }[]) {
    this.#keys = keys;
  }

  /** Parses a key file's text; a malformed line is an error naming its number, never its key. */
  static parse(text: string, source = 'the API key file'): ApiKeys {
    const keys: { digest: Buffer; caller: Caller }[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/#.*/, '').trim();
      if (!line) return;
      const words = line.split(/\s+/);
      const group = words.length > 2 && words[words.length - 1]!.startsWith('cache=') ? words.pop()!.slice('cache='.length) : undefined;
      const [key, scope, tenant, ...rest] = words;
      if (!key || (scope !== 'user' && scope !== 'admin') || rest.length > 0 || key.length < 16 || (tenant !== undefined && !TENANT.test(tenant)) || (group !== undefined && !TENANT.test(group))) {
        throw new Error(`${source}, line ${i + 1}: expected '<key of 16+ characters> user|admin [tenant of 1-40 A-Z a-z 0-9 -] [cache=<group of 1-40 A-Z a-z 0-9 ->]'`);
      }
      const d = digest(key);
      keys.push({ digest: d, caller: { scope, tenant: tenant ?? `key-${d.toString('hex').slice(0, 12)}`, ...(group ? { cacheGroup: group } : {}) } });
    });
    if (keys.length === 0) throw new Error(`${source} holds no key`);
    return new ApiKeys(keys);
  }

  /** Reads a key file. */
  static load(path: string): ApiKeys {
    return ApiKeys.parse(readFileSync(path, 'utf8'), path);
  }

  /** The first key of `scope` in a key file's text (what `strata up` sends its own first request with), or null. */
  static firstKey(text: string, scope: Scope): string | null {
    for (const raw of text.split('\n')) {
      const [key, s] = raw.replace(/#.*/, '').trim().split(/\s+/);
      if (key && s === scope) return key;
    }
    return null;
  }

  /** Who sends the bearer token in an Authorization header; throws 401 when it is not a key. */
  callerOf(authorization: string | undefined): Caller {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) throw new ApiError(401, 'missing_api_key', 'send an API key: Authorization: Bearer <key>', null, 'authentication_error');
    const d = digest(m[1]!);
    let found: Caller | null = null;
    for (const k of this.#keys) if (timingSafeEqual(k.digest, d)) found = k.caller;
    if (!found) throw new ApiError(401, 'invalid_api_key', 'the API key is not valid', null, 'authentication_error');
    return found;
  }

  /** The scope of the bearer token in an Authorization header; throws 401 when it is not a key. */
  scopeOf(authorization: string | undefined): Scope {
    return this.callerOf(authorization).scope;
  }

  /** The caller, after 401/403 unless the header carries a key of `need` (admin keys may do what user keys may). */
  require(authorization: string | undefined, need: Scope): Caller {
    const caller = this.callerOf(authorization);
    if (need === 'admin' && caller.scope !== 'admin') throw new ApiError(403, 'insufficient_scope', 'this endpoint needs an admin key', null, 'permission_error');
    return caller;
  }
}
