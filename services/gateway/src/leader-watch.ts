// Which coordinator leads, as a gateway hears it: the leader announces itself at every lease
// renewal, and a higher term means a new leader, to which running requests move. Announcements
// that stop for longer than the lapse mean no coordinator holds the lease (the leader died and no
// standby took over): requests then fail at once instead of waiting for one. It also says when
// the gateway's NATS connection came back, or the leader's (its announcements count its
// reconnects): events may have been lost meanwhile. With the coordinators' public key, an
// announcement counts only with their signature.
import type { Logger } from '@strata/log';
import { LeaderAnnouncementSchema, decode, subjects, type FenceVerifier } from '@strata/wire';
import type { NatsConnection, Subscription } from 'nats';

/** The leader announcements on one connection. */
export class LeaderWatch {
  readonly #sub: Subscription;
  readonly #log: Logger;
  readonly #watchers = new Set<(term: bigint) => void>();
  readonly #waiters = new Set<() => void>();
  readonly #reconnects = new Set<() => void>();
  readonly #lapses = new Set<() => void>();
  /** the leader last announced, with how many times its NATS connection had come back then */
  #leader: { id: string; term: bigint; reconnects: number } | null = null;
  /** milliseconds without an announcement after which no coordinator holds the lease */
  readonly lapseMs: number;
  /** when the leader was last heard (or the connection last came up: give it a lapse to be heard) */
  #heardMs = Date.now();
  #lapseTimer: NodeJS.Timeout | undefined;
  /** NATS is connected: nothing is heard while it is away, and that is no lapse of the lease */
  #connected = true;
  #stopped = false;

  constructor(nc: NatsConnection, log: Logger, lapseMs: number, verifier: FenceVerifier | null = null) {
    this.#log = log;
    this.lapseMs = lapseMs;
    this.#sub = nc.subscribe(subjects.coordinatorLeader(), {
      callback: (err, m) => {
        if (err) return log.error('leader subscription', { err });
        let a;
        try {
          a = decode(LeaderAnnouncementSchema, m.data, m.subject);
        } catch (e) {
          return log.warn('refused a leader announcement', { err: e });
        }
        if (this.#leader && a.term < this.#leader.term) return;
        if (verifier && !verifier.leader(a.coordinatorId, a.term, a.proof)) {
          return log.warn('refused a leader announcement without the coordinators\' signature', { coordinator: a.coordinatorId, term: a.term });
        }
        // The same leader renewing its lease, or a new one.
        if (this.lapsed) log.info('a coordinator leads again', { coordinator: a.coordinatorId });
        this.#heard();
        if (this.#leader && a.term === this.#leader.term) {
          if (a.coordinatorId !== this.#leader.id || a.reconnects <= this.#leader.reconnects) return;
          this.#leader.reconnects = a.reconnects;
          log.warn('the leader\'s NATS connection came back: running requests start over from what their clients have', { coordinator: a.coordinatorId, reconnects: a.reconnects });
          for (const fn of this.#reconnects) fn();
          return;
        }
        if (this.#leader) log.info('a new coordinator leads', { coordinator: a.coordinatorId, term: a.term });
        this.#leader = { id: a.coordinatorId, term: a.term, reconnects: a.reconnects };
        for (const w of this.#watchers) w(a.term);
        for (const w of this.#waiters) w();
        this.#waiters.clear();
      },
    });
    this.#heard();
    void (async () => {
      for await (const st of nc.status()) {
        if (st.type === 'disconnect') {
          this.#connected = false;
          clearTimeout(this.#lapseTimer);
        }
        if (st.type !== 'reconnect') continue;
        this.#connected = true;
        this.#heard();
        log.warn('NATS reconnected: running requests start over from what their clients have');
        for (const fn of this.#reconnects) fn();
      }
    })();
  }

  /** Something of the leader (or the connection) was heard now: the lapse starts over. */
  #heard(): void {
    this.#heardMs = Date.now();
    clearTimeout(this.#lapseTimer);
    if (this.#stopped) return;
    this.#lapseTimer = setTimeout(() => {
      this.#log.error('no coordinator holds the lease: requests fail until one announces itself', { silentMs: Date.now() - this.#heardMs });
      for (const fn of this.#lapses) fn();
    }, this.lapseMs + 1);
    this.#lapseTimer.unref();
  }

  /** Whether no coordinator has announced itself for longer than the lapse (NATS connected all along). */
  get lapsed(): boolean {
    return this.#connected && Date.now() - this.#heardMs > this.lapseMs;
  }

  /** Calls `fn` whenever the announcements lapse; returns the function that stops it. */
  onLapse(fn: () => void): () => void {
    this.#lapses.add(fn);
    return () => this.#lapses.delete(fn);
  }

  /**
   * Calls `fn` whenever this gateway's connection to NATS, or the leader's, comes back (events
   * may have been lost on either); returns the function that stops it.
   */
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
    this.#stopped = true;
    clearTimeout(this.#lapseTimer);
    this.#sub.unsubscribe();
    this.#watchers.clear();
    this.#reconnects.clear();
    this.#lapses.clear();
    for (const w of [...this.#waiters]) w();
  }
}
