// @strata/log: one JSON object per line on stderr, with the service, a level and fields, and
// the trace and span ids of the active OpenTelemetry span when there is one.
import { context, isSpanContextValid, trace } from '@opentelemetry/api';

/** Log levels, least to most severe. */
export type Level = 'debug' | 'info' | 'warn' | 'error';
const RANK: Record<Level | 'none', number> = { debug: 0, info: 1, warn: 2, error: 3, none: 4 };

/** A logger bound to a service (and optional fixed fields). */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  /** a logger that adds `fields` to every line */
  child(fields: Record<string, unknown>): Logger;
}

/** Options for {@link createLogger}. */
export interface LoggerOptions {
  /** least severe level written (default info); 'none' writes nothing */
  level?: Level | 'none';
  /** where lines go (default process.stderr) */
  sink?: (line: string) => void;
}

function replacer(_k: string, v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Error) return { name: v.name, message: v.message, code: (v as { code?: unknown }).code };
  return v;
}

/** trace_id and span_id of the active span (none without telemetry: the API's context is then always empty). */
function traceIds(): { trace_id: string; span_id: string } | undefined {
  const sc = trace.getSpan(context.active())?.spanContext();
  return sc && isSpanContextValid(sc) ? { trace_id: sc.traceId, span_id: sc.spanId } : undefined;
}

/** A logger writing `{"t":…,"level":…,"service":…,"msg":…,"trace_id":…,"span_id":…,…fields}` lines. */
export function createLogger(service: string, options: LoggerOptions = {}, base: Record<string, unknown> = {}): Logger {
  const min = RANK[options.level ?? 'info'];
  const sink = options.sink ?? ((line: string) => process.stderr.write(line));
  const write = (level: Level, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[level] < min) return;
    sink(JSON.stringify({ t: new Date().toISOString(), level, service, msg, ...traceIds(), ...base, ...fields }, replacer) + '\n');
  };
  return {
    debug: (m, f) => write('debug', m, f),
    info: (m, f) => write('info', m, f),
    warn: (m, f) => write('warn', m, f),
    error: (m, f) => write('error', m, f),
    child: (fields) => createLogger(service, options, { ...base, ...fields }),
  };
}

/** A URL fit for a log line: its password, if any, replaced by ***. */
export function redactUrl(url: string): string {
  // A NATS cluster is several URLs separated by commas, each with its credentials.
  return url.split(',').map((u) => u.replace(/^(\s*[a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, '$1:***@')).join(',');
}
