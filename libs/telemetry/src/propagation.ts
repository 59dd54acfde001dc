// Trace context on Strata's wires: W3C traceparent/tracestate in NATS message headers and in
// gRPC metadata, through the OpenTelemetry propagator the SDK registers. With telemetry off
// no propagator is registered, nothing is injected and messages go out without headers.
import { ROOT_CONTEXT, context, propagation, type Context, type TextMapGetter } from '@opentelemetry/api';
import { headers, type MsgHdrs } from 'nats';

/** The propagation fields of `ctx` (e.g. { traceparent }); empty when nothing is traced. */
export function traceCarrier(ctx: Context = context.active()): Record<string, string> {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  return carrier;
}

/** NATS headers carrying `ctx` (default: the active context); undefined when there is nothing to carry. */
export function natsHeaders(ctx: Context = context.active()): MsgHdrs | undefined {
  const carrier = traceCarrier(ctx);
  const keys = Object.keys(carrier);
  if (keys.length === 0) return undefined;
  const h = headers();
  for (const k of keys) h.set(k, carrier[k]!);
  return h;
}

/** Bytes `h` adds to a NATS message (they count against the server's max payload). */
export function headerBytes(h: MsgHdrs | undefined): number {
  // nats.js's headers() object encodes itself (MsgHdrsImpl); the MsgHdrs interface does not say so.
  return h ? (h as unknown as { encode(): Uint8Array }).encode().length : 0;
}

const natsGetter: TextMapGetter<MsgHdrs> = {
  keys: (h) => h.keys(),
  get: (h, key) => (h.has(key) ? h.get(key) : undefined),
};

/** The context a NATS message carries (the root context when it carries none). */
export function natsContext(h: MsgHdrs | undefined): Context {
  return h ? propagation.extract(ROOT_CONTEXT, h, natsGetter) : ROOT_CONTEXT;
}

/** The context propagation fields carry (what traceCarrier made), else the root. */
export function carrierContext(carrier: Record<string, string>): Context {
  return propagation.extract(ROOT_CONTEXT, carrier);
}

/** The context an HTTP request carries in its headers (a caller's traceparent), else the root. */
export function httpContext(h: Record<string, string | string[] | undefined>): Context {
  return propagation.extract(ROOT_CONTEXT, h);
}

/** What gRPC metadata offers (grpc-js `Metadata`), so this lib needs no gRPC import. */
export interface MetadataLike {
  set(key: string, value: string): void;
  get(key: string): unknown[];
}

/** Adds `ctx` (default: the active context) to gRPC metadata. */
export function injectMetadata(md: MetadataLike, ctx: Context = context.active()): void {
  for (const [k, v] of Object.entries(traceCarrier(ctx))) md.set(k, v);
}

/** The context gRPC metadata carries (the root context when it carries none). */
export function metadataContext(md: MetadataLike): Context {
  return propagation.extract(ROOT_CONTEXT, md, {
    keys: () => ['traceparent', 'tracestate'],
    get: (m, key) => {
      const v = m.get(key)[0];
      return v === undefined ? undefined : String(v);
    },
  });
}
