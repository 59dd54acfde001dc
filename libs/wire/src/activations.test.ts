import assert from 'node:assert/strict';
import { test } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { StageInputAssembler, encodeStageInput } from './activations.ts';
import { StageInputSchema, StepHeaderSchema } from './gen/strata/v1/worker_pb.ts';
import { encode } from './codec.ts';
import { WireError } from './errors.ts';

function header(stepId: bigint) {
  return create(StepHeaderSchema, { stepId, pipelineId: 'p', route: ['a', 'b'], hop: 1, replySubject: 'r', entries: [{ seq: 3, nTokens: 5, pos0: 7, output: true }] });
}

test('activations split under the max payload and come back bit for bit', () => {
  const hidden = new Float32Array(100_000).map((_, i) => Math.sin(i) * 1e3);
  const msgs = encodeStageInput(header(42n), hidden, 64 * 1024);
  assert.equal(msgs.length, Math.ceil((hidden.byteLength + 1) / (64 * 1024 - 64)));
  for (const m of msgs) assert.ok(m.length <= 64 * 1024, `message of ${m.length} bytes`);
  const asm = new StageInputAssembler();
  let out = null;
  for (const [i, m] of msgs.entries()) {
    out = asm.add(m);
    assert.equal(out === null, i < msgs.length - 1);
  }
  assert.ok(out);
  assert.equal(out.header.entries[0]!.pos0, 7);
  assert.deepEqual(out.hidden, hidden);
  assert.equal(asm.pending, 0);
});

test('an empty payload is one message (first stage)', () => {
  const msgs = encodeStageInput(header(1n), new Float32Array(0), 1 << 20);
  assert.equal(msgs.length, 1);
  const out = new StageInputAssembler().add(msgs[0]!);
  assert.equal(out?.hidden.length, 0);
});

test('corrupt, out-of-order and headless chunks are refused by name', () => {
  const asm = new StageInputAssembler();
  assert.throws(() => asm.add(Uint8Array.of(0xff, 0xff, 0xff)), (e) => e instanceof WireError && e.code === 'corrupt');
  const orphan = encode(StageInputSchema, { chunk: 1, chunks: 2, stepId: 9n, data: new Uint8Array(4) });
  assert.throws(() => asm.add(orphan), (e) => e instanceof WireError && e.code === 'bad_chunk');
  const msgs = encodeStageInput(header(5n), new Float32Array(50_000), 64 * 1024);
  asm.add(msgs[0]!);
  assert.throws(() => asm.add(msgs[2]!), (e) => e instanceof WireError && e.code === 'bad_chunk');
  assert.equal(asm.pending, 0, 'a broken step is dropped, not left half open');
  const odd = encode(StageInputSchema, { header: header(6n), chunk: 0, chunks: 1, stepId: 6n, data: new Uint8Array(5) });
  assert.throws(() => asm.add(odd), /not float32/);
});

test('stale partial steps are pruned', () => {
  const asm = new StageInputAssembler();
  const msgs = encodeStageInput(header(8n), new Float32Array(50_000), 64 * 1024);
  asm.add(msgs[0]!, 1000);
  assert.deepEqual(asm.prune(5000, 3000), []);
  assert.deepEqual(asm.prune(5000, 7000), [8n]);
  assert.equal(asm.pending, 0);
});
