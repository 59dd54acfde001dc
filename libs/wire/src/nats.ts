// NATS at the wire's edge: connection options from one URL, and typed request/reply.
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { connect, type ConnectionOptions, type MsgHdrs, type NatsConnection } from 'nats';
import { decode, encode } from './codec.ts';

/**
 * Connection options for `url`, with a client name: one server (nats://[user:password@]host:port)
 * or the servers of a NATS cluster separated by commas (credentials on any of them, the same for
 * all). nats.js takes user and password as options, so they are lifted out of the URLs here.
 * Reconnects for ever, to whichever server of the cluster answers (a server's loss or restart is
 * survived); the servers a cluster gossips are tried too.
 */
export function natsOptions(url: string, name: string): ConnectionOptions {
  const urls = url.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
    try {
      return new URL(s);
    } catch {
      throw new TypeError(`'${s}' is not a NATS URL (nats://[user:password@]host:port)`);
    }
  });
  if (urls.length === 0) throw new TypeError('no NATS server given');
  const o: ConnectionOptions = { servers: urls.map((u) => `${u.protocol}//${u.host}`), name, maxReconnectAttempts: -1, reconnectTimeWait: 250 };
  const auth = urls.find((u) => u.username);
  if (auth?.username) o.user = decodeURIComponent(auth.username);
  if (auth?.password) o.pass = decodeURIComponent(auth.password);
  return o;
}

/**
 * Connects to NATS as `name` (see natsOptions). When that fails, `undo` releases what the caller
 * set up before (a stage, a vocabulary, a Redis client) and the error is thrown on.
 */
export async function connectNats(url: string, name: string, undo: () => unknown = () => {}): Promise<NatsConnection> {
  try {
    return await connect(natsOptions(url, name));
  } catch (err) {
    await undo();
    throw err;
  }
}

/**
 * A service's last word to NATS when it stops: drains the connection (its subscriptions take what
 * has arrived, what it published is flushed, then it closes). A failure is logged on `log`, not
 * thrown: the rest of the stop goes on.
 */
export async function drainNats(nc: NatsConnection, log: { warn(msg: string, fields?: Record<string, unknown>): void }): Promise<void> {
  try {
    await nc.drain();
  } catch (err) {
    log.warn('NATS drain failed', { err });
  }
}

/**
 * Sends `init` as `req` on `subject` and decodes the answer as `rep` (WireError when it does not
 * decode); `headers` travel with it (trace context).
 */
export async function request<Req extends DescMessage, Rep extends DescMessage>(
  nc: NatsConnection, subject: string, req: Req, init: MessageInitShape<Req>, rep: Rep, timeoutMs: number, headers?: MsgHdrs,
): Promise<MessageShape<Rep>> {
  const m = await nc.request(subject, encode(req, init), { timeout: timeoutMs, headers });
  return decode(rep, m.data, m.subject);
}

/** One request/reply on a connection of its own that does not reconnect (tools, tests). */
export async function requestOnce<Req extends DescMessage, Rep extends DescMessage>(
  natsUrl: string, name: string, subject: string, req: Req, init: MessageInitShape<Req>, rep: Rep, timeoutMs: number,
): Promise<MessageShape<Rep>> {
  const nc = await connect({ ...natsOptions(natsUrl, name), maxReconnectAttempts: 0 });
  try {
    return await request(nc, subject, req, init, rep, timeoutMs);
  } finally {
    await nc.close();
  }
}
