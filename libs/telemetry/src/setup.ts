// Starting and stopping telemetry in a process. With nothing to export the SDK is not even
// loaded: the OpenTelemetry API then hands out no-op tracers and meters, and propagation
// injects nothing, so a service without telemetry pays a few no-op calls per step.
import type { Logger } from '@strata/log';
import type { TelemetryOptions } from './options.ts';

/** Telemetry running in this process. shutdown() flushes and is idempotent. */
export interface Telemetry {
  /** spans are exported (OTLP) */
  readonly traces: boolean;
  /** metrics are recorded (OTLP and/or Prometheus) */
  readonly metrics: boolean;
  /** the Prometheus endpoint, e.g. http://127.0.0.1:9464/metrics; null: none */
  readonly metricsUrl: string | null;
  /** exports what is buffered (waiting at most `timeoutMs`, default 3000) and unregisters */
  shutdown(timeoutMs?: number): Promise<void>;
}

const OFF: Telemetry = { traces: false, metrics: false, metricsUrl: null, shutdown: () => Promise.resolve() };

/**
 * Registers the OpenTelemetry SDK for this process when `o` asks for any export: W3C trace
 * context propagation, spans to OTLP, metrics to OTLP and to a Prometheus endpoint. Call it
 * before a service starts (meters taken earlier stay no-ops). Export failures are logged as
 * warnings on `log`. Throws TelemetryError when the metrics port cannot be bound.
 */
export async function startTelemetry(o: TelemetryOptions, log: Logger): Promise<Telemetry> {
  if (o.otlpEndpoint === null && o.metricsPort === 0) return OFF;
  const { startSdk } = await import('./sdk.ts');
  return startSdk(o, log);
}
