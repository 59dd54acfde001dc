// @strata/telemetry: OpenTelemetry set-up, trace context on NATS and gRPC, Strata's metrics.
export { TelemetryError } from './errors.ts';
export { strataMetrics, type StrataMetrics } from './metrics.ts';
export { telemetryOptions, telemetrySchema, type TelemetryOptions } from './options.ts';
export {
  carrierContext, headerBytes, httpContext, injectMetadata, metadataContext, natsContext, natsHeaders, traceCarrier, type MetadataLike,
} from './propagation.ts';
export { startTelemetry, type Telemetry } from './setup.ts';
export { endSpan, stepKind, tracer, type StepKind } from './spans.ts';
export { startOtlpReceiver, type OtlpReceiver, type ReceivedPoint, type ReceivedSpan } from './otlp-receiver.ts';
