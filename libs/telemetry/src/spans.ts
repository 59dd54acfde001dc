// Small helpers around spans: Strata's tracer, ending a span with an outcome, and the kind of a
// micro-batch, named the same way on the scheduler and on the stages.
import { SpanStatusCode, trace, type Span, type Tracer } from '@opentelemetry/api';

/** Strata's tracer (a no-op until the SDK is registered). */
export function tracer(): Tracer {
  return trace.getTracer('strata');
}

/** What a micro-batch does: only prompt chunks, only one-token decodes, or both. */
export type StepKind = 'prefill' | 'decode' | 'mixed';

/** The kind of a micro-batch of `prefill` prompt-chunk entries and `decode` decode entries. */
export function stepKind(prefill: number, decode: number): StepKind {
  return prefill === 0 ? 'decode' : decode === 0 ? 'prefill' : 'mixed';
}

/**
 * Ends `span`: an error (an Error, or a code and message) marks it failed with the message as
 * its status and an `error.type` attribute.
 */
export function endSpan(span: Span, error?: unknown): void {
  if (error !== undefined && error !== null) {
    const e = error as { code?: unknown; message?: unknown; name?: unknown };
    const type = typeof e.code === 'string' && e.code ? e.code : typeof e.name === 'string' ? e.name : 'error';
    span.setAttribute('error.type', type);
    span.setStatus({ code: SpanStatusCode.ERROR, message: typeof e.message === 'string' ? e.message : String(error) });
    if (error instanceof Error) span.recordException(error);
  }
  span.end();
}
