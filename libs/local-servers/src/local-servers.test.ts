// Real nats-server and redis-server processes: start, greet, persist across restart, stop, fail clearly.
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { LocalServerError, findBinary, freePort, startNats, startRedis, type LocalServer } from './mod.ts';

const root = mkdtempSync(join(tmpdir(), 'strata-local-servers-'));
const started: LocalServer[] = [];
after(async () => {
  await Promise.all(started.map((s) => s.stop()));
  rmSync(root, { recursive: true, force: true });
});

/** Keeps a started server for cleanup. */
function keep(server: LocalServer): LocalServer {
  started.push(server);
  return server;
}

/** Sends `payload` (if any) on a fresh connection and resolves with the text received once `enough` holds. */
function exchange(port: number, payload: string | undefined, enough: (received: Buffer) => boolean): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.setTimeout(3000, () => socket.destroy(new Error(`timeout, got ${JSON.stringify(received.toString())}`)));
    socket.once('connect', () => payload !== undefined && socket.write(payload));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (enough(received)) {
        socket.destroy();
        resolve(received);
      }
    });
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed, got ${JSON.stringify(received.toString())}`)));
  });
}

/** The JSON of the INFO line a NATS server greets a client with. */
async function natsInfo(port: number): Promise<Record<string, unknown>> {
  const line = (await exchange(port, undefined, (b) => b.includes('\r\n'))).toString();
  assert.match(line, /^INFO \{/);
  return JSON.parse(line.slice(5, line.indexOf('\r\n'))) as Record<string, unknown>;
}

/** Runs one Redis command over raw RESP; resolves with a simple string, integer, bulk string (or null), or throws on an error reply. */
async function redis(port: number, ...args: string[]): Promise<string | number | null> {
  const request = `*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('');
  /** true once `b` holds one whole simple, integer, error, or bulk reply (bulk lengths count bytes) */
  const complete = (b: Buffer): boolean => {
    const eol = b.indexOf('\r\n');
    if (eol < 0) return false;
    if (b[0] !== 0x24 /* $ */) return true;
    const n = Number(b.subarray(1, eol).toString());
    return n < 0 || b.length >= eol + 2 + n + 2;
  };
  const reply = await exchange(port, request, complete);
  const eol = reply.indexOf('\r\n');
  const head = reply.subarray(1, eol).toString();
  const kind = String.fromCharCode(reply[0]!);
  switch (kind) {
    case '+': return head;
    case ':': return Number(head);
    case '$': return Number(head) < 0 ? null : reply.subarray(eol + 2, eol + 2 + Number(head)).toString();
    default: throw new Error(`redis error reply: ${reply.toString().trimEnd()}`);
  }
}

/** Resolves with the error a connection to `port` fails with. */
function refused(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => { socket.destroy(); resolve(undefined); });
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
  });
}

describe('freePort and findBinary', () => {
  it('hands out a bindable loopback port', async () => {
    const port = await freePort();
    assert.ok(port > 0 && port < 65536);
    const server: Server = createServer();
    await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('finds the Debian binaries outside PATH and names the apt packages when one is missing', () => {
    assert.equal(findBinary('nats-server', { pathEnv: '' }), '/usr/sbin/nats-server');
    assert.throws(() => findBinary('strata-no-such-server', { pathEnv: '/nonexistent' }), (e: unknown) => {
      assert.ok(e instanceof LocalServerError);
      assert.equal(e.code, 'not_installed');
      assert.match(e.message, /apt-get install nats-server redis-server/);
      return true;
    });
  });
});

describe('startNats', () => {
  it('serves core NATS on the chosen port with the configured max_payload, and restarts on the same port', async () => {
    const port = await freePort();
    const nats = keep(await startNats({ dir: join(root, 'nats'), port, maxPayload: 2 * 1024 * 1024 }));
    assert.equal(nats.url, `nats://127.0.0.1:${port}`);
    const info = await natsInfo(port);
    assert.equal(info.port, port);
    assert.equal(info.max_payload, 2 * 1024 * 1024);
    assert.equal(info.jetstream, undefined, 'no JetStream');

    const firstPid = nats.pid;
    assert.ok(nats.kill('SIGKILL'), 'chaos: the server dies without warning');
    await nats.restart();
    assert.equal(nats.port, port);
    assert.notEqual(nats.pid, firstPid);
    assert.equal((await natsInfo(port)).port, port);
  });

  it('stops idempotently and frees the port', async () => {
    const nats = keep(await startNats({ dir: join(root, 'nats-stop') }));
    const pid = nats.pid!;
    await Promise.all([nats.stop(), nats.stop()]);
    await nats.stop();
    assert.equal(nats.running, false);
    assert.equal(nats.pid, undefined);
    assert.equal(nats.kill(), false);
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the process is gone');
    assert.equal(await refused(nats.port), 'ECONNREFUSED');
  });

  it('reports a missing binary as not_installed', async () => {
    await assert.rejects(startNats({ dir: join(root, 'missing'), binary: '/nonexistent/nats-server' }), { name: 'LocalServerError', code: 'not_installed' });
  });

  it('reports a server that never answers as start_timeout, with its output, and kills it', async () => {
    const fake = join(root, 'silent-server');
    writeFileSync(fake, '#!/bin/sh\necho "pretending to start"\nexec sleep 30\n');
    chmodSync(fake, 0o755);
    const t0 = Date.now();
    await assert.rejects(startNats({ dir: join(root, 'silent'), binary: fake, startTimeoutMs: 300 }), (e: unknown) => {
      assert.ok(e instanceof LocalServerError);
      assert.equal(e.code, 'start_timeout');
      assert.match(e.message, /pretending to start/);
      return true;
    });
    assert.ok(Date.now() - t0 < 3000, 'the SIGTERM after the timeout ends the process');
  });
});

describe('startRedis', () => {
  it('answers PING, keeps data across restart on the same port, and stops idempotently', async () => {
    const redisServer = keep(await startRedis({ dir: join(root, 'redis') }));
    const { port } = redisServer;
    assert.equal(redisServer.url, `redis://127.0.0.1:${port}`);
    assert.equal(await redis(port, 'PING'), 'PONG');
    assert.equal(await redis(port, 'SET', 'strata:key', 'value ✓'), 'OK');
    assert.equal(await redis(port, 'GET', 'strata:key'), 'value ✓');

    const firstPid = redisServer.pid;
    await redisServer.restart();
    assert.equal(redisServer.port, port);
    assert.notEqual(redisServer.pid, firstPid);
    assert.equal(await redis(port, 'GET', 'strata:key'), 'value ✓', 'the append-only file survived the restart');

    await redisServer.stop();
    await redisServer.stop();
    assert.equal(redisServer.running, false);
    assert.equal(await refused(port), 'ECONNREFUSED');
  });

  it('reports a port already taken as exited, with the server output', async () => {
    const blocker = createServer((socket) => socket.destroy()); // not Redis: hangs up on the readiness probe
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      await assert.rejects(startRedis({ dir: join(root, 'redis-busy'), port, appendonly: false }), (e: unknown) => {
        assert.ok(e instanceof LocalServerError);
        assert.equal(e.code, 'exited');
        assert.match(e.output ?? '', /in use/i);
        return true;
      });
    } finally {
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
    }
  });
});
