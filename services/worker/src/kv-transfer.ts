// KvTransfer on a worker: the gRPC server that imports pushed KV state into this stage, and the
// client side that exports a sequence in bounded pieces and pushes them to another stage. The
// stage is on its own thread: exports and imports run there, so this thread only moves bytes.
// Memory stays bounded on both sides: the source holds two pieces (about PIECE_BYTES of its rows
// each: the one being sent, the next one being exported meanwhile) and waits when gRPC's flow
// control says the target is behind; the target imports each blob as soon as it is whole and
// stops reading while two wait to be imported.
import { once } from 'node:events';
import { crc32 } from 'node:zlib';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Metadata, Server, ServerCredentials, credentials, status, type ChannelCredentials, type ServerReadableStream, type sendUnaryData, type ClientWritableStream } from '@grpc/grpc-js';
import type { Logger } from '@strata/log';
import { KvStateError } from '@strata/kv-cache';
import { KvTransfer, grpcClient, grpcService, type PushRequest, type PushResponse, type MigrateOutRequest, type MigrateOutReply } from '@strata/wire';
import { WorkerError } from './errors.ts';
import { traceReceive } from './telemetry.ts';
import { injectMetadata } from '@strata/telemetry';

/** bytes of K/V rows per exported STKV blob (a piece): few pieces, each bounded */
export const PIECE_BYTES = 4 * 1024 * 1024;
/** bytes of a blob per gRPC message */
export const CHUNK_BYTES = 1024 * 1024;
/**
 * HTTP/2 flow-control window of a push, per stream and per connection (bytes). Node's default,
 * 64 KiB, makes the sender wait for a WINDOW_UPDATE every 64 KiB: at loopback speed the push
 * then runs at the pace of the receiver's event loop, not of the link.
 */
export const WINDOW_BYTES = 16 * 1024 * 1024;
/** largest blob a target takes (a piece of 256 positions of any sane model fits) */
export const MAX_BLOB_BYTES = 256 * 1024 * 1024;

/** How workers trust each other on KvTransfer: a shared token, TLS (mutual if asked). */
export interface TransferSecurity {
  token: string | null;
  tls: { cert: Buffer; key: Buffer; ca: Buffer; mutual: boolean } | null;
}

/** Reads the token and TLS files a worker's configuration names. */
export function loadSecurity(o: { transferTokenFile?: string; grpcTlsCert?: string; grpcTlsKey?: string; grpcTlsCa?: string; grpcTlsMutual: boolean }): TransferSecurity {
  const token = o.transferTokenFile ? readFileSync(o.transferTokenFile, 'utf8').trim() : null;
  if (token !== null && token.length < 16) throw new WorkerError('bad_config', `the transfer token in ${o.transferTokenFile} is shorter than 16 characters`);
  const tls = o.grpcTlsCert && o.grpcTlsKey && o.grpcTlsCa
    ? { cert: readFileSync(o.grpcTlsCert), key: readFileSync(o.grpcTlsKey), ca: readFileSync(o.grpcTlsCa), mutual: o.grpcTlsMutual }
    : null;
  return { token, tls };
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** What KvTransfer needs of a stage (a StageHost: the stage on its thread). */
export interface TransferStage {
  readonly description: { fingerprint: string; l0: number; l1: number; rowBytes: number };
  /** a sequence's cells in [p0, p1) for layers [l0, l1), in the state format */
  exportState(seq: number, p0: number, p1: number, l0: number, l1: number): Promise<Uint8Array>;
  seqPosMax(seq: number): Promise<number>;
  /** `give`: the caller hands `blob`'s whole buffer over (it moves to the stage thread) */
  importState(blob: Uint8Array, seq: number, give?: boolean): Promise<{ l0: number; l1: number; cells: number }>;
  dropSeq(seq: number): Promise<void>;
}

/** Options of {@link KvTransferServer.start}. */
export interface KvTransferServerOptions {
  host: string;
  /** 0: any free port */
  port: number;
  workerId: string;
  nSeqMax: number;
  stage: TransferStage;
  log: Logger;
  security: TransferSecurity;
  /** largest blob taken, in bytes (default MAX_BLOB_BYTES) */
  maxBlobBytes?: number;
  /** called when a push changed the cache (imported cells, or freed them after a failure) */
  onChange?: () => void;
}

function reply(error: { code: string; message: string } | null, cells: number, bytes: number): PushResponse {
  return { $typeName: 'strata.v1.PushResponse', cells, bytes: BigInt(bytes), error: error ? { $typeName: 'strata.v1.Error', ...error, workerId: '' } : undefined };
}

/** The KvTransfer gRPC server of one worker. */
export class KvTransferServer {
  readonly #server: Server;
  readonly #o: KvTransferServerOptions;
  /** host:port others reach it at */
  address = '';

  private constructor(o: KvTransferServerOptions) {
    this.#o = o;
    this.#server = new Server({ 'grpc.max_receive_message_length': CHUNK_BYTES + 4096 });
    widenServerWindow(this.#server, o.log);
    this.#server.addService(grpcService(KvTransfer), {
      push: (call: ServerReadableStream<PushRequest, PushResponse>, cb: sendUnaryData<PushResponse>) => this.#push(call, traceReceive(call, o.workerId, cb)),
    });
  }

  /** Binds and starts serving. */
  static async start(o: KvTransferServerOptions): Promise<KvTransferServer> {
    const s = new KvTransferServer(o);
    const port = await new Promise<number>((resolve, reject) =>
      s.#server.bindAsync(`${o.host}:${o.port}`, serverCredentials(o.security), (err, p) => (err ? reject(err) : resolve(p))));
    s.address = `${o.host}:${port}`;
    widenSessionWindows(s.#server);
    return s;
  }

  #push(call: ServerReadableStream<PushRequest, PushResponse>, cb: sendUnaryData<PushResponse>): void {
    const { stage, workerId, nSeqMax, log, security } = this.#o;
    if (security.token !== null) {
      const got = String(call.metadata.get('authorization')[0] ?? '');
      if (!timingSafeEqual(digest(got), digest(`Bearer ${security.token}`))) {
        log.warn('refused a KV push without the cluster\'s transfer token', { peer: call.getPeer() });
        cb({ code: status.UNAUTHENTICATED, details: 'a KV push needs this cluster\'s transfer token' });
        return;
      }
    }
    const d = stage.description;
    let header: PushRequest['header'];
    /** the blob being received: its chunks are copied in once, as they come */
    let blob = Buffer.allocUnsafe(0);
    let blobBytes = 0, bytes = 0, cells = 0, done = false;
    /** imports in order, one after the other; reading pauses while two wait */
    let imports: Promise<void> = Promise.resolve();
    let waiting = 0;
    const fail = (code: string, message: string) => {
      if (done) return;
      done = true;
      log.warn('refused a KV push', { code, message, migration: header?.migrationId });
      // The target frees what it took: the sequence is the migration's own.
      if (header && header.targetSeq < nSeqMax) {
        void stage.dropSeq(header.targetSeq).then(() => this.#o.onChange?.(), (err: unknown) => log.warn('a refused push\'s sequence could not be emptied', { err }));
      }
      cb(null, reply({ code, message }, cells, bytes));
      call.destroy();
    };
    const failWith = (err: unknown) => {
      if (err instanceof KvStateError) return fail(err.code, err.message);
      log.error('KV import failed', { err });
      return fail('import_failed', (err as Error).message);
    };
    const importBlob = (whole: Buffer, h: NonNullable<PushRequest['header']>) => {
      if (++waiting >= 2) call.pause();
      imports = imports.then(async () => {
        if (done) return;
        const r = await stage.importState(whole, h.targetSeq, true);
        if (r.l0 !== h.l0 || r.l1 !== h.l1) return fail('layer_mismatch', `a blob of layers ${r.l0}:${r.l1} in a push of ${h.l0}:${h.l1}`);
        cells += r.cells;
        this.#o.onChange?.();
      }).catch(failWith).finally(() => {
        waiting--;
        if (!done) call.resume();
      });
    };
    call.on('data', (m: PushRequest) => {
      if (done) return;
      try {
        if (!header) {
          if (!m.header) return fail('bad_chunk', 'a push starts with its header');
          header = m.header;
          if (header.targetWorkerId !== workerId) return fail('wrong_worker', `pushed to '${header.targetWorkerId}', this is '${workerId}'`);
          if (header.modelFingerprint !== d.fingerprint) return fail('model_mismatch', `the state is of model ${header.modelFingerprint}, this worker runs ${d.fingerprint}`);
          if (header.l0 >= header.l1 || header.l0 < d.l0 || header.l1 > d.l1) {
            return fail('layer_mismatch', `layers ${header.l0}:${header.l1} are not within this stage's ${d.l0}:${d.l1}`);
          }
          if (header.targetSeq >= nSeqMax) return fail('bad_chunk', `target seq ${header.targetSeq} is not below ${nSeqMax}`);
          return;
        }
        if (m.header) return fail('bad_chunk', 'a second header');
        bytes += m.data.length;
        if ((crc32(m.data) >>> 0) !== m.crc32) return fail('checksum', `a chunk of ${m.data.length} bytes fails its CRC-32`);
        blobBytes += m.data.length;
        const max = this.#o.maxBlobBytes ?? MAX_BLOB_BYTES;
        if (blobBytes > max) return fail('too_large', `a blob over ${max} bytes`);
        if (blobBytes > blob.length) {
          const grown = Buffer.allocUnsafe(Math.min(max, Math.max(blobBytes, 2 * blob.length, PIECE_BYTES + CHUNK_BYTES)));
          grown.set(blob.subarray(0, blobBytes - m.data.length));
          blob = grown;
        }
        blob.set(m.data, blobBytes - m.data.length);
        if (!m.endOfBlob) return;
        // handed over with its buffer (moved to the stage thread, not copied)
        const whole = blob.subarray(0, blobBytes);
        blob = Buffer.allocUnsafe(0);
        blobBytes = 0;
        importBlob(whole, header);
      } catch (err) {
        failWith(err);
      }
    });
    call.on('end', () => {
      if (done) return;
      // Replied once every blob is in.
      void imports.then(() => {
        if (done) return;
        done = true;
        if (blobBytes > 0) return cb(null, reply({ code: 'truncated', message: 'the push ended inside a blob' }, cells, bytes));
        cb(null, reply(null, cells, bytes));
      });
    });
    call.on('error', (err) => {
      if (!done) log.warn('a KV push broke off', { err, migration: header?.migrationId });
      done = true;
    });
  }

  /** Stops at once (pushes in progress fail on the source's side). */
  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.tryShutdown(() => resolve());
      setTimeout(() => this.#server.forceShutdown(), 2000).unref();
    });
  }
}

/**
 * grpc-js 1.14 takes `grpc-node.flow_control_window` on clients only (servers: grpc-node pull
 * request 3058), so the server's HTTP/2 settings are widened here, through the fields of the pinned
 * version: the per-stream window in the settings its HTTP/2 server is created with (before bind)...
 */
function widenServerWindow(server: Server, log: Logger): void {
  const common = (server as unknown as { commonServerOptions?: { settings?: Record<string, unknown> } }).commonServerOptions;
  if (!common) {
    log.warn('this grpc-js has no commonServerOptions: KvTransfer keeps HTTP/2\'s 64 KiB window');
    return;
  }
  common.settings = { ...common.settings, initialWindowSize: WINDOW_BYTES };
}

/** ...and the connection window of every session it accepts (after bind). */
function widenSessionWindows(server: Server): void {
  const servers = (server as unknown as { http2Servers?: Map<{ on(e: 'session', f: (s: { setLocalWindowSize?(n: number): void }) => void): void }, unknown> }).http2Servers;
  for (const h of servers?.keys() ?? []) h.on('session', (session) => session.setLocalWindowSize?.(WINDOW_BYTES));
}

function serverCredentials(sec: TransferSecurity): ServerCredentials {
  if (!sec.tls) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(sec.tls.ca, [{ cert_chain: sec.tls.cert, private_key: sec.tls.key }], sec.tls.mutual);
}

function channelCredentials(sec: TransferSecurity): ChannelCredentials {
  if (!sec.tls) return credentials.createInsecure();
  return credentials.createSsl(sec.tls.ca, sec.tls.key, sec.tls.cert);
}

const Client = grpcClient(KvTransfer);
type PushClient = { push(metadata: Metadata, options: { deadline: number }, cb: (err: Error | null, r?: PushResponse) => void): ClientWritableStream<PushRequest>; close(): void };
/** One channel per target, kept: a migration's rounds and parts reuse its connection. */
const clients = new Map<string, PushClient>();

function clientFor(address: string, sec: TransferSecurity): PushClient {
  let c = clients.get(address);
  if (!c) {
    c = new Client(address, channelCredentials(sec), { 'grpc-node.flow_control_window': WINDOW_BYTES, 'grpc.max_send_message_length': CHUNK_BYTES + 4096 }) as unknown as PushClient;
    clients.set(address, c);
  }
  return c;
}

/** Closes every kept channel (at shutdown). */
export function closePushClients(): void {
  for (const c of clients.values()) c.close();
  clients.clear();
}

/**
 * Exports `req`'s positions and layers in pieces and pushes them to the target; resolves with the
 * target's tally. The next piece is exported (on the stage thread) while this one is sent.
 */
export async function pushState(stage: TransferStage, workerId: string, req: MigrateOutRequest, log: Logger, security: TransferSecurity): Promise<MigrateOutReply> {
  const client = clientFor(req.targetAddress, security);
  const metadata = new Metadata();
  if (security.token !== null) metadata.set('authorization', `Bearer ${security.token}`);
  // The active context is the push span's (worker.ts runs this inside it).
  injectMetadata(metadata);
  const perPiece = Math.max(16, Math.min(4096, Math.floor(PIECE_BYTES / ((req.l1 - req.l0) * 2 * stage.description.rowBytes))));
  let sent = 0;
  let callErr: Error | null = null;
  let response: PushResponse | undefined;
  try {
    const end = req.p1 < 0 ? (await stage.seqPosMax(req.seq)) + 1 : req.p1;
    const call = client.push(metadata, { deadline: Date.now() + (req.timeoutMs || 120_000) }, (err, r) => {
      callErr = err;
      response = r;
    });
    const finished = new Promise<void>((resolve) => call.on('status', () => resolve()));
    const write = async (m: Omit<PushRequest, '$typeName'>) => {
      if (!call.write({ $typeName: 'strata.v1.PushRequest', ...m })) await Promise.race([once(call, 'drain'), finished]);
      if (response || callErr) throw new WorkerError('push_refused', `the target ended the push${callErr ? `: ${(callErr as Error).message}` : ''}`);
    };
    await write({
      header: {
        $typeName: 'strata.v1.PushHeader', migrationId: req.migrationId, modelFingerprint: stage.description.fingerprint, targetWorkerId: req.targetWorkerId,
        targetSeq: req.targetSeq, l0: req.l0, l1: req.l1, sourceWorkerId: workerId,
      },
      data: new Uint8Array(0), crc32: 0, endOfBlob: false,
    });
    const piece = (a: number) => {
      const p = stage.exportState(req.seq, a, Math.min(end, a + perPiece), req.l0, req.l1);
      p.catch(() => {}); // awaited below, or dropped with the push
      return p;
    };
    const p0 = Math.max(0, req.p0);
    let next = p0 < end ? piece(p0) : null;
    for (let a = p0; next; a += perPiece) {
      const blob = await next;
      next = a + perPiece < end ? piece(a + perPiece) : null;
      for (let o = 0; o < blob.length; o += CHUNK_BYTES) {
        const data = blob.subarray(o, Math.min(blob.length, o + CHUNK_BYTES));
        await write({ data, crc32: crc32(data) >>> 0, endOfBlob: o + CHUNK_BYTES >= blob.length });
        sent += data.length;
      }
    }
    call.end();
    await finished;
    const r = response as PushResponse | undefined;
    if (callErr || !r) throw new WorkerError('push_failed', `the push to ${req.targetWorkerId} failed: ${(callErr as Error | null)?.message ?? 'no answer'}`);
    if (r.error) return { $typeName: 'strata.v1.MigrateOutReply', error: r.error, bytes: BigInt(sent), cells: r.cells, posMax: end - 1 };
    return { $typeName: 'strata.v1.MigrateOutReply', bytes: BigInt(sent), cells: r.cells, posMax: end - 1 };
  } catch (err) {
    const r = response as PushResponse | undefined;
    if (r?.error) return { $typeName: 'strata.v1.MigrateOutReply', error: r.error, bytes: BigInt(sent), cells: r.cells, posMax: -1 };
    log.warn('a KV push failed', { migration: req.migrationId, err });
    const code = err instanceof WorkerError ? err.code : 'push_failed';
    return { $typeName: 'strata.v1.MigrateOutReply', error: { $typeName: 'strata.v1.Error', code, message: (err as Error).message, workerId }, bytes: BigInt(sent), cells: 0, posMax: -1 };
  }
}
