// @strata/telemetry in one process: off by default (no SDK, no headers, no trace ids in logs);
// on, spans reach an OTLP/HTTP receiver, trace context survives NATS headers and gRPC metadata,
// log lines carry the active span's ids and the Prometheus endpoint serves Strata's metrics.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { SpanKind, context, trace, type Span } from '@opentelemetry/api';
import { ConfigError } from '@strata/config';
import { freePort } from '@strata/local-servers';
import { createLogger } from '@strata/log';
import { TelemetryError } from './errors.ts';
import { startOtlpReceiver } from './otlp-receiver.ts';
import { strataMetrics } from './metrics.ts';
import { telemetryOptions } from './options.ts';
import { httpContext, injectMetadata, metadataContext, natsContext, natsHeaders } from './propagation.ts';
import { startTelemetry } from './setup.ts';
import { endSpan, stepKind, tracer } from './spans.ts';

const quiet = createLogger('test', { level: 'none' });
const defaults = { metricsPort: 0, metricsHost: '127.0.0.1', otlpEndpoint: undefined, otlpIntervalMs: 5000 };

/** gRPC metadata as grpc-js keeps it: a list of values per key. */
class Metadata {
  readonly #m = new Map<string, string[]>();
  set(k: string, v: string): void {
    this.#m.set(k, [v]);
  }
  get(k: string): unknown[] {
    return this.#m.get(k) ?? [];
  }
}

describe('telemetry', () => {
  it('options: the OTLP endpoint falls back to OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SDK_DISABLED turns all off, ports are checked', () => {
    const o = telemetryOptions(defaults, 'worker', 'w1', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' });
    assert.deepEqual(o, { serviceName: 'strata-worker', instanceId: 'w1', metricsPort: 0, metricsHost: '127.0.0.1', otlpEndpoint: 'http://collector:4318', exportIntervalMs: 5000 });
    assert.equal(telemetryOptions({ ...defaults, otlpEndpoint: 'http://a:1' }, 'gateway', undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://b:2' }).otlpEndpoint, 'http://a:1');
    const off = telemetryOptions({ ...defaults, metricsPort: 9464 }, 'worker', 'w1', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' });
    assert.equal(off.metricsPort, 0);
    assert.equal(off.otlpEndpoint, null);
    assert.throws(() => telemetryOptions({ ...defaults, metricsPort: 70000 }, 'worker', 'w1', {}), ConfigError);
    assert.throws(() => telemetryOptions({ ...defaults, otlpEndpoint: 'collector:4318' }, 'worker', 'w1', {}), ConfigError);
  });

  it('stepKind names a micro-batch by its entries', () => {
    assert.equal(stepKind(3, 0), 'prefill');
    assert.equal(stepKind(0, 5), 'decode');
    assert.equal(stepKind(1, 5), 'mixed');
  });

  it('off: no SDK, no headers, no trace ids in log lines', async () => {
    const t = await startTelemetry(telemetryOptions(defaults, 'worker', 'w1', {}), quiet);
    assert.equal(t.traces, false);
    assert.equal(t.metricsUrl, null);
    const span = tracer().startSpan('x');
    assert.equal(span.isRecording(), false);
    const lines: string[] = [];
    const log = createLogger('test', { sink: (l) => lines.push(l) });
    context.with(trace.setSpan(context.active(), span), () => {
      assert.equal(natsHeaders(), undefined);
      log.info('hello');
    });
    strataMetrics().tokensGenerated.add(1, { pipeline: 'p' });
    span.end();
    assert.equal((JSON.parse(lines[0]!) as Record<string, unknown>).trace_id, undefined);
    await t.shutdown();
  });

  it('on: one trace through NATS headers and gRPC metadata, trace ids in logs, metrics on Prometheus', async () => {
    const rx = await startOtlpReceiver();
    const port = await freePort();
    const t = await startTelemetry(telemetryOptions({ ...defaults, metricsPort: port, otlpEndpoint: rx.url, otlpIntervalMs: 100 }, 'coordinator', 'c1', {}), quiet);
    try {
      assert.equal(t.traces, true);
      assert.equal(t.metricsUrl, `http://127.0.0.1:${port}/metrics`);
      // A second process on the same metrics port is refused by name.
      await assert.rejects(startTelemetry(telemetryOptions({ ...defaults, metricsPort: port }, 'worker', 'w1', {}), quiet), TelemetryError);

      const root = tracer().startSpan('root', { kind: SpanKind.SERVER }, httpContext({}));
      const lines: string[] = [];
      const log = createLogger('test', { sink: (l) => lines.push(l) });
      let hop1!: Span, hop2!: Span;
      await context.with(trace.setSpan(context.active(), root), async () => {
        await new Promise((r) => setTimeout(r, 5)); // the context survives an await
        log.info('inside');
        const h = natsHeaders();
        assert.ok(h, 'a traced context travels in NATS headers');
        assert.match(h.get('traceparent'), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
        hop1 = tracer().startSpan('hop1', {}, natsContext(h));
        const md = new Metadata();
        injectMetadata(md, trace.setSpan(context.active(), hop1));
        hop2 = tracer().startSpan('hop2', {}, metadataContext(md));
      });
      endSpan(hop2, { code: 'boom', message: 'failed on purpose' });
      hop1.end();
      root.end();
      const line = JSON.parse(lines[0]!) as Record<string, unknown>;
      assert.equal(line.trace_id, root.spanContext().traceId);
      assert.equal(line.span_id, root.spanContext().spanId);

      strataMetrics().tokensGenerated.add(7, { pipeline: 'p0' });
      strataMetrics().stepDuration.record(0.015, { pipeline: 'p0', kind: 'decode', outcome: 'ok' });
      const text = await (await fetch(t.metricsUrl!)).text();
      assert.match(text, /^strata_tokens_generated_total\{pipeline="p0"[^}]*\} 7$/m);
      assert.match(text, /^strata_step_duration_count\{[^}]*kind="decode"[^}]*\} 1$/m);
    } finally {
      await t.shutdown();
      await rx.close();
    }
    // Shutdown flushed the spans: root <- hop1 (NATS) <- hop2 (gRPC), one trace.
    const byName = new Map(rx.spans.map((s) => [s.name, s]));
    const [root, hop1, hop2] = ['root', 'hop1', 'hop2'].map((n) => byName.get(n));
    assert.ok(root && hop1 && hop2, `spans received: ${rx.spans.map((s) => s.name).join(', ')}`);
    assert.equal(new Set([root.traceId, hop1.traceId, hop2.traceId]).size, 1);
    assert.ok(!root.parentSpanId);
    assert.equal(hop1.parentSpanId, root.spanId);
    assert.equal(hop2.parentSpanId, hop1.spanId);
  });
});
