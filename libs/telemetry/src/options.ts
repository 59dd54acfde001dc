// Telemetry settings every service shares: the fields each service's schema takes in, and their
// compiled form. Telemetry is off unless an OTLP endpoint or a metrics port is given.
import { hostname } from 'node:os';
import { ConfigError, type ConfigOf, type Schema } from '@strata/config';

/** The telemetry fields of a service's schema (spread into worker, coordinator and gateway). */
export const telemetrySchema = {
  metricsPort: { kind: 'int', doc: 'port of the Prometheus endpoint GET /metrics (0: none; the Helm chart uses 9464)', default: 0 },
  metricsHost: { kind: 'string', doc: 'address the Prometheus endpoint listens on', default: '127.0.0.1' },
  otlpEndpoint: { kind: 'string', doc: 'OTLP/HTTP base URL traces and metrics are sent to, e.g. http://collector:4318 (default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: no export)' },
  otlpIntervalMs: { kind: 'int', doc: 'milliseconds between OTLP exports of spans and of metrics', default: 5000 },
} satisfies Schema;

/** What {@link startTelemetry} needs; build it with {@link telemetryOptions}. */
export interface TelemetryOptions {
  /** OpenTelemetry service.name: strata-worker, strata-coordinator, strata-gateway */
  serviceName: string;
  /** service.instance.id: the worker or coordinator id, else host-pid */
  instanceId: string;
  /** port of the Prometheus endpoint; 0: none */
  metricsPort: number;
  metricsHost: string;
  /** OTLP/HTTP base URL (…/v1/traces and …/v1/metrics are appended); null: no OTLP export */
  otlpEndpoint: string | null;
  /** milliseconds between OTLP exports */
  exportIntervalMs: number;
}

/**
 * Compiles a service's telemetry fields. The OTLP endpoint falls back to the standard
 * OTEL_EXPORTER_OTLP_ENDPOINT; OTEL_SDK_DISABLED=true turns everything off.
 */
export function telemetryOptions(
  c: ConfigOf<typeof telemetrySchema>, service: string, instanceId: string | undefined, env: Record<string, string | undefined> = process.env,
): TelemetryOptions {
  if (c.metricsPort < 0 || c.metricsPort > 65535) throw new ConfigError('bad_value', `metricsPort must be 0-65535, got ${c.metricsPort}`, 'metricsPort');
  if (c.otlpIntervalMs < 1) throw new ConfigError('bad_value', `otlpIntervalMs must be at least 1, got ${c.otlpIntervalMs}`, 'otlpIntervalMs');
  const endpoint = c.otlpEndpoint || env.OTEL_EXPORTER_OTLP_ENDPOINT || null;
  if (endpoint !== null && !/^https?:\/\/[^/]+/i.test(endpoint)) throw new ConfigError('bad_value', `otlpEndpoint must be an http(s) URL, got '${endpoint}'`, 'otlpEndpoint');
  const off = env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true';
  return {
    serviceName: `strata-${service}`,
    instanceId: instanceId ?? `${hostname()}-${process.pid}`,
    metricsPort: off ? 0 : c.metricsPort,
    metricsHost: c.metricsHost,
    otlpEndpoint: off ? null : endpoint,
    exportIntervalMs: c.otlpIntervalMs,
  };
}
