import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { StepEntrySchema, StepHeaderSchema, type RingTokens } from '@strata/wire';
import { FrameKind, FrameReader, frame, readStep, stepBody, writeFrame, type Frame, type LinkStep } from './link-frames.ts';
import { StageLinks, socketPath, type LinkInbox } from './stage-link.ts';

const header = (stepId: bigint, term = 1n, generation = 1n) => create(StepHeaderSchema, {
  stepId, pipelineId: 'p0', route: ['a', 'b'], hop: 1, term, generation,
  entries: [create(StepEntrySchema, { seq: 3, nTokens: 2, pos0: 5, output: true })], stageMs: [1.5],
});
const concat = (parts: Uint8Array[]) => Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));

/** What a StageLinks' far ends handed it. */
function inbox(): LinkInbox & { steps: LinkStep[]; rings: RingTokens[]; warnings: string[] } {
  const got = { steps: [] as LinkStep[], rings: [] as RingTokens[], warnings: [] as string[] };
  return { ...got, step: (s) => got.steps.push(s), ring: (r) => got.rings.push(r), warn: (m, f) => got.warnings.push(`${m}: ${String(f.why)}`) };
}

/** A raw client of worker `id`'s socket in `dir`: writes `frames` ([kind, ...body]) and returns what the worker said until it closed. */
async function exchange(dir: string, id: string, frames: [kind: (typeof FrameKind)[keyof typeof FrameKind], ...body: Uint8Array[]][]): Promise<Frame[]> {
  const s = createConnection(socketPath(dir, id));
  const said: Buffer[] = [];
  const closed = new Promise<void>((resolve) => {
    s.on('data', (d) => said.push(d));
    s.on('close', () => resolve());
    s.on('error', () => {});
  });
  for (const [kind, ...body] of frames) writeFrame(s, kind, ...body);
  await closed;
  return new FrameReader(4096).push(Buffer.concat(said));
}

const until = async (what: string, ok: () => boolean | Promise<boolean>) => {
  for (let i = 0; i < 200 && !(await ok()); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(await ok(), what);
};

describe('stage link frames', () => {
  it('come out whole however the bytes are cut', () => {
    const bytes = concat([...frame(FrameKind.ring, Buffer.from('abc')), ...frame(FrameKind.welcome), ...frame(FrameKind.step, Buffer.alloc(300, 7))]);
    for (const cut of [1, 2, 5, 7, 64, bytes.length]) {
      const r = new FrameReader(1000);
      const frames = [];
      for (let at = 0; at < bytes.length; at += cut) frames.push(...r.push(bytes.subarray(at, at + cut)));
      assert.deepEqual(frames.map((f) => [f.kind, f.body.length]), [[FrameKind.ring, 3], [FrameKind.welcome, 0], [FrameKind.step, 300]], `cut every ${cut} bytes`);
      assert.equal(frames[0]!.body.toString(), 'abc');
      assert.ok(frames[2]!.body.every((b) => b === 7));
    }
  });

  it('over the limit, of an unknown kind or empty, are refused', () => {
    assert.throws(() => new FrameReader(100).push(concat(frame(FrameKind.step, Buffer.alloc(100)))), /101 bytes; at most 100/);
    const odd = Buffer.from([1, 0, 0, 0, 9]);
    assert.throws(() => new FrameReader(100).push(odd), /kind 9/);
    assert.throws(() => new FrameReader(100).push(Buffer.from([0, 0, 0, 0, 4])), /a frame of 0 bytes/);
  });

  it('carry a step: header, trace context and activations', () => {
    const hidden = Float32Array.from({ length: 2 * 8 }, (_, i) => i * 0.25 - 1);
    const body = concat(stepBody(header(9n), { traceparent: '00-abc-def-01' }, hidden));
    const s = readStep(body.subarray(0)); // a view at an odd offset is fine: the activations are copied
    assert.equal(s.header.stepId, 9n);
    assert.deepEqual(s.header.stageMs, [1.5]);
    assert.deepEqual(s.trace, { traceparent: '00-abc-def-01' });
    assert.deepEqual([...s.hidden], [...hidden]);
  });

  it('of a damaged step are refused with what is wrong', () => {
    const body = concat(stepBody(header(9n), {}, new Float32Array(4)));
    assert.throws(() => readStep(body.subarray(0, 2)), /ends inside its header's length/);
    assert.throws(() => readStep(body.subarray(0, 10)), /ends inside its header/);
    assert.throws(() => readStep(body.subarray(0, body.length - 3)), /not float32/);
    const trace = Buffer.from(concat(stepBody(header(9n), { a: 'b' }, new Float32Array(0))));
    trace[trace.length - 2] = 0x7b; // {"a":{b"} ... no longer JSON
    assert.throws(() => readStep(trace), /trace context that is not JSON/);
    const notStrings = concat([Buffer.from([0, 0, 0, 0]), Buffer.from([3, 0, 0, 0]), Buffer.from('[1]')]);
    assert.throws(() => readStep(notStrings), /not an object of strings/);
  });
});

describe('stage links', () => {
  const root = mkdtempSync(join(tmpdir(), 'strata-link-test-'));
  const open: StageLinks[] = [];
  after(async () => {
    for (const l of open) await l.close();
    rmSync(root, { recursive: true, force: true });
  });
  const start = async (dir: string, workerId: string, token: string | null, box = inbox()) => {
    const l = await StageLinks.open({ dir, workerId, token, maxFrameBytes: 1 << 16 }, box);
    open.push(l);
    return { l, box };
  };

  it('refuse a directory other users may enter, and a file in a socket\'s place', async () => {
    const dir = join(root, 'open');
    await start(dir, 'x', null);
    chmodSync(dir, 0o755);
    await assert.rejects(start(dir, 'y', null), /mode 755: other users may reach its sockets/);
    const dir2 = join(root, 'file');
    await start(dir2, 'x', null);
    writeFileSync(join(dir2, 'z.sock'), 'not a socket');
    await assert.rejects(start(dir2, 'z', null), /exists and is not a socket/);
  });

  it('carry steps forward and samples back; a link keeps its fence\'s steps when it breaks', async () => {
    const dir = join(root, 'pair');
    const a = await start(dir, 'a', 'a-token-of-16-chars');
    const b = await start(dir, 'b', 'a-token-of-16-chars');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 1n }), 'link');
    a.l.sendStep('b', header(1n), { traceparent: 't' }, Float32Array.of(1, 2, 3, 4));
    await until('b got the step', () => b.box.steps.length === 1);
    assert.deepEqual([...b.box.steps[0]!.hidden], [1, 2, 3, 4]);
    assert.deepEqual(b.box.steps[0]!.trace, { traceparent: 't' });

    // Samples go back on b's own connection to a, once it is made.
    const ring = { stepId: 1n, pipelineId: 'p0', tokens: [{ seq: 3, token: 42, ends: false }], term: 1n, generation: 1n };
    assert.equal(b.l.sendRing('a', ring), false, 'no connection yet: NATS this time');
    let sent = false;
    await until('b connected to a', () => (sent ||= b.l.sendRing('a', ring)));
    await until('a got the samples', () => a.box.rings.length === 1);
    assert.equal(a.box.rings[0]!.tokens[0]!.token, 42);
    assert.deepEqual(a.l.counters, { stepsIn: 0, stepsOut: 1, ringsIn: 1, ringsOut: 0 });
    assert.deepEqual(b.l.counters, { stepsIn: 1, stepsOut: 0, ringsIn: 0, ringsOut: 1 });

    // b goes away: the fence whose steps took the link drops them (NATS could overtake what the
    // link still held); a newer fence goes over NATS while there is no b, and over the link again
    // once a new b listens.
    await b.l.close();
    await until('a saw the link break', async () => (await a.l.stepPath('b', { term: 1n, generation: 1n })) === 'drop');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 1n }), 'drop');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 0n }), 'drop', 'an older fence keeps the path too');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 2n }), 'nats');
    await start(dir, 'b', 'a-token-of-16-chars');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 3n }), 'nats', 'a failed connection is retried after a while, not at once');
  });

  it('refuse a peer without the token, and frames before the hello', async () => {
    const dir = join(root, 'guarded');
    const b = await start(dir, 'b', 'the-real-token-0123');
    const a = await start(dir, 'a', 'a-wrong-token-0123');
    assert.equal(await a.l.stepPath('b', { term: 1n, generation: 1n }), 'nats');
    await until('b said why', () => b.box.warnings.some((w) => /without the cluster's token/.test(w)));
    assert.ok(a.box.warnings.some((w) => /refused: a hello without the cluster's token/.test(w)), a.box.warnings.join('; '));

    // A raw client that sends a step first is cut off, and nothing reaches the stage.
    const frames = await exchange(dir, 'b', [[FrameKind.step, ...stepBody(header(5n), {}, new Float32Array(2))]]);
    assert.deepEqual(frames.map((f) => f.kind), [FrameKind.refuse]);
    assert.match(frames[0]!.body.toString(), /the first frame is not a hello/);
    assert.equal(b.box.steps.length, 0);
  });

  it('refuse a hello that is not an object, and stay up', async () => {
    const dir = join(root, 'odd-hello');
    const b = await start(dir, 'b', null);
    for (const hello of ['null', '[1]', '"hi"', '{"v":']) {
      const frames = await exchange(dir, 'b', [[FrameKind.hello, Buffer.from(hello)]]);
      assert.deepEqual(frames.map((f) => f.kind), [FrameKind.refuse], hello);
      assert.match(frames[0]!.body.toString(), /not JSON|not a JSON object/, hello);
    }
    assert.equal(b.box.steps.length, 0);
  });

  it('cut off a peer whose frame after the hello is damaged', async () => {
    const dir = join(root, 'damaged');
    const b = await start(dir, 'b', null);
    const frames = await exchange(dir, 'b', [
      [FrameKind.hello, Buffer.from(JSON.stringify({ v: 1, from: 'raw', to: 'b' }))],
      [FrameKind.step, Buffer.from([200, 0, 0, 0, 1, 2])],
    ]);
    assert.deepEqual(frames.map((f) => f.kind), [FrameKind.welcome, FrameKind.refuse]);
    assert.match(frames[1]!.body.toString(), /ends inside its header/);
    assert.equal(b.box.steps.length, 0);
  });
});
