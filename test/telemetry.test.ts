// OpenTelemetry end to end on a real local cluster (nats-server, redis-server, a coordinator,
// three workers in two pipelines and a gateway, each its own process), every service exporting
// to an OTLP/HTTP receiver in this process and serving Prometheus metrics: one streamed request
// is one trace, a tree rooted at the gateway's span through the coordinator and both stages; a
// migration is one trace from the admin API to the pushes and their receivers; log lines carry
// the trace ids; the metrics are there, with values that follow from what was asked.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ensureDefaultModel, modelIdOf } from '@strata/model';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '@strata/telemetry';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { readStream } from './helpers/cluster.ts';
import { parsePrometheus, type Sample } from './helpers/prometheus.ts';

const model = ensureDefaultModel();
const MODEL_ID = modelIdOf(model);
const CTX = 2048;
const MAX_TOKENS = 8;
// Pipeline p0 has two stages; p1 one, for the migration. A request without a session goes to
// p0 (equal load: the lowest pipeline id).
const SPLITS = [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }], [{ l0: 0, l1: 8 }]];

/** Polls `get` until it returns something, for at most `ms`. */
async function eventually<T>(what: string, get: () => T | undefined, ms = 20_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = get();
    if (v !== undefined) return v;
    if (Date.now() - t0 > ms) throw new Error(`gave up waiting for ${what}`);
    await sleep(100);
  }
}

/** Checks that `spans` form one tree rooted at `root`: every other span's parent is among them. */
function assertTree(spans: ReceivedSpan[], root: ReceivedSpan): void {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  assert.equal(byId.size, spans.length, 'span ids are unique');
  assert.ok(!root.parentSpanId, 'the root has no parent');
  for (const s of spans) {
    assert.equal(s.traceId, root.traceId, `${s.name} is in the trace`);
    let x = s;
    for (let depth = 0; x !== root; depth++) {
      assert.ok(depth < spans.length, `${s.name}: a cycle`);
      const p = byId.get(x.parentSpanId ?? '');
      assert.ok(p, `${x.name} (${x.resource['service.instance.id']}): parent ${x.parentSpanId} is not in the trace`);
      x = p;
    }
  }
}

describe('telemetry across the cluster', () => {
  let cluster: LocalCluster;
  let rx: OtlpReceiver;
  const logs: string[] = [];
  const scrape = async (id: string): Promise<Sample[]> => {
    const port = cluster.service(id).metricsPort;
    assert.ok(port > 0, `${id} serves metrics`);
    const r = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.equal(r.status, 200);
    return parsePrometheus(await r.text());
  };
  const sum = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
  const has = (samples: Sample[], name: string) => samples.some((s) => s.name === name);

  before(async () => {
    rx = await startOtlpReceiver();
    const otlp = ['--otlp-endpoint', rx.url, '--otlp-interval-ms', '200'];
    cluster = await LocalCluster.start({
      model, splits: SPLITS, port: 0, threads: 1, ctxSize: CTX, metrics: true,
      coordinatorFlags: [...otlp, '--log-level', 'debug'], workerFlags: otlp, gatewayFlags: otlp,
      logSink: (line) => {
        logs.push(line);
        if (/"level":"(warn|error)"/.test(line) || !line.startsWith('{')) process.stderr.write(`${line}\n`);
      },
    });
  });
  after(async () => {
    await cluster?.stop();
    await rx?.close();
  });

  it('a streamed completion is one trace: gateway → coordinator → step → stage 0 → stage 1', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: MODEL_ID, prompt: 'Once upon a time', max_tokens: MAX_TOKENS, temperature: 0, stream: true, logprobs: 0 }),
    });
    const got = await readStream(r);
    assert.equal(got.tokens.length, MAX_TOKENS);

    const root = await eventually('the gateway span', () => rx.spans.find((s) => s.name === 'POST /v1/completions'));
    const inTrace = () => rx.spans.filter((s) => s.traceId === root.traceId);
    const stageSpans = (worker: string) => inTrace().filter((s) => s.name.startsWith('strata.stage.') && s.resource['service.instance.id'] === worker);
    // Spans arrive in batches from four processes: wait until every step's stages are in.
    const spans = await eventually('every span of the request', () => {
      const steps = inTrace().filter((s) => s.name.startsWith('strata.step.'));
      const done = inTrace().some((s) => s.name === 'strata.request') && steps.length >= 2
        && stageSpans('p0-s0').length === steps.length && stageSpans('p0-s1').length === steps.length;
      return done ? inTrace() : undefined;
    });
    assertTree(spans, root);

    // Who made what.
    const services = new Set(spans.map((s) => `${s.resource['service.name']}/${s.resource['service.instance.id']}`));
    assert.ok(services.has('strata-coordinator/coordinator'), [...services].join(', '));
    assert.ok(services.has('strata-worker/p0-s0') && services.has('strata-worker/p0-s1'), [...services].join(', '));
    assert.equal(root.resource['service.name'], 'strata-gateway');
    assert.equal(root.attributes['http.route'], '/v1/completions');
    assert.equal(root.attributes['http.response.status_code'], 200);

    // The shape: the request under the gateway, every step under the request, stage 0 under its
    // step and stage 1 under stage 0 of the same step.
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const [request, ...more] = spans.filter((s) => s.name === 'strata.request');
    assert.equal(more.length, 0);
    assert.equal(request!.parentSpanId, root.spanId);
    assert.ok(Number(request!.attributes['strata.prompt.tokens']) > 0);
    assert.equal(request!.attributes['strata.pipeline'], 'p0-s0~p0-s1');
    const steps = spans.filter((s) => s.name.startsWith('strata.step.'));
    for (const s of steps) assert.equal(s.parentSpanId, request!.spanId, `${s.name} is a child of the request`);
    const kinds = steps.map((s) => s.attributes['strata.step.kind']);
    assert.equal(kinds.filter((k) => k === 'prefill').length, 1, `kinds: ${kinds.join(',')}`);
    assert.equal(kinds.filter((k) => k === 'decode').length, MAX_TOKENS - 1, 'one decode step per token after the first');
    for (const s of stageSpans('p0-s0')) {
      const step = byId.get(s.parentSpanId!)!;
      assert.ok(step.name.startsWith('strata.step.'), `stage 0's parent is a step, not ${step.name}`);
      assert.equal(s.attributes['strata.step.id'], step.attributes['strata.step.id']);
      assert.equal(s.attributes['strata.step.kind'], step.attributes['strata.step.kind']);
      assert.equal(s.attributes['strata.layers'], '0:4');
    }
    for (const s of stageSpans('p0-s1')) {
      const prev = byId.get(s.parentSpanId!)!;
      assert.equal(prev.resource['service.instance.id'], 'p0-s0', 'stage 1\'s parent is stage 0');
      assert.equal(s.attributes['strata.step.id'], prev.attributes['strata.step.id']);
      assert.equal(s.attributes['strata.layers'], '4:8');
    }
    for (const s of spans) assert.ok(BigInt(s.endTimeUnixNano) >= BigInt(s.startTimeUnixNano), `${s.name} ends after it starts`);

    // The coordinator's log line of the request's start carries the trace and its span (its
    // stderr may reach us after the spans did, on a loaded machine).
    const find = () => logs.map((l) => (l.startsWith('{') ? JSON.parse(l) as Record<string, unknown> : {})).find((l) => l.msg === 'start' && l.trace_id === root.traceId);
    for (let i = 0; i < 50 && !find(); i++) await new Promise((r) => setTimeout(r, 100));
    const line = find();
    assert.ok(line, 'a log line with the request\'s trace id');
    assert.equal(line.span_id, request!.spanId);
  });

  it('every service serves its metrics on Prometheus, with values that follow from the request', async () => {
    const co = await scrape('coordinator');
    assert.equal(sum(co, 'strata_tokens_generated_total', { pipeline: 'p0-s0~p0-s1' }), MAX_TOKENS);
    assert.equal(sum(co, 'strata_step_duration_count', { pipeline: 'p0-s0~p0-s1', kind: 'decode' }), MAX_TOKENS - 1);
    assert.equal(sum(co, 'strata_step_duration_count', { pipeline: 'p0-s0~p0-s1', kind: 'prefill' }), 1);
    assert.ok(sum(co, 'strata_step_duration_sum') > 0);
    assert.equal(sum(co, 'strata_queue_depth', { pipeline: 'p0-s0~p0-s1' }), 0);
    assert.ok(co.some((s) => s.name === 'strata_queue_depth' && s.labels.pipeline === 'p1-s0'), 'a queue depth per pipeline');
    for (const w of ['p0-s0', 'p0-s1', 'p1-s0']) {
      const m = await scrape(w);
      assert.equal(sum(m, 'strata_kv_cells_total', { worker: w }), CTX, `${w}: KV cells`);
      assert.ok(has(m, 'strata_kv_cells_used'), `${w}: KV cells used`);
      const used = sum(m, 'strata_kv_cells_used', { worker: w });
      assert.ok(used >= 0 && used <= CTX, `${w}: ${used} cells used`);
      assert.equal(sum(m, 'strata_stage_duration_count', { worker: w }), w === 'p1-s0' ? 0 : MAX_TOKENS, `${w}: one stage run per step`);
      assert.deepEqual(['host', 'disk'].map((tier) => m.some((x) => x.name === 'strata_kv_tier_bytes' && x.labels.worker === w && x.labels.tier === tier)), [true, true], `${w}: its tiers' bytes`);
      assert.equal(sum(m, 'strata_kv_tier_states', { worker: w }), 0, `${w}: nothing evicted, nothing in the tiers`);
    }
    const gw = await scrape('gateway');
    assert.equal(sum(gw, 'http_server_request_duration_count', { http_route: '/v1/completions', http_response_status_code: '200' }), 1);
    assert.ok(sum(gw, 'http_server_request_duration_count', { http_route: '/readyz' }) >= 1);
  });

  it('a pipeline\'s load counts the requests running on it, and falls back when they end', async () => {
    const abort = new AbortController();
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: abort.signal,
      body: JSON.stringify({ model: MODEL_ID, prompt: 'The river ran', max_tokens: 2000, temperature: 0, ignore_eos: true, stream: true }),
    });
    const reader = r.body!.getReader();
    await reader.read(); // the stream has begun: the request runs on p0
    const running = await scrape('coordinator');
    assert.equal(sum(running, 'strata_pipeline_load', { pipeline: 'p0-s0~p0-s1' }), 1);
    assert.equal(sum(running, 'strata_pipeline_load', { pipeline: 'p1-s0' }), 0);
    abort.abort();
    await reader.cancel().catch(() => {});
    let load = -1;
    for (const until = Date.now() + 20_000; load !== 0 && Date.now() < until; await sleep(100)) load = sum(await scrape('coordinator'), 'strata_pipeline_load');
    assert.equal(load, 0, 'the cancelled request no longer counts');
  });

  it('a migration is one trace: admin API → coordinator → a push from each source stage → the target', async () => {
    const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
      fetch(`${cluster.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    const turn = await post('/v1/completions', { model: MODEL_ID, prompt: 'The miller counted the sacks of flour', max_tokens: 4, temperature: 0 }, { 'x-session-id': 'otel-mig' });
    assert.equal(turn.status, 200, await turn.clone().text());
    const m = await post('/admin/v1/sessions/otel-mig/migrate', { to: 'p1-s0', wait: true });
    const mj = (await m.json()) as { state: string; from: string; bytes: number };
    assert.equal(m.status, 202);
    assert.equal(mj.state, 'done');
    assert.equal(mj.from, 'p0-s0~p0-s1');

    const root = await eventually('the admin span', () => rx.spans.find((s) => s.name === 'POST /admin/v1/sessions/{id}/migrate'));
    const spans = await eventually('the migration spans', () => {
      const t = rx.spans.filter((s) => s.traceId === root.traceId);
      return t.some((s) => s.name === 'strata.migration') && t.filter((s) => s.name === 'strata.kv.receive').length >= 2 ? t : undefined;
    });
    assertTree(spans, root);
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const [mig] = spans.filter((s) => s.name === 'strata.migration');
    assert.equal(mig!.parentSpanId, root.spanId);
    assert.equal(mig!.attributes['strata.migration.state'], 'done');
    assert.equal(mig!.attributes['strata.migration.bytes'], mj.bytes);
    const pushes = spans.filter((s) => s.name === 'strata.kv.push');
    assert.deepEqual(pushes.map((s) => s.resource['service.instance.id']).sort(), ['p0-s0', 'p0-s1'], 'one push per source stage (one pre-copy round)');
    for (const p of pushes) assert.equal(p.parentSpanId, mig!.spanId);
    const receives = spans.filter((s) => s.name === 'strata.kv.receive');
    for (const r of receives) {
      assert.equal(r.resource['service.instance.id'], 'p1-s0');
      assert.equal(byId.get(r.parentSpanId!)?.name, 'strata.kv.push', 'a receive is a child of its push (gRPC metadata)');
    }
    assert.equal(pushes.reduce((n, p) => n + Number(p.attributes['strata.bytes']), 0), mj.bytes);

    const line = logs.map((l) => (l.startsWith('{') ? JSON.parse(l) as Record<string, unknown> : {})).find((l) => l.msg === 'migration done');
    assert.equal(line?.trace_id, root.traceId, 'the coordinator logs the migration with its trace id');
    assert.equal(line?.span_id, mig!.spanId);

    const co = await scrape('coordinator');
    assert.equal(sum(co, 'strata_migrations_total', { state: 'done' }), 1);
    assert.equal(sum(co, 'strata_migration_bytes_total', { state: 'done' }), mj.bytes);
    assert.equal(sum(co, 'strata_migration_pause_count'), 1);
  });

  it('metrics also reach the OTLP receiver', async () => {
    const point = await eventually('the coordinator\'s token count over OTLP', () =>
      rx.points.find((p) => p.service === 'strata-coordinator' && p.metric === 'strata.tokens.generated' && p.attributes.pipeline === 'p0-s0~p0-s1' && p.value >= MAX_TOKENS));
    assert.equal(point.instance, 'coordinator');
    await eventually('KV cells over OTLP', () => rx.points.find((p) => p.service === 'strata-worker' && p.metric === 'strata.kv.cells.total' && p.value === CTX));
  });
});
