// The coordinator's spans and metrics (docs/observability.md). A request gets a span from its
// admission to its last event, a child of the gateway's span (the context comes in the NATS
// headers of the generate request). A micro-batch serves several requests at once: its span is a
// child of the span of the request of its first entry and links to the spans of the others, so it
// sits in one request's trace and every other request's trace points at it. Its context goes to
// the stages in the headers of the step messages. A migration gets a span too, a child of
// whatever asked for it (the admin API's request, a drain) or a trace of its own (the rebalancer).
import { ROOT_CONTEXT, SpanKind, context, trace, type Context, type Link, type Span } from '@opentelemetry/api';
import { endSpan, natsContext, natsHeaders, stepKind, strataMetrics, tracer, type StepKind } from '@strata/telemetry';
import type { GenerateReply, GenerateRequest } from '@strata/wire';
import type { MsgHdrs } from 'nats';
import type { HandOffResult } from './handoff.ts';
import type { MigrationRecord } from './ledger.ts';

/** The span of each request under way, until its last event (the request object follows it across pipelines). */
const requestSpans = new WeakMap<GenerateRequest, Span>();

/**
 * Opens `req`'s span, a child of the context in `headers`, and runs `admit` inside it; a refusal
 * ends the span at once, an accepted request's span ends with {@link endRequest}.
 */
export function tracedAdmit(req: GenerateRequest, headers: MsgHdrs | undefined, admit: () => GenerateReply): GenerateReply {
  const span = tracer().startSpan('strata.request', {
    kind: SpanKind.SERVER,
    attributes: {
      'strata.request.id': req.requestId, 'strata.model': req.modelId, 'strata.prompt.tokens': req.prompt.length,
      'strata.choices': Math.max(1, req.n), 'strata.max_tokens': req.maxTokens, ...(req.sessionId ? { 'strata.session.id': req.sessionId } : {}),
    },
  }, natsContext(headers));
  // Registered before admission: a request that starts at once sends its first step inside admit().
  requestSpans.set(req, span);
  let reply: GenerateReply;
  try {
    reply = context.with(trace.setSpan(ROOT_CONTEXT, span), admit);
  } catch (err) {
    endRequest(req, err);
    throw err;
  }
  if (reply.accepted) span.setAttribute('strata.pipeline', reply.pipelineId);
  else endRequest(req, reply.error);
  return reply;
}

/** Ends `req`'s span (once), failed when `error` is given. */
export function endRequest(req: GenerateRequest, error?: unknown): void {
  const span = requestSpans.get(req);
  if (!span) return;
  requestSpans.delete(req);
  endSpan(span, error ?? undefined);
}

/** A micro-batch in flight: its span, and the headers that carry it to the first stage. */
export interface StepTrace {
  span: Span;
  headers: MsgHdrs | undefined;
  pipeline: string;
  kind: StepKind;
  /** performance.now() at send */
  t0: number;
}

/** One entry of a micro-batch, as its span sees it. */
export interface StepTraceEntry {
  req: GenerateRequest | undefined;
  /** a prompt chunk (else a decode) */
  prefill: boolean;
  tokens: number;
}

/** Opens the span of micro-batch `stepId` of `pipeline` (see the module comment for its parent and links). */
export function startStep(pipeline: string, stepId: bigint, entries: readonly StepTraceEntry[]): StepTrace {
  let prefill = 0, tokens = 0;
  const spans: Span[] = [];
  for (const e of entries) {
    if (e.prefill) prefill++;
    tokens += e.tokens;
    const s = e.req && requestSpans.get(e.req);
    if (s && !spans.includes(s)) spans.push(s);
  }
  const kind = stepKind(prefill, entries.length - prefill);
  const links: Link[] = spans.slice(1).map((s) => ({ context: s.spanContext() }));
  const span = tracer().startSpan(`strata.step.${kind}`, {
    kind: SpanKind.PRODUCER,
    attributes: { 'strata.pipeline': pipeline, 'strata.step.id': stepId.toString(), 'strata.step.kind': kind, 'strata.step.entries': entries.length, 'strata.step.tokens': tokens, 'strata.step.requests': spans.length },
    links,
  }, spans[0] ? trace.setSpan(ROOT_CONTEXT, spans[0]) : ROOT_CONTEXT);
  return { span, headers: natsHeaders(trace.setSpan(ROOT_CONTEXT, span)), pipeline, kind, t0: performance.now() };
}

/** Ends a micro-batch's span and records its round trip. */
export function endStep(s: StepTrace, error?: unknown): void {
  strataMetrics().stepDuration.record((performance.now() - s.t0) / 1000, { pipeline: s.pipeline, kind: s.kind, outcome: error ? 'error' : 'ok' });
  endSpan(s.span, error ?? undefined);
}

/** Counts `n` tokens sampled for clients on `pipeline`. */
export function countTokens(pipeline: string, n: number): void {
  strataMetrics().tokensGenerated.add(n, { pipeline });
}

/** Counts a request's prompt tokens on `pipeline`, and those it found cached. */
export function countPrompt(pipeline: string, tokens: number, cached: number): void {
  strataMetrics().promptTokens.add(tokens, { pipeline });
  strataMetrics().promptTokensCached.add(cached, { pipeline });
}

/** Counts a hand-off from prefill pipeline `from` (disaggregation): its outcome, bytes and pause. */
export function countHandOff(from: string, r: HandOffResult): void {
  if (r.outcome === 'gone') return;
  const met = strataMetrics();
  met.handOffs.add(1, { from, to: r.to, outcome: r.outcome });
  if (r.outcome !== 'done') return;
  met.handOffBytes.add(r.bytes, { from, to: r.to });
  met.handOffDuration.record(r.pauseMs / 1000);
}

/**
 * Reports `pipeline`'s queue depth and load (requests running or waiting) at every collection;
 * returns the function that stops it.
 */
export function observeQueue(pipeline: string, p: { readonly queued: number; readonly load: number }): () => void {
  const { queueDepth, pipelineLoad } = strataMetrics();
  const depth = (r: { observe(v: number, a: Record<string, string>): void }) => r.observe(p.queued, { pipeline });
  const load = (r: { observe(v: number, a: Record<string, string>): void }) => r.observe(p.load, { pipeline });
  queueDepth.addCallback(depth);
  pipelineLoad.addCallback(load);
  return () => {
    queueDepth.removeCallback(depth);
    pipelineLoad.removeCallback(load);
  };
}

/** Reports, per worker, whether its step runs past twice its predicted time (strata.worker.slow). */
export function observeSlowWorkers(workers: () => { worker: string; slow: boolean }[]): () => void {
  const gauge = strataMetrics().workerSlow;
  const cb = (r: { observe(v: number, a: Record<string, string>): void }) => {
    for (const w of workers()) r.observe(w.slow ? 1 : 0, { worker: w.worker });
  };
  gauge.addCallback(cb);
  return () => gauge.removeCallback(cb);
}

/**
 * Runs migration `m` inside its span (a child of `parent`); when it ends, records its state,
 * bytes and pause.
 */
export function traceMigration(m: MigrationRecord, parent: Context, run: () => Promise<MigrationRecord>): Promise<MigrationRecord> {
  const span = tracer().startSpan('strata.migration', {
    kind: SpanKind.INTERNAL,
    attributes: { 'strata.migration.id': m.id, 'strata.session.id': m.session, 'strata.migration.from': m.from, 'strata.migration.to': m.to, 'strata.migration.reason': m.reason },
  }, parent);
  const ended = (r: MigrationRecord): MigrationRecord => {
    const met = strataMetrics();
    met.migrations.add(1, { state: r.state });
    met.migrationBytes.add(r.bytes, { state: r.state });
    if (r.state === 'done') met.migrationPause.record(r.pauseMs / 1000);
    span.setAttributes({
      'strata.migration.state': r.state, 'strata.migration.bytes': r.bytes, 'strata.migration.rounds': r.rounds, 'strata.migration.positions': r.positions,
      'strata.migration.pause_ms': r.pauseMs, 'strata.migration.total_ms': r.totalMs,
    });
    endSpan(span, r.state === 'done' ? undefined : { code: 'aborted', message: r.error });
    return r;
  };
  return context.with(trace.setSpan(parent, span), run).then(ended, (err: unknown) => {
    endSpan(span, err);
    throw err;
  });
}
