// A tiny OTLP/HTTP receiver, for tests and local debugging: it takes what an OpenTelemetry
// collector's port 4318 takes, with JSON bodies (what @opentelemetry/exporter-*-otlp-http send),
// and keeps the spans and metric points in memory.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** An OTLP attribute value (JSON encoding). */
interface AnyValue { stringValue?: string; intValue?: string | number; doubleValue?: number; boolValue?: boolean }
interface KeyValue { key: string; value: AnyValue }

/** A received span with its resource's attributes. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** empty or absent for a root */
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  attributes: Record<string, string | number | boolean>;
  links: { traceId: string; spanId: string }[];
  status?: { code?: number; message?: string };
  /** resource attributes: service.name, service.instance.id, … */
  resource: Record<string, string | number | boolean>;
}

/** One metric data point, with its resource's service.name and instance. */
export interface ReceivedPoint {
  service: string;
  instance: string;
  metric: string;
  attributes: Record<string, string | number | boolean>;
  /** sum or gauge value; a histogram's count */
  value: number;
}

function flat(kvs: KeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of kvs ?? []) {
    out[key] = value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : value.doubleValue ?? value.boolValue ?? '');
  }
  return out;
}

/** A running receiver: what it got so far. */
export interface OtlpReceiver {
  url: string;
  spans: ReceivedSpan[];
  points: ReceivedPoint[];
  close(): Promise<void>;
}

/** Starts a receiver on a free loopback port; point OTLP exporters at `url`. */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const points: ReceivedPoint[] = [];
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      try {
        if (!String(req.headers['content-type']).startsWith('application/json')) throw new Error(`not JSON: ${req.headers['content-type']}`);
        const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
        if (req.url === '/v1/traces') takeSpans(body, spans);
        else if (req.url === '/v1/metrics') takePoints(body, points);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      } catch (err) {
        res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ message: (err as Error).message }));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, points,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

type RawSpan = Omit<ReceivedSpan, 'attributes' | 'resource' | 'links'> & { attributes?: KeyValue[]; links?: { traceId: string; spanId: string }[] };

function takeSpans(body: Record<string, unknown>, out: ReceivedSpan[]): void {
  const rss = body.resourceSpans as { resource?: { attributes?: KeyValue[] }; scopeSpans: { spans: RawSpan[] }[] }[];
  for (const rs of rss) {
    const resource = flat(rs.resource?.attributes);
    for (const ss of rs.scopeSpans) for (const s of ss.spans) out.push({ ...s, attributes: flat(s.attributes), links: s.links ?? [], resource });
  }
}

interface RawPoint { attributes?: KeyValue[]; asInt?: string | number; asDouble?: number; count?: string | number }
type RawMetric = { name: string } & Partial<Record<'sum' | 'gauge' | 'histogram', { dataPoints: RawPoint[] }>>;

function takePoints(body: Record<string, unknown>, out: ReceivedPoint[]): void {
  const rms = body.resourceMetrics as { resource?: { attributes?: KeyValue[] }; scopeMetrics: { metrics: RawMetric[] }[] }[];
  for (const rm of rms) {
    const r = flat(rm.resource?.attributes);
    for (const sm of rm.scopeMetrics) {
      for (const m of sm.metrics) {
        for (const p of (m.sum ?? m.gauge ?? m.histogram)?.dataPoints ?? []) {
          out.push({
            service: String(r['service.name']), instance: String(r['service.instance.id']), metric: m.name, attributes: flat(p.attributes),
            value: Number(p.asInt ?? p.asDouble ?? p.count ?? NaN),
          });
        }
      }
    }
  }
}
