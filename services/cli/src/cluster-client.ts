// The strata command's link to a running cluster: one NATS connection (--nats-url, else
// STRATA_NATS_URL, else what a running `strata up` wrote down; the operator's credentials) for every request of one command, each answered by
// the leader coordinator. Failures become a ClusterError with a message fit for a terminal.
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { redactUrl } from '@strata/log';
import {
  ClusterRequestSchema, ClusterStateSchema, DrainReplySchema, DrainRequestSchema, MigrateReplySchema, MigrateRequestSchema, MigrationListSchema,
  MigrationsRequestSchema, SessionListSchema, SessionsRequestSchema, UndrainReplySchema, UndrainRequestSchema, natsOptions, request, subjects,
  type ClusterState, type DrainReply, type MigrateReply, type MigrationList, type SessionList, type UndrainReply,
} from '@strata/wire';
import { connect, type NatsConnection } from 'nats';
import type { Flags } from './args.ts';
import { ClusterError } from './errors.ts';
import { readRunFile } from './run-file.ts';

/** --nats-url, else STRATA_NATS_URL, else the cluster a running `strata up` of this user started, else the local default. */
export function natsUrlOf(f: Flags): string {
  return f.str('nats-url', process.env.STRATA_NATS_URL || readRunFile()?.natsUrl || 'nats://127.0.0.1:4222')!;
}

/** A connection to a cluster's coordinator. */
export class ClusterClient {
  readonly #nc: NatsConnection;
  readonly #url: string;

  private constructor(nc: NatsConnection, url: string) {
    this.#nc = nc;
    this.#url = url;
  }

  /** Connects (no reconnection: a command fails rather than waits). */
  static async connect(url: string): Promise<ClusterClient> {
    try {
      return new ClusterClient(await connect({ ...natsOptions(url, 'strata-cli'), maxReconnectAttempts: 0, timeout: 5000 }), url);
    } catch (err) {
      throw new ClusterError(`cannot reach NATS at ${redactUrl(url)}: ${(err as Error).message} (--nats-url or STRATA_NATS_URL)`);
    }
  }

  async #ask<Req extends DescMessage, Rep extends DescMessage>(subject: string, req: Req, init: MessageInitShape<Req>, rep: Rep, timeoutMs: number): Promise<MessageShape<Rep>> {
    try {
      return await request(this.#nc, subject, req, init, rep, timeoutMs);
    } catch (err) {
      const code = (err as { code?: string }).code;
      const why = code === '503' ? 'no coordinator is listening' : code === 'TIMEOUT' ? `no answer within ${timeoutMs / 1000} s` : (err as Error).message;
      throw new ClusterError(`${subject} on ${redactUrl(this.#url)}: ${why}`);
    }
  }

  /** Pipelines, their stages and every worker's KV occupancy. */
  cluster(): Promise<ClusterState> {
    return this.#ask(subjects.coordinatorCluster(), ClusterRequestSchema, {}, ClusterStateSchema, 5000);
  }

  /** Sessions, busy ones first, then the most recently used. */
  sessions(limit: number): Promise<SessionList> {
    return this.#ask(subjects.coordinatorSessions(), SessionsRequestSchema, { limit }, SessionListSchema, 5000);
  }

  /** The migration ledger, newest first. */
  migrations(limit: number): Promise<MigrationList> {
    return this.#ask(subjects.coordinatorMigrations(), MigrationsRequestSchema, { limit }, MigrationListSchema, 5000);
  }

  /** Moves a session; with `wait`, answers when the move ended. */
  migrate(init: MessageInitShape<typeof MigrateRequestSchema>): Promise<MigrateReply> {
    return this.#ask(subjects.coordinatorMigrate(), MigrateRequestSchema, init, MigrateReplySchema, 180_000);
  }

  /** Drains a worker's pipeline (`force`: even its model's last one that takes work); answers when the drain ended. */
  drain(worker: string, force: boolean): Promise<DrainReply> {
    return this.#ask(subjects.coordinatorDrain(), DrainRequestSchema, { workerId: worker, force }, DrainReplySchema, 600_000);
  }

  /** Lets a drained worker's pipeline take work again. */
  undrain(worker: string): Promise<UndrainReply> {
    return this.#ask(subjects.coordinatorUndrain(), UndrainRequestSchema, { workerId: worker }, UndrainReplySchema, 10_000);
  }

  /** Closes the connection. */
  async close(): Promise<void> {
    await this.#nc.close().catch(() => {});
  }
}

/** Runs `fn` with a connection to the cluster at `url`, closed afterwards. */
export async function withCluster<T>(url: string, fn: (c: ClusterClient) => Promise<T>): Promise<T> {
  const c = await ClusterClient.connect(url);
  try {
    return await fn(c);
  } finally {
    await c.close();
  }
}
