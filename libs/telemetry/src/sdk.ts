// The OpenTelemetry SDK wiring, loaded only when a service exports something (setup.ts).
// One NodeSDK per process: an AsyncLocalStorage context manager, the W3C trace-context
// propagator, a batch span processor to OTLP/HTTP, and metric readers for OTLP/HTTP and
// Prometheus. No auto-instrumentation: Strata makes its own spans where its work happens.
import { DiagLogLevel, context, diag, metrics, propagation, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { defaultResource, envDetector, hostDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Logger } from '@strata/log';
import { TelemetryError } from './errors.ts';
import type { TelemetryOptions } from './options.ts';
import type { Telemetry } from './setup.ts';

/** The same SDK complaint (an unreachable collector, say) is logged once a minute at most. */
const REPEAT_MS = 60_000;

function routeDiag(log: Logger): void {
  const last = new Map<string, number>();
  const text = (x: unknown) => (x instanceof Error ? x.message : typeof x === 'string' ? x : JSON.stringify(x));
  const warn = (message: unknown, ...args: unknown[]) => {
    const detail = [message, ...args].map(text).join(' ');
    const now = Date.now();
    if (now - (last.get(detail) ?? -Infinity) < REPEAT_MS) return;
    last.set(detail, now);
    log.warn('telemetry', { detail });
  };
  diag.setLogger({ error: warn, warn, info: () => {}, debug: () => {}, verbose: () => {} }, DiagLogLevel.WARN);
}

async function prometheus(o: TelemetryOptions): Promise<PrometheusExporter> {
  return new Promise((resolve, reject) => {
    const exporter: PrometheusExporter = new PrometheusExporter({ host: o.metricsHost, port: o.metricsPort, endpoint: '/metrics' }, (err) => {
      if (err) reject(new TelemetryError('metrics_port', `the metrics endpoint cannot listen on ${o.metricsHost}:${o.metricsPort}: ${err.message}`));
      else resolve(exporter);
    });
  });
}

/** Starts and registers the SDK (see setup.ts). */
export async function startSdk(o: TelemetryOptions, log: Logger): Promise<Telemetry> {
  const base = o.otlpEndpoint?.replace(/\/+$/, '') ?? null;
  const readers: IMetricReader[] = [];
  let prom: PrometheusExporter | null = null;
  if (o.metricsPort > 0) {
    prom = await prometheus(o);
    readers.push(prom);
  }
  // After the metrics port is bound: a taken port is one clear TelemetryError, not also a warning.
  routeDiag(log);
  if (base !== null) {
    readers.push(new PeriodicExportingMetricReader({
      exporter: new OTLPMetricExporter({ url: `${base}/v1/metrics` }),
      exportIntervalMillis: o.exportIntervalMs,
      exportTimeoutMillis: Math.min(o.exportIntervalMs, 30_000),
    }));
  }
  const sdk = new NodeSDK({
    resource: defaultResource().merge(resourceFromAttributes({
      'service.name': o.serviceName, 'service.namespace': 'strata', 'service.instance.id': o.instanceId,
    })),
    // Not the process detector: a command line may carry credentials (a NATS URL's password).
    resourceDetectors: [envDetector, hostDetector],
    spanProcessors: base === null ? [] : [new BatchSpanProcessor(new OTLPTraceExporter({ url: `${base}/v1/traces` }), { scheduledDelayMillis: o.exportIntervalMs })],
    metricReaders: readers,
    textMapPropagator: new W3CTraceContextPropagator(),
    // Logs stay JSON lines on stderr (with trace ids); no OTLP log export.
    logRecordProcessors: [],
    instrumentations: [],
  });
  try {
    sdk.start();
  } catch (err) {
    await prom?.shutdown();
    throw err;
  }
  let stopping: Promise<void> | null = null;
  return {
    traces: base !== null,
    metrics: true,
    metricsUrl: prom ? `http://${o.metricsHost.includes(':') ? `[${o.metricsHost}]` : o.metricsHost}:${o.metricsPort}/metrics` : null,
    shutdown(timeoutMs = 3000) {
      stopping ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)));
        await Promise.race([sdk.shutdown().catch((err: unknown) => log.warn('telemetry shutdown failed', { err })), late]);
        clearTimeout(timer);
        // A later start in this process (tests) registers afresh.
        trace.disable();
        metrics.disable();
        propagation.disable();
        context.disable();
        diag.disable();
      })();
      return stopping;
    },
  };
}
