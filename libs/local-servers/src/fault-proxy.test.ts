// The fault proxy: bytes pass unchanged and in order; latency delays each way; bandwidth paces;
// a cut drops open connections and holds new ones until healed.
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { FaultProxy } from './fault-proxy.ts';

/** An echo server on loopback. */
async function echo(): Promise<{ server: Server; port: number }> {
  const server = createServer((s) => s.pipe(s));
  const port = await new Promise<number>((r) => server.listen(0, '127.0.0.1', () => r((server.address() as { port: number }).port)));
  return { server, port };
}

/** Sends `bytes` and resolves with the ms until all of them came back. */
function roundTrip(s: Socket, bytes: Buffer): Promise<number> {
  const t0 = performance.now();
  let got = 0;
  return new Promise((resolve) => {
    const on = (d: Buffer) => {
      got += d.length;
      if (got >= bytes.length) {
        s.off('data', on);
        resolve(performance.now() - t0);
      }
    };
    s.on('data', on);
    s.write(bytes);
  });
}

describe('fault proxy', () => {
  let target: { server: Server; port: number };
  let proxy: FaultProxy;
  before(async () => {
    target = await echo();
    proxy = await FaultProxy.start(target.port);
  });
  after(async () => {
    await proxy.stop();
    target.server.close();
  });

  it('passes bytes in order, with latency each way and a bandwidth limit', async () => {
    const s = connect({ host: '127.0.0.1', port: proxy.port });
    await new Promise((r) => s.once('connect', r));
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => i % 256));
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    assert.ok((await roundTrip(s, data)) < 50);
    assert.deepEqual(Buffer.concat(parts), data);
    proxy.set({ latencyMs: 20 });
    const slow = await roundTrip(s, Buffer.from('x'));
    assert.ok(slow >= 39 && slow < 200, `a round trip of ${slow} ms with 20 ms each way`);
    proxy.set({ latencyMs: 0, bytesPerSecond: 100_000 });
    const paced = await roundTrip(s, Buffer.alloc(20_000));
    assert.ok(paced >= 190, `20 kB at 100 kB/s each way took ${paced} ms`);
    proxy.set({ bytesPerSecond: 0 });
    s.destroy();
  });

  it('bytes paced by the bandwidth limit still leave in order', async () => {
    // Chunks of many sizes, arriving one by one: each gets a due time of its own, and timers of
    // different delays can fire out of order.
    const s = connect({ host: '127.0.0.1', port: proxy.port, noDelay: true });
    await new Promise((r) => s.once('connect', r));
    proxy.set({ bytesPerSecond: 2_000_000 });
    const sizes = Array.from({ length: 300 }, (_, i) => 100 + ((i * 7919) % 2900));
    const data = Buffer.from(Array.from({ length: sizes.reduce((a, b) => a + b, 0) }, (_, i) => (i * 31 + (i >> 8)) % 256));
    const parts: Buffer[] = [];
    let got = 0;
    const back = new Promise<void>((resolve) => s.on('data', (d: Buffer) => {
      parts.push(d);
      if ((got += d.length) >= data.length) resolve();
    }));
    for (let o = 0, i = 0; i < sizes.length; o += sizes[i++]!) {
      s.write(data.subarray(o, o + sizes[i]!));
      await new Promise((r) => setImmediate(r));
    }
    await back;
    proxy.set({ bytesPerSecond: 0 });
    assert.ok(Buffer.concat(parts).equals(data), 'the echo is the bytes sent, in order');
    s.destroy();
  });

  it('a cut drops open connections and holds new ones until healed', async () => {
    const s = connect({ host: '127.0.0.1', port: proxy.port });
    await new Promise((r) => s.once('connect', r));
    const closed = new Promise((r) => s.once('close', r));
    proxy.cut();
    await closed;
    const late = connect({ host: '127.0.0.1', port: proxy.port });
    await new Promise((r) => late.once('connect', r));
    let answered = false;
    late.once('data', () => (answered = true));
    late.write('hello');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(answered, false, 'nothing crosses a cut link');
    proxy.heal();
    const back = await new Promise<string>((r) => late.once('data', (d: Buffer) => r(d.toString())));
    assert.equal(back, 'hello');
    late.destroy();
  });
});
