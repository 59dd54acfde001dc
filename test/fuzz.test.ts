// Fuzzing every input boundary with seeded random damage: GGUF files, the KV state format,
// protobuf on the wire, OpenAI request bodies, HTTP requests to a live gateway, NATS payloads on
// every subject, and KvTransfer pushes. Each input must end in the boundary's own error class (or
// be accepted), never a crash, a hang or a 500; the cluster serves correctly afterwards. Run counts
// are printed.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { credentials } from '@grpc/grpc-js';
import { connect } from 'nats';
import { GgufError, GgufFile } from '@strata/gguf';
import { KvStateError, decodeState } from '@strata/kv-cache';
import { ModelError, Pipeline, Rng, ensureDefaultModel, prefill, readHParams } from '@strata/model';
import {
  ClusterStateSchema, GenerateRequestSchema, HeartbeatSchema, KvTransfer, MigrateOutRequestSchema, SeqOpRequestSchema,
  StageInputSchema, StepResultSchema, WireError, decode, encode, grpcClient, subjects, type PushRequest, type PushResponse,
} from '@strata/wire';
import { ApiError, parseChat, parseCompletion } from '@strata/gateway';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState } from './helpers/cluster.ts';
import { synthModel } from './helpers/models.ts';

const SEED = 20261127;
const rng = new Rng(SEED);
const int = (n: number) => Math.floor(rng.uniform() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

/** Flips, overwrites, truncates or extends a copy of `b`. */
function damage(b: Uint8Array): Uint8Array {
  const c = Uint8Array.from(b);
  switch (int(4)) {
    case 0: for (let k = 0, n = 1 + int(8); k < n; k++) c[int(c.length)]! ^= 1 << int(8); return c;
    case 1: { const at = int(c.length); c.fill(int(256), at, Math.min(c.length, at + 1 + int(16))); return c; }
    case 2: return c.subarray(0, int(c.length));
    default: { const d = new Uint8Array(c.length + 1 + int(64)); d.set(c); for (let i = c.length; i < d.length; i++) d[i] = int(256); return d; }
  }
}

const randomBytes = (n: number) => Uint8Array.from({ length: n }, () => int(256));

function randomJson(depth = 0): unknown {
  const keys = ['model', 'prompt', 'messages', 'max_tokens', 'stream', 'stop', 'n', 'temperature', 'top_p', 'seed', 'logprobs', 'top_logprobs',
    'response_format', 'session_id', 'role', 'content', 'type', 'json_schema', 'schema', 'stream_options', 'include_usage', 'grammar', 'x'];
  switch (depth > 3 ? int(5) : int(8)) {
    case 0: return null;
    case 1: return rng.uniform() < 0.5;
    case 2: return pick([0, -1, 1, 2.5, 1e300, -1e300, 16, 4096, 2 ** 53, NaN]);
    case 3: return pick(['', 'x', 'default-llama-8x256-s42-f16', 'user', 'assistant', 'json_object', 'json_schema', 'text', '\u0000', '🙂'.repeat(int(4))]);
    case 4: return 'word '.repeat(int(20));
    case 5: return Array.from({ length: int(4) }, () => randomJson(depth + 1));
    default: return Object.fromEntries(Array.from({ length: int(6) }, () => [pick(keys), randomJson(depth + 1)]));
  }
}

describe('fuzzing the boundaries', () => {
  it('GGUF files: damaged copies are refused with GgufError/ModelError or read', () => {
    const good = readFileSync(synthModel({ arch: 'llama', nLayer: 2, nEmbd: 64, nHead: 2, nHeadKv: 2, nFf: 128, nCtxTrain: 256, seed: 21 }));
    const dir = mkdtempSync(join(tmpdir(), 'strata-fuzz-'));
    const tally = { refused: 0, read: 0 };
    try {
      for (let i = 0; i < 300; i++) {
        const head = good.subarray(0, 64 * 1024);
        const bad = damage(head);
        const f = join(dir, `f${i}.gguf`);
        writeFileSync(f, Buffer.concat([bad, good.subarray(head.length)]));
        try {
          const g = GgufFile.open(f);
          try {
            readHParams(g);
          } finally {
            g.close();
          }
          tally.read++;
        } catch (err) {
          assert.ok(err instanceof GgufError || err instanceof ModelError, `run ${i}: ${(err as Error).name}: ${(err as Error).message}`);
          tally.refused++;
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    console.log(`GGUF: 300 damaged files (seed ${SEED}): ${tally.refused} refused by name, ${tally.read} still readable`);
    assert.ok(tally.refused > 200);
  });

  it('KV state blobs: every damaged blob is a KvStateError', () => {
    const model = ensureDefaultModel();
    const p = Pipeline.open({ model, threads: 1, ctxSize: 256 });
    prefill(p, Int32Array.from({ length: 40 }, (_, i) => 100 + i), 0);
    const blob = p.stages[0]!.cache.exportState(0);
    p.dispose();
    let refused = 0;
    for (let i = 0; i < 2000; i++) {
      try {
        decodeState(damage(blob));
      } catch (err) {
        assert.ok(err instanceof KvStateError, `run ${i}: ${(err as Error).message}`);
        refused++;
      }
    }
    console.log(`KV state: 2000 damaged blobs of ${blob.length} bytes: ${refused} refused by name`);
    assert.equal(refused, 2000, 'no damage goes unnoticed (checksums everywhere)');
  });

  it('protobuf on the wire: random and damaged bytes decode or raise WireError', () => {
    const schemas = [GenerateRequestSchema, StageInputSchema, StepResultSchema, HeartbeatSchema, SeqOpRequestSchema, MigrateOutRequestSchema, ClusterStateSchema];
    const sample = encode(GenerateRequestSchema, { requestId: 'r', prompt: [1, 2, 3], eventsSubject: 's', sampling: { temperature: 0.5 } });
    let refused = 0, decoded = 0;
    for (let i = 0; i < 3000; i++) {
      const bytes = i % 2 ? randomBytes(int(200)) : damage(sample);
      try {
        decode(pick(schemas), bytes);
        decoded++;
      } catch (err) {
        assert.ok(err instanceof WireError && err.code === 'corrupt', `run ${i}: ${(err as Error).message}`);
        refused++;
      }
    }
    console.log(`protobuf: 3000 inputs over ${schemas.length} messages: ${refused} refused (corrupt), ${decoded} decoded into well-typed messages`);
  });

  it('OpenAI bodies: random JSON is accepted or a 400 naming the parameter', () => {
    let refused = 0, accepted = 0;
    const known = ['max_tokens', 'stream', 'stop', 'n', 'temperature', 'top_p', 'seed', 'logprobs', 'response_format', 'session_id', 'stream_options', 'grammar'];
    for (let i = 0; i < 5000; i++) {
      // Half random values, half a valid body with one or two known fields set at random.
      const valid = i % 2 ? { model: 'm', messages: [{ role: 'user', content: 'hi' }] } : { model: 'm', prompt: 'hi' };
      const body = i % 4 < 2 ? randomJson() : { ...valid, ...Object.fromEntries(Array.from({ length: 1 + int(2) }, () => [pick(known), randomJson(2)])) };
      try {
        (i % 2 ? parseChat : parseCompletion)(body);
        accepted++;
      } catch (err) {
        assert.ok(err instanceof ApiError && err.status === 400, `run ${i}: ${(err as Error).message}`);
        refused++;
      }
    }
    console.log(`OpenAI bodies: 5000 random JSON values: ${refused} refused with 400, ${accepted} accepted`);
  });
});

describe('fuzzing a live cluster', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({ model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 512, natsAuth: false, signTerms: false, transferToken: false }); // the fuzzer speaks as every role
  });
  after(async () => {
    await cluster?.stop();
  });

  const servesCorrectly = async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }) });
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as { choices: { text: string }[] }).choices[0]!.text, 'Proxy уби限fahneteLC gratefulabout');
  };

  it('HTTP: random bodies, headers and paths get JSON answers, never a 500 or a hang', async () => {
    const paths = ['/v1/completions', '/v1/chat/completions', '/v1/models', '/admin/v1/migrations', '/admin/v1/sessions/s/migrate', '/admin/v1/workers/w/drain', '/admin/v1/workers/w/undrain', '/nope', '/v1/completions?x=1'];
    const statuses = new Map<number, number>();
    for (let i = 0; i < 200; i++) {
      const path = pick(paths);
      const method = pick(['POST', 'POST', 'GET', 'PUT', 'DELETE']);
      let body: string | Uint8Array | undefined;
      if (method === 'POST' || method === 'PUT') {
        const v = randomJson();
        body = pick([JSON.stringify(v), JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'x', max_tokens: 2, ...(typeof v === 'object' && v && !Array.isArray(v) ? v : {}) }), Buffer.from(randomBytes(int(300))), '']);
      }
      const r = await fetch(`${cluster.url}${path}`, { method, headers: { 'content-type': pick(['application/json', 'text/plain', 'application/x-www-form-urlencoded']), 'x-session-id': pick(['a', 'b.c', '', 'x'.repeat(200)]) }, body, signal: AbortSignal.timeout(30_000) });
      const text = await r.text();
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      assert.ok(r.status < 500 || r.status === 503, `run ${i}: ${method} ${path} → ${r.status} ${text.slice(0, 200)}`);
      if (r.headers.get('content-type')?.startsWith('text/event-stream')) continue;
      assert.doesNotThrow(() => JSON.parse(text), `run ${i}: not JSON: ${text.slice(0, 100)}`);
    }
    console.log(`HTTP: 200 random requests: ${[...statuses].sort((a, b) => a[0] - b[0]).map(([s, n]) => `${n}× ${s}`).join(', ')}`);
    await servesCorrectly();
  });

  it('NATS: random payloads on every subject leave every service serving', async () => {
    const nc = await connect({ servers: cluster.nats.url });
    const publishOnly = [subjects.workerHeartbeat(), subjects.workerStep('p0-s0'), subjects.workerStep('p0-s1'), subjects.coordinatorCancel(), subjects.coordinatorResult('coordinator')];
    const requests = [subjects.workerSeq('p0-s0'), subjects.workerSeq('p0-s1'), subjects.workerStats('p0-s1'), subjects.workerMigrate('p0-s0'), subjects.coordinatorGenerate(), subjects.coordinatorGenerateAt('coordinator'),
      subjects.coordinatorCluster(), subjects.coordinatorMigrate(), subjects.coordinatorMigrations(), subjects.coordinatorDrain(), subjects.coordinatorUndrain(), subjects.coordinatorSessions()];
    let answered = 0;
    for (let i = 0; i < 300; i++) {
      const payload = i % 3 ? randomBytes(int(400)) : damage(encode(SeqOpRequestSchema, { ops: [{ kind: 1, seq: int(100), p0: -1, p1: -1 }] }));
      nc.publish(pick(publishOnly), payload);
      const subject = pick(requests);
      // A drain is real work: it would empty the only pipeline. Its garbage still gets an answer.
      if (subject === subjects.coordinatorDrain() && int(2)) continue;
      try {
        await nc.request(subject, payload, { timeout: 5000 });
        answered++;
      } catch (err) {
        assert.fail(`run ${i}: ${subject} did not answer: ${(err as Error).message}`);
      }
    }
    await nc.flush();
    await nc.close();
    const state = await clusterState(cluster.natsUrl);
    console.log(`NATS: 300 random publishes and ${answered} random requests, every request answered`);
    assert.equal(state.pipelines.length, 1, 'the pipeline is still up');
    await servesCorrectly();
  });

  it('KvTransfer: random pushes are refused with a code and change nothing', async () => {
    const state = await clusterState(cluster.natsUrl);
    const w = state.workers.find((x) => x.stage!.workerId === 'p0-s1')!.stage!;
    const Client = grpcClient(KvTransfer);
    const client = new Client(w.grpcAddress, credentials.createInsecure()) as unknown as { push(cb: (e: Error | null, r?: PushResponse) => void): { write(m: PushRequest): boolean; end(): void } };
    const codes = new Map<string, number>();
    for (let i = 0; i < 60; i++) {
      const msgs: PushRequest[] = [];
      if (int(3)) msgs.push({ $typeName: 'strata.v1.PushRequest', header: { $typeName: 'strata.v1.PushHeader', migrationId: 'fuzz', modelFingerprint: int(2) ? w.modelFingerprint : 'x', targetWorkerId: int(4) ? 'p0-s1' : 'p0-s0', targetSeq: int(80), l0: int(9), l1: int(9), sourceWorkerId: 'fuzz' }, data: new Uint8Array(0), crc32: 0, endOfBlob: false });
      for (let k = 0, n = int(4); k < n; k++) {
        const data = randomBytes(int(3000));
        msgs.push({ $typeName: 'strata.v1.PushRequest', data, crc32: int(3) ? crc32(data) >>> 0 : int(2 ** 31), endOfBlob: rng.uniform() < 0.5 });
      }
      const r = await new Promise<PushResponse>((resolve, reject) => {
        const call = client.push((e, res) => (e ? reject(e) : resolve(res!)));
        for (const m of msgs) call.write(m);
        call.end();
      });
      const code = r.error?.code ?? 'ok (nothing imported)';
      if (!r.error) assert.equal(r.cells, 0);
      codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    console.log(`KvTransfer: 60 random pushes: ${[...codes].map(([c, n]) => `${n}× ${c}`).join(', ')}`);
    await servesCorrectly();
  });
});
