// Where the coordinators' Redis is: one server (redis://[user:password@]host:port[/db]), or a
// primary with replicas behind Redis Sentinel
// (redis-sentinel://[user:password@]host:port,host:port,…/<primary name>): ioredis asks the
// sentinels for the primary, and again after a failover.
import type { RedisOptions } from 'ioredis';

/** ioredis options for `url`, with `base` (timeouts, lazy connect) under them. */
export function redisOptions(url: string, base: RedisOptions = {}): RedisOptions & { sentinel: boolean } {
  const m = /^redis-sentinel:\/\/(?:([^:@/]*)(?::([^@/]*))?@)?([^/]+)\/([A-Za-z0-9_.-]+)\/?$/.exec(url);
  if (!m) {
    if (!/^rediss?:\/\//.test(url)) throw new TypeError(`'${url.replace(/:[^@/]*@/, ':***@')}' is neither redis:// nor redis-sentinel://host:port,…/<primary name>`);
    const u = new URL(url);
    return {
      ...base, sentinel: false, host: u.hostname, port: Number(u.port || 6379),
      ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
      ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
      ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
      ...(u.protocol === 'rediss:' ? { tls: {} } : {}),
    };
  }
  const [, user, password, hosts, name] = m;
  const sentinels = hosts!.split(',').map((h) => {
    const at = h.lastIndexOf(':');
    const host = at > 0 ? h.slice(0, at) : h;
    const port = at > 0 ? Number(h.slice(at + 1)) : 26379;
    if (!host || !Number.isInteger(port) || port < 1 || port > 65535) throw new TypeError(`'${h}' is not a sentinel host:port`);
    return { host, port };
  });
  return {
    ...base, sentinel: true, sentinels, name,
    ...(user ? { username: decodeURIComponent(user) } : {}),
    ...(password ? { password: decodeURIComponent(password) } : {}),
    // A +switch-master from the sentinels moves the client at once, not only when the old
    // primary's connection breaks.
    failoverDetector: true,
  };
}
