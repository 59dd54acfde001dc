// A TCP fault proxy on loopback, for tests of a real network between processes: a client connects
// to the proxy instead of its server, and the test gives the link latency (each way), a bandwidth
// limit, or cuts it (a partition: open connections are dropped and new ones hang until healed).
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { LocalServerError } from './errors.ts';

/** How the link behaves now. */
export interface LinkFaults {
  /** milliseconds added to every chunk, each way */
  latencyMs: number;
  /** bytes per second each way (0: unlimited) */
  bytesPerSecond: number;
}

/**
 * One direction of a connection: chunks leave in order, each no earlier than its due time. One
 * timer serves the queue: timers of different delays may fire out of order (Node counts each
 * from its own whole-millisecond start), which reordered bytes under a bandwidth limit.
 */
class Pipe {
  readonly #to: Socket;
  readonly #faults: () => LinkFaults;
  /** when the link is free again (bandwidth), performance.now() ms */
  #freeAt = 0;
  /** chunks waiting, oldest first; due times (performance.now() ms) never decrease */
  readonly #queue: { chunk: Buffer; due: number }[] = [];
  #timer: NodeJS.Timeout | null = null;

  constructor(to: Socket, faults: () => LinkFaults) {
    this.#to = to;
    this.#faults = faults;
  }

  push(chunk: Buffer): void {
    const f = this.#faults();
    const now = performance.now();
    let due = now + f.latencyMs;
    if (f.bytesPerSecond > 0) {
      const start = Math.max(now, this.#freeAt);
      this.#freeAt = start + (chunk.length * 1000) / f.bytesPerSecond;
      due = Math.max(due, this.#freeAt + f.latencyMs);
    }
    // a later chunk never overtakes an earlier one
    due = Math.max(due, this.#queue.at(-1)?.due ?? 0);
    if (this.#queue.length === 0 && due <= now) {
      this.#to.write(chunk);
      return;
    }
    this.#queue.push({ chunk, due });
    if (this.#timer === null) this.#arm(now);
  }

  #arm(now: number): void {
    this.#timer = setTimeout(() => this.#flush(), this.#queue[0]!.due - now);
  }

  /** Writes every chunk that is due, then waits for the next one. */
  #flush(): void {
    this.#timer = null;
    const now = performance.now();
    while (this.#queue.length > 0 && this.#queue[0]!.due <= now) {
      const { chunk } = this.#queue.shift()!;
      if (!this.#to.destroyed) this.#to.write(chunk);
    }
    if (this.#queue.length > 0) this.#arm(now);
  }
}

/** A proxy from a loopback port to a target port. stop() is idempotent. */
export class FaultProxy {
  readonly port: number;
  readonly #server: Server;
  /** the loopback port the proxy forwards to */
  readonly #target: number;
  readonly #sockets = new Set<Socket>();
  #faults: LinkFaults = { latencyMs: 0, bytesPerSecond: 0 };
  #cut = false;
  /** connections made while the link is cut: they wait, silent, until it heals */
  readonly #held: Socket[] = [];

  private constructor(server: Server, port: number, target: number) {
    this.#server = server;
    this.port = port;
    server.on('connection', (client) => {
      this.#sockets.add(client);
      client.on('close', () => this.#sockets.delete(client));
      client.on('error', () => client.destroy());
      if (this.#cut) this.#held.push(client);
      else this.#link(client, target);
    });
    this.#target = target;
  }

  /** Starts a proxy to 127.0.0.1:`target` on a free loopback port. */
  static async start(target: number): Promise<FaultProxy> {
    const server = createServer({ pauseOnConnect: true, noDelay: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once('error', (err) => reject(new LocalServerError('spawn_failed', `fault proxy: ${err.message}`, { server: 'fault-proxy' })));
      server.listen(0, '127.0.0.1', () => resolve((server.address() as { port: number }).port));
    });
    return new FaultProxy(server, port, target);
  }

  #link(client: Socket, target: number): void {
    const upstream = createConnection({ host: '127.0.0.1', port: target, noDelay: true });
    this.#sockets.add(upstream);
    upstream.on('close', () => {
      this.#sockets.delete(upstream);
      client.destroy();
    });
    client.on('close', () => upstream.destroy());
    upstream.on('error', () => upstream.destroy());
    const faults = () => this.#faults;
    const up = new Pipe(upstream, faults), down = new Pipe(client, faults);
    client.on('data', (c: Buffer) => up.push(c));
    upstream.on('data', (c: Buffer) => down.push(c));
    client.resume();
  }

  /** Sets latency (each way) and bandwidth for what is sent from now on. */
  set(faults: Partial<LinkFaults>): void {
    this.#faults = { ...this.#faults, ...faults };
  }

  /** A partition: every open connection is dropped; new ones wait, unanswered, until heal(). */
  cut(): void {
    this.#cut = true;
    for (const s of this.#sockets) s.destroy();
  }

  /** Ends the partition: waiting connections go through. */
  heal(): void {
    this.#cut = false;
    for (const c of this.#held.splice(0)) if (!c.destroyed) this.#link(c, this.#target);
  }

  /** Closes the proxy and every connection through it. */
  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
