// Same-host stage links: the stage threads of two workers on one host hand a step's activations
// forward, and a last stage's samples back to its first, over a Unix socket, without the two
// main threads and nats-server in between (docs/cluster.md, "Same-host stage links"). NATS keeps
// everything else: steps from the coordinator, results, sequence operations, heartbeats.
//
// Each worker listens at <dir>/<worker id>.sock; a worker connects to its next stage's (and its
// first stage's) socket when a step first names it there. The directory is this user's alone
// (mode 0700, refused otherwise), and a connecting worker presents the cluster's KvTransfer token
// when it has one. Steps to one peer keep one path for one fence (leader term and pipeline
// generation): a step sent over NATS could otherwise overtake one sent over the link, or the
// reverse, and a stage runs steps in the order they come. A link that breaks drops that peer's
// steps until the pipeline's next fence; the coordinator's step deadline resets the pipeline, as
// when a worker dies. Samples carry their step's id and may take either path.
import { createHash, timingSafeEqual } from 'node:crypto';
import { chmodSync, lstatSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { RingTokensSchema, decode, encode, type RingTokens, type StepHeader } from '@strata/wire';
import { WorkerError } from './errors.ts';
import { FrameKind, FrameReader, readStep, stepBody, writeFrame, type Frame, type LinkStep } from './link-frames.ts';
import type { RingMessage } from './ring.ts';
import { fenceOlder, type Fence } from './stage-protocol.ts';

/** Version of the hello; a peer speaking another is refused. */
const VERSION = 1;
/** Largest frame before the hello is through (bytes). */
const HELLO_MAX_BYTES = 4096;
/** How long a connection may take to say hello, or to be welcomed (milliseconds). */
const HELLO_MS = 5_000;
/** After a failed connection, how long before the next try to that peer (milliseconds). */
const RETRY_MS = 5_000;
/** The longest path of a Unix socket Linux takes (sun_path less its NUL). */
const MAX_SOCKET_PATH = 107;

/** What a link's far ends hand this stage thread. */
export interface LinkInbox {
  step(s: LinkStep, bytes: number): void;
  ring(r: RingTokens): void;
  warn(msg: string, fields: Record<string, unknown>): void;
}

/** Options of {@link StageLinks.open}. */
export interface StageLinkOptions {
  /** the directory of the host's stage sockets, this user's alone */
  dir: string;
  workerId: string;
  /** the token every link presents (the KvTransfer token); null: the directory's mode alone guards it */
  token: string | null;
  /** largest frame taken (bytes): a micro-batch's activations and header */
  maxFrameBytes: number;
}

/** Frames sent and received over the links. */
export interface LinkCounters {
  stepsIn: number;
  stepsOut: number;
  ringsIn: number;
  ringsOut: number;
}

/** The socket of worker `id` in `dir`. */
export function socketPath(dir: string, id: string): string {
  return join(dir, `${id}.sock`);
}

/** Makes `dir` (mode 0700) or checks that it is a directory of this user's that nobody else may enter. */
function ownDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const s = statSync(dir);
  if (!s.isDirectory()) throw new WorkerError('bad_config', `--stage-link-dir ${dir} is not a directory`);
  if (process.getuid && s.uid !== process.getuid()) throw new WorkerError('bad_config', `--stage-link-dir ${dir} belongs to uid ${s.uid}, not to this user`);
  if ((s.mode & 0o077) !== 0) throw new WorkerError('bad_config', `--stage-link-dir ${dir} has mode ${(s.mode & 0o777).toString(8)}: other users may reach its sockets (chmod 700)`);
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** One stage thread's links: its socket, and its connections to the peers it sends to. */
export class StageLinks {
  readonly counters: LinkCounters = { stepsIn: 0, stepsOut: 0, ringsIn: 0, ringsOut: 0 };
  readonly #o: StageLinkOptions;
  readonly #inbox: LinkInbox;
  readonly #server: Server;
  readonly #path: string;
  /** connections accepted */
  readonly #accepted = new Set<Socket>();
  /** peer -> its connection once welcomed, or null while one is being made */
  readonly #peers = new Map<string, Promise<Socket | null>>();
  /** peer -> its welcomed connection (what sends without waiting) */
  readonly #live = new Map<string, Socket>();
  /** peer -> when a connection to it last failed (Date.now()) */
  readonly #failedAt = new Map<string, number>();
  /** peer -> the path its steps take for one fence: a connection (the link) or null (NATS) */
  readonly #paths = new Map<string, { fence: Fence; socket: Socket | null }>();
  #closed = false;

  private constructor(o: StageLinkOptions, inbox: LinkInbox, server: Server, path: string) {
    this.#o = o;
    this.#inbox = inbox;
    this.#server = server;
    this.#path = path;
    server.on('connection', (s) => this.#accept(s));
  }

  /** Listens at <dir>/<worker id>.sock (a stale socket there from an earlier run is replaced). */
  static async open(o: StageLinkOptions, inbox: LinkInbox): Promise<StageLinks> {
    ownDir(o.dir);
    const path = socketPath(o.dir, o.workerId);
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) throw new WorkerError('bad_config', `--stage-link-dir ${o.dir} is too long for a socket of worker '${o.workerId}' (${Buffer.byteLength(path)} bytes; at most ${MAX_SOCKET_PATH})`);
    try {
      if (!lstatSync(path).isSocket()) throw new WorkerError('bad_config', `${path} exists and is not a socket`);
      unlinkSync(path);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
    }
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    return new StageLinks(o, inbox, server, path);
  }

  #accept(s: Socket): void {
    if (this.#closed) return void s.destroy();
    this.#accepted.add(s);
    const reader = new FrameReader(HELLO_MAX_BYTES);
    let peer: string | null = null;
    let refused = false;
    const timer = setTimeout(() => s.destroy(), HELLO_MS);
    // Says why, then closes (what the peer sends meanwhile is not read).
    const refuse = (why: string) => {
      refused = true;
      this.#inbox.warn('refused a stage link', { why, peer });
      writeFrame(s, FrameKind.refuse, Buffer.from(why));
      s.end();
      setTimeout(() => s.destroy(), 1000).unref();
    };
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      this.#accepted.delete(s);
    });
    s.on('data', (chunk: Buffer) => {
      if (refused) return;
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (err) {
        return refuse((err as Error).message);
      }
      for (const f of frames) {
        if (refused || s.destroyed) return;
        if (peer === null) {
          if (f.kind !== FrameKind.hello) return refuse('the first frame is not a hello');
          const why = this.#checkHello(f.body);
          if (typeof why === 'string') return refuse(why);
          peer = why.from;
          clearTimeout(timer);
          reader.maxBytes = this.#o.maxFrameBytes;
          writeFrame(s, FrameKind.welcome);
          continue;
        }
        try {
          this.#deliver(f);
        } catch (err) {
          return refuse((err as Error).message);
        }
      }
    });
  }

  /** The hello's sender, or why it is refused. */
  #checkHello(body: Buffer): { from: string } | string {
    let h: unknown;
    try {
      h = JSON.parse(body.toString('utf8'));
    } catch {
      return 'a hello that is not JSON';
    }
    if (typeof h !== 'object' || h === null || Array.isArray(h)) return 'a hello that is not a JSON object';
    return this.#checkHelloFields(h as { v?: unknown; from?: unknown; to?: unknown; token?: unknown });
  }

  #checkHelloFields(h: { v?: unknown; from?: unknown; to?: unknown; token?: unknown }): { from: string } | string {
    if (h.v !== VERSION) return `hello version ${String(h.v)}; this worker speaks ${VERSION}`;
    if (h.to !== this.#o.workerId) return `the hello is for '${String(h.to)}', this is '${this.#o.workerId}'`;
    if (typeof h.from !== 'string' || h.from.length === 0) return 'a hello without its sender';
    if (this.#o.token !== null && (typeof h.token !== 'string' || !timingSafeEqual(digest(h.token), digest(this.#o.token)))) return 'a hello without the cluster\'s token';
    return { from: h.from };
  }

  #deliver(f: Frame): void {
    if (f.kind === FrameKind.step) {
      const s = readStep(f.body);
      this.counters.stepsIn++;
      this.#inbox.step(s, f.body.length);
    } else if (f.kind === FrameKind.ring) {
      const r = decode(RingTokensSchema, f.body);
      this.counters.ringsIn++;
      this.#inbox.ring(r);
    } else {
      throw new WorkerError('bad_link_frame', `a frame of kind ${f.kind} after the hello`);
    }
  }

  /** Starts connecting to `peer`, unless connected, connecting or lately failed. */
  warm(peer: string): void {
    void this.#connect(peer);
  }

  #connect(peer: string): Promise<Socket | null> {
    const known = this.#peers.get(peer);
    if (known) return known;
    if (this.#closed || peer === this.#o.workerId || Date.now() - (this.#failedAt.get(peer) ?? -Infinity) < RETRY_MS) return Promise.resolve(null);
    const made = new Promise<Socket | null>((resolve) => {
      const s = createConnection(socketPath(this.#o.dir, peer));
      const reader = new FrameReader(HELLO_MAX_BYTES);
      let welcomed = false;
      const fail = (why: string) => {
        if (welcomed) return;
        clearTimeout(timer);
        s.destroy();
        this.#failedAt.set(peer, Date.now());
        if (this.#peers.get(peer) === made) this.#peers.delete(peer);
        // No socket: the peer is on another host, or not up. Anything else is worth a line.
        if (!/ENOENT|ECONNREFUSED/.test(why)) this.#inbox.warn('no stage link', { peer, why });
        resolve(null);
      };
      const timer = setTimeout(() => fail('no welcome in time'), HELLO_MS);
      s.on('connect', () => {
        writeFrame(s, FrameKind.hello, Buffer.from(JSON.stringify({ v: VERSION, from: this.#o.workerId, to: peer, token: this.#o.token ?? undefined })));
      });
      s.on('data', (chunk: Buffer) => {
        if (welcomed) return;
        let frames;
        try {
          frames = reader.push(chunk);
        } catch (err) {
          return fail((err as Error).message);
        }
        const f = frames[0];
        if (!f) return;
        if (f.kind !== FrameKind.welcome) return fail(f.kind === FrameKind.refuse ? `refused: ${f.body.toString('utf8')}` : `frame kind ${f.kind} instead of a welcome`);
        welcomed = true;
        clearTimeout(timer);
        this.#live.set(peer, s);
        resolve(s);
      });
      s.on('error', (err) => fail(err.message));
      s.on('close', () => {
        fail('closed');
        if (this.#live.get(peer) === s) this.#live.delete(peer);
        if (this.#peers.get(peer) === made) this.#peers.delete(peer);
      });
    });
    this.#peers.set(peer, made);
    return made;
  }

  /**
   * Which way a step of fence `fence` goes to `peer`: 'link', 'nats', or 'drop' (its fence's
   * steps went over a link that has since broken). The first step of a newer fence waits for the
   * connection (once per peer and fence; a local socket answers within a millisecond).
   */
  async stepPath(peer: string, fence: Fence): Promise<'link' | 'nats' | 'drop'> {
    let p = this.#paths.get(peer);
    const same = p && p.fence.term === fence.term && p.fence.generation === fence.generation;
    if (!p || (!same && !fenceOlder(fence, p.fence))) {
      p = { fence, socket: await this.#connect(peer) };
      this.#paths.set(peer, p);
    }
    if (p.socket === null) return 'nats';
    return p.socket.destroyed || this.#closed ? 'drop' : 'link';
  }

  /** Sends a step to `peer` over the link stepPath() chose; returns the frame's bytes. */
  sendStep(peer: string, header: StepHeader, trace: Record<string, string>, hidden: Float32Array): number {
    const s = this.#paths.get(peer)?.socket;
    if (!s || s.destroyed) throw new Error(`no stage link to '${peer}' (stepPath first)`);
    const bytes = writeFrame(s, FrameKind.step, ...stepBody(header, trace, hidden));
    this.counters.stepsOut++;
    return bytes;
  }

  /** Sends a step's samples to `peer` if a link to it is up (true), else starts one for later (false). */
  sendRing(peer: string, r: RingMessage): boolean {
    const s = this.#live.get(peer);
    if (!s || s.destroyed) {
      this.warm(peer);
      return false;
    }
    writeFrame(s, FrameKind.ring, encode(RingTokensSchema, r));
    this.counters.ringsOut++;
    return true;
  }

  /** Closes every connection and the socket, and removes its file. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of [...this.#accepted, ...this.#live.values()]) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    try {
      unlinkSync(this.#path);
    } catch {
      // already gone (server.close removes it on some platforms)
    }
  }
}
