// How the cluster names a session: the id its client chose, under the tenant that owns it. Two
// tenants' sessions of the same id are two sessions: one never reads, reuses or evicts the other.
// The key is what the coordinator, Redis (strata:session:<key>) and the admin API see.
//   <tenant>:<id>   tenant 1-40 of A-Z a-z 0-9 -, id 1-128 of A-Z a-z 0-9 _ -
//   <id>            no tenant (a gateway without API keys: one open tenant)
const KEY = /^(?:[A-Za-z0-9-]{1,40}:)?[A-Za-z0-9_-]{1,128}$/;

/** The key of session `id` of `tenant` ('' : no tenant). */
export function sessionKey(tenant: string, id: string): string {
  return tenant ? `${tenant}:${id}` : id;
}

/** Whether `s` is a session key. */
export function isSessionKey(s: string): boolean {
  return KEY.test(s);
}

/** A session key's tenant ('' when none) and id. */
export function splitSessionKey(key: string): { tenant: string; id: string } {
  const i = key.indexOf(':');
  return i < 0 ? { tenant: '', id: key } : { tenant: key.slice(0, i), id: key.slice(i + 1) };
}
