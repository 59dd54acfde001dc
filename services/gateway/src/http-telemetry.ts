// The gateway's span and duration metric per HTTP request (docs/observability.md). The span is
// the root of the request's trace, or a child of the caller's when it sends a W3C traceparent;
// the request is handled inside it, so the NATS messages it sends carry it on.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { SpanKind, SpanStatusCode, context, trace } from '@opentelemetry/api';
import { endSpan, httpContext, strataMetrics, tracer } from '@strata/telemetry';

/** Routes with an id in them, as templates (low-cardinality names for spans and metrics). */
const TEMPLATES: [RegExp, string][] = [
  [/^\/admin\/v1\/sessions\/[^/]+\/migrate$/, '/admin/v1/sessions/{id}/migrate'],
  [/^\/admin\/v1\/workers\/[^/]+\/drain$/, '/admin/v1/workers/{id}/drain'],
  [/^\/admin\/v1\/workers\/[^/]+\/undrain$/, '/admin/v1/workers/{id}/undrain'],
];
const ROUTES = new Set(['/v1/completions', '/v1/chat/completions', '/v1/models', '/healthz', '/readyz', '/admin/v1/migrations', '/admin/v1/cluster']);

/** The route `path` matches, or null. */
export function routeOf(path: string): string | null {
  if (ROUTES.has(path)) return path;
  for (const [re, template] of TEMPLATES) if (re.test(path)) return template;
  return null;
}

/** Runs `handle` inside the request's server span; the span ends, and the duration is recorded, when the response closes. */
export function traceHttp(req: IncomingMessage, res: ServerResponse, handle: () => Promise<void>): Promise<void> {
  const method = req.method ?? 'GET';
  const path = (req.url ?? '/').split('?')[0]!;
  const route = routeOf(path);
  const span = tracer().startSpan(route ? `${method} ${route}` : method, {
    kind: SpanKind.SERVER,
    attributes: { 'http.request.method': method, 'url.path': path, ...(route ? { 'http.route': route } : {}) },
  }, httpContext(req.headers));
  const t0 = performance.now();
  res.once('close', () => {
    const status = res.statusCode;
    span.setAttribute('http.response.status_code', status);
    strataMetrics().httpDuration.record((performance.now() - t0) / 1000, { 'http.request.method': method, 'http.route': route ?? 'other', 'http.response.status_code': status });
    endSpan(span, status >= 500 ? { code: String(status), message: `HTTP ${status}` } : undefined);
  });
  return context.with(trace.setSpan(context.active(), span), handle);
}

/** Marks the active request span failed (an error the client gets inside a 200 stream, say). */
export function failRequestSpan(code: string, message: string): void {
  const span = trace.getActiveSpan();
  span?.setAttribute('error.type', code);
  span?.setStatus({ code: SpanStatusCode.ERROR, message });
}
