// API keys of the gateway: who may call it, and with which scope. Keys come from a file (a
// Kubernetes secret mounted as one): one key per line, `<key> <scope>` with scope `user` or
// `admin` (`#` starts a comment). Only SHA-256 digests are kept and compared in constant time;
// a key never reaches a log line.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ApiError } from './errors.ts';

/** What a key may do: `user` the OpenAI API, `admin` that and the admin API. */
export type Scope = 'user' | 'admin';

const digest = (key: string) => createHash('sha256').update(key, 'utf8').digest();

/** The keys a gateway accepts. */
export class ApiKeys {
  readonly #keys: { digest: Buffer; scope: Scope }[];

  private constructor(keys: { digest: Buffer; scope: Scope }[]) {
    this.#keys = keys;
  }

  /** Parses a key file's text; a malformed line is an error naming its number, never its key. */
  static parse(text: string, source = 'the API key file'): ApiKeys {
    const keys: { digest: Buffer; scope: Scope }[] = [];
    text.split('\n').forEach((raw, i) => {
      const line = raw.replace(/#.*/, '').trim();
      if (!line) return;
      const [key, scope, ...rest] = line.split(/\s+/);
      if (!key || (scope !== 'user' && scope !== 'admin') || rest.length > 0 || key.length < 16) {
        throw new Error(`${source}, line ${i + 1}: expected '<key of 16+ characters> user|admin'`);
      }
      keys.push({ digest: digest(key), scope });
    });
    if (keys.length === 0) throw new Error(`${source} holds no key`);
    return new ApiKeys(keys);
  }

  /** Reads a key file. */
  static load(path: string): ApiKeys {
    return ApiKeys.parse(readFileSync(path, 'utf8'), path);
  }

  /** The scope of the bearer token in an Authorization header; throws 401 when it is not a key. */
  scopeOf(authorization: string | undefined): Scope {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (!m) throw new ApiError(401, 'missing_api_key', 'send an API key: Authorization: Bearer <key>', null, 'authentication_error');
    const d = digest(m[1]!);
    let found: Scope | null = null;
    for (const k of this.#keys) if (timingSafeEqual(k.digest, d)) found = k.scope;
    if (!found) throw new ApiError(401, 'invalid_api_key', 'the API key is not valid', null, 'authentication_error');
    return found;
  }

  /** Throws 401/403 unless the header carries a key of `need` (admin keys may do what user keys may). */
  require(authorization: string | undefined, need: Scope): void {
    const scope = this.scopeOf(authorization);
    if (need === 'admin' && scope !== 'admin') throw new ApiError(403, 'insufficient_scope', 'this endpoint needs an admin key', null, 'permission_error');
  }
}
