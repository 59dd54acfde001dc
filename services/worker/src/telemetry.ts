// The worker's spans and metrics (docs/observability.md). Each micro-batch a stage runs gets a
// span, a child of the span that sent it (the scheduler's step span for the first stage, the
// previous stage's span after it), whose context goes on to the next stage in the NATS headers
// (or in a same-host link's step frame).
// A KV push gets a span on the source (a child of the coordinator's migration span) and one on
// the target (a child of the push, its context in the gRPC metadata). KV occupancy is observed
// at every metrics collection.
import { ROOT_CONTEXT, SpanKind, context, trace, type Context, type ObservableResult, type Span } from '@opentelemetry/api';
import { endSpan, metadataContext, natsContext, natsHeaders, stepKind, strataMetrics, tracer, type MetadataLike, type StepKind } from '@strata/telemetry';
import type { MigrateOutReply, MigrateOutRequest, PushResponse, StageInfo, StepHeader } from '@strata/wire';
import type { MsgHdrs } from 'nats';
import type { TierStats } from './kv-tiers.ts';

/** A micro-batch running on this stage. */
export interface StageTrace {
  span: Span;
  /** the context of `span`, for log lines */
  context: Context;
  /** headers that carry `span` to the next stage */
  headers: MsgHdrs | undefined;
  kind: StepKind;
  worker: string;
}

/**
 * Opens the span of micro-batch `h` on this stage, a child of `parent` (the sender's span). The
 * stage sees an entry of one token that samples as a decode and any other as a prompt chunk.
 */
export function startStage(info: StageInfo, h: StepHeader, parent: Context): StageTrace {
  let decode = 0, tokens = 0;
  for (const e of h.entries) {
    if (e.nTokens === 1 && e.output) decode++;
    tokens += e.nTokens;
  }
  const kind = stepKind(h.entries.length - decode, decode);
  const span = tracer().startSpan(`strata.stage.${kind}`, {
    kind: SpanKind.CONSUMER,
    attributes: {
      'strata.worker': info.workerId, 'strata.layers': `${info.l0}:${info.l1}`, 'strata.pipeline': h.pipelineId, 'strata.step.id': h.stepId.toString(),
      'strata.step.kind': kind, 'strata.stage.hop': h.hop, 'strata.step.entries': h.entries.length, 'strata.step.tokens': tokens,
    },
  }, parent);
  const ctx = trace.setSpan(ROOT_CONTEXT, span);
  return { span, context: ctx, headers: natsHeaders(ctx), kind, worker: info.workerId };
}

/** Ends a stage span that computed for `ms` milliseconds, and records the duration. */
export function endStage(s: StageTrace, ms: number, error?: unknown): void {
  strataMetrics().stageDuration.record(ms / 1000, { worker: s.worker, kind: s.kind });
  endSpan(s.span, error);
}

/** Reports the stage's KV cells (used and total) at every collection; returns the function that stops it. */
export function observeKvCells(worker: string, cells: () => { used: number; total: number; busyMs: number }): () => void {
  const m = strataMetrics();
  const attrs = { worker };
  const used = (r: ObservableResult) => r.observe(cells().used, attrs);
  const total = (r: ObservableResult) => r.observe(cells().total, attrs);
  const busy = (r: ObservableResult) => r.observe(cells().busyMs / 1000, attrs);
  m.kvCellsUsed.addCallback(used);
  m.kvCellsTotal.addCallback(total);
  m.stageBusy.addCallback(busy);
  return () => {
    m.kvCellsUsed.removeCallback(used);
    m.kvCellsTotal.removeCallback(total);
    m.stageBusy.removeCallback(busy);
  };
}

/** Reports what the worker's tiers keep (bytes and states, per tier) at every collection; returns the function that stops it. */
export function observeTiers(worker: string, stats: () => TierStats): () => void {
  const m = strataMetrics();
  const bytes = (r: ObservableResult) => {
    const s = stats();
    r.observe(s.hostBytes, { worker, tier: 'host' });
    r.observe(s.diskBytes, { worker, tier: 'disk' });
  };
  const states = (r: ObservableResult) => {
    const s = stats();
    r.observe(s.hostEntries, { worker, tier: 'host' });
    r.observe(s.diskEntries, { worker, tier: 'disk' });
  };
  m.kvTierBytes.addCallback(bytes);
  m.kvTierStates.addCallback(states);
  return () => {
    m.kvTierBytes.removeCallback(bytes);
    m.kvTierStates.removeCallback(states);
  };
}

/** Counts a tier operation: a state saved (to `tier`), loaded back (from `tier`), or missing. */
export function countTierOp(worker: string, op: 'save' | 'load' | 'miss', tier: string): void {
  strataMetrics().kvTierOps.add(1, { worker, op, tier });
}

/** Runs a KV push inside its span, a child of the context in `headers`; the span ends with the push. */
export async function tracePush(req: MigrateOutRequest, headers: MsgHdrs | undefined, push: () => Promise<MigrateOutReply>): Promise<MigrateOutReply> {
  const span = tracer().startSpan('strata.kv.push', {
    kind: SpanKind.CLIENT,
    attributes: {
      'strata.migration.id': req.migrationId, 'strata.seq': req.seq, 'strata.layers': `${req.l0}:${req.l1}`, 'strata.positions': `${req.p0}:${req.p1}`,
      'strata.target.worker': req.targetWorkerId,
    },
  }, natsContext(headers));
  try {
    const out = await context.with(trace.setSpan(ROOT_CONTEXT, span), push);
    span.setAttributes({ 'strata.bytes': Number(out.bytes), 'strata.cells': out.cells });
    endSpan(span, out.error);
    return out;
  } catch (err) {
    endSpan(span, err);
    throw err;
  }
}

/** The span of a KV push this stage receives (a child of the source's push span); ends with `cb`'s answer or the call's error. */
export function traceReceive<E extends { code?: number; details?: string } | null>(
  call: { metadata: MetadataLike; once(event: 'error', fn: (err: Error) => void): unknown }, workerId: string, cb: (err: E, r?: PushResponse | null) => void,
): (err: E, r?: PushResponse | null) => void {
  const span = tracer().startSpan('strata.kv.receive', { kind: SpanKind.SERVER, attributes: { 'strata.worker': workerId } }, metadataContext(call.metadata));
  let open = true;
  const end = (error?: unknown) => {
    if (!open) return;
    open = false;
    endSpan(span, error);
  };
  call.once('error', (err) => end(err));
  return (err, r) => {
    if (r) span.setAttributes({ 'strata.bytes': Number(r.bytes), 'strata.cells': r.cells });
    end(err ? { code: `grpc_${err.code ?? 'error'}`, message: err.details ?? '' } : r?.error);
    cb(err, r);
  };
}
