// The coordinator's spans without a cluster: a request's span is a child of the gateway's context
// and ends with the request (or at once when refused); a micro-batch serving two requests is a
// child of the first one's span and links to the other's.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { create } from '@bufbuild/protobuf';
import { ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { createLogger } from '@strata/log';
import { natsHeaders, startOtlpReceiver, startTelemetry, telemetryOptions, tracer, type OtlpReceiver, type Telemetry } from '@strata/telemetry';
import { GenerateReplySchema, GenerateRequestSchema, type GenerateReply, type GenerateRequest } from '@strata/wire';
import { endRequest, endStep, startStep, tracedAdmit } from './telemetry.ts';
import { refuse } from './replies.ts';

const accepted: GenerateReply = create(GenerateReplySchema, { accepted: true, pipelineId: 'p0' });

describe('coordinator spans', () => {
  let rx: OtlpReceiver;
  let t: Telemetry;
  before(async () => {
    rx = await startOtlpReceiver();
    t = await startTelemetry(telemetryOptions({ metricsPort: 0, metricsHost: '127.0.0.1', otlpEndpoint: rx.url, otlpIntervalMs: 50 }, 'coordinator', 'c-test', {}), createLogger('test', { level: 'none' }));
  });
  after(async () => {
    await t?.shutdown();
    await rx?.close();
  });

  it('a batched step is a child of its first request and links to the others; refusals end at once', async () => {
    const gateway = tracer().startSpan('POST /v1/completions', { kind: SpanKind.SERVER });
    const headers = natsHeaders(trace.setSpan(ROOT_CONTEXT, gateway));
    const req = (id: string): GenerateRequest => create(GenerateRequestSchema, { requestId: id, modelId: 'm', prompt: [1, 2, 3], n: 1 });
    const a = req('a'), b = req('b'), c = req('c');
    assert.equal(tracedAdmit(a, headers, () => accepted).accepted, true);
    assert.equal(tracedAdmit(b, undefined, () => accepted).accepted, true);
    assert.equal(tracedAdmit(c, headers, () => refuse('overloaded', 'full')).accepted, false);
    const step = startStep('p0', 42n, [{ req: a, prefill: false, tokens: 1 }, { req: b, prefill: true, tokens: 3 }, { req: a, prefill: false, tokens: 1 }]);
    assert.ok(step.headers?.get('traceparent').includes(step.span.spanContext().spanId), 'the step\'s own context goes to the stages');
    endStep(step);
    endRequest(a);
    endRequest(b, { code: 'stage_failed', message: 'a stage failed' });
    endRequest(b); // ends once
    gateway.end();
    await t.shutdown();

    const by = (name: string, id?: string) => rx.spans.filter((s) => s.name === name && (id === undefined || s.attributes['strata.request.id'] === id));
    const [g] = by('POST /v1/completions');
    const [ra] = by('strata.request', 'a');
    const [rb] = by('strata.request', 'b');
    const [rc] = by('strata.request', 'c');
    const steps = by('strata.step.mixed');
    assert.ok(g && ra && rb && rc, `spans: ${rx.spans.map((s) => s.name).join(', ')}`);
    assert.equal(by('strata.request', 'b').length, 1);
    assert.equal(ra.parentSpanId, g.spanId);
    assert.equal(ra.traceId, g.traceId);
    assert.ok(!rb.parentSpanId, 'a request without trace context starts a trace of its own');
    assert.equal(rc.status?.code, 2, 'a refusal is an error');
    assert.equal(rc.attributes['error.type'], 'overloaded');
    assert.equal(rb.status?.message, 'a stage failed');
    assert.equal(steps.length, 1);
    const s = steps[0]!;
    assert.equal(s.parentSpanId, ra.spanId);
    assert.equal(s.traceId, g.traceId);
    assert.deepEqual(s.links.map((l) => [l.traceId, l.spanId]), [[rb.traceId, rb.spanId]]);
    assert.equal(s.attributes['strata.step.requests'], 2);
    assert.equal(s.attributes['strata.step.tokens'], 5);
    assert.equal(s.attributes['strata.step.kind'], 'mixed');
  });
});
