// NATS connection options from one URL: nats://[user:password@]host:port. nats.js takes user
// and password as options, so they are lifted out of the URL here, for every service alike.
import type { ConnectionOptions } from 'nats';

/** Connection options for `url`, with a client name; reconnects forever (a NATS restart is survived). */
export function natsOptions(url: string, name: string): ConnectionOptions {
  const u = new URL(url);
  const o: ConnectionOptions = { servers: `${u.protocol}//${u.host}`, name, maxReconnectAttempts: -1, reconnectTimeWait: 250 };
  if (u.username) o.user = decodeURIComponent(u.username);
  if (u.password) o.pass = decodeURIComponent(u.password);
  return o;
}
