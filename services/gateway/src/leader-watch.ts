// Which coordinator leads, as a gateway hears it: the leader announces itself at every lease
// renewal, and a higher term means a new leader, to which running requests move. It also says
// when the gateway's NATS connection came back: events may have been lost meanwhile. With the
// coordinators' public key, an announcement counts only with their signature.
import type { Logger } from '@strata/log';
import { LeaderAnnouncementSchema, decode, subjects, type FenceVerifier } from '@strata/wire';
import type { NatsConnection, Subscription } from 'nats';

/** The leader announcements on one connection. */
export class LeaderWatch {
  readonly #sub: Subscription;
  readonly #watchers = new Set<(term: bigint) => void>();
  readonly #waiters = new Set<() => void>();
  readonly #reconnects = new Set<() => void>();
  #leader: { id: string; term: bigint } | null = null;

  constructor(nc: NatsConnection, log: Logger, verifier: FenceVerifier | null = null) {
    this.#sub = nc.subscribe(subjects.coordinatorLeader(), {
      callback: (err, m) => {
        if (err) return log.error('leader subscription', { err });
        let a;
        try {
          a = decode(LeaderAnnouncementSchema, m.data, m.subject);
        } catch (e) {
          return log.warn('refused a leader announcement', { err: e });
        }
        if (this.#leader && a.term <= this.#leader.term) return;
        if (verifier && !verifier.leader(a.coordinatorId, a.term, a.proof)) {
          return log.warn('refused a leader announcement without the coordinators\' signature', { coordinator: a.coordinatorId, term: a.term });
        }
        if (this.#leader) log.info('a new coordinator leads', { coordinator: a.coordinatorId, term: a.term });
        this.#leader = { id: a.coordinatorId, term: a.term };
        for (const w of this.#watchers) w(a.term);
        for (const w of this.#waiters) w();
        this.#waiters.clear();
      },
    });
    void (async () => {
      for await (const st of nc.status()) {
        if (st.type !== 'reconnect') continue;
        log.warn('NATS reconnected: running requests start over from what their clients have');
        for (const fn of this.#reconnects) fn();
      }
    })();
  }

  /** Calls `fn` whenever the connection to NATS comes back; returns the function that stops it. */
  onReconnect(fn: () => void): () => void {
    this.#reconnects.add(fn);
    return () => this.#reconnects.delete(fn);
  }

  /** The leader last announced, or null before the first announcement. */
  get leader(): { id: string; term: bigint } | null {
    return this.#leader;
  }

  /** Calls `fn` with the term of every new leader; returns the function that stops it. */
  watch(fn: (term: bigint) => void): () => void {
    this.#watchers.add(fn);
    return () => this.#watchers.delete(fn);
  }

  /** Resolves when a new leader announces itself, or after `ms`. */
  next(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#waiters.add(done);
    });
  }

  stop(): void {
    this.#sub.unsubscribe();
    this.#watchers.clear();
    this.#reconnects.clear();
    for (const w of [...this.#waiters]) w();
  }
}
