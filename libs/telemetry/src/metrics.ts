// Every metric Strata records, in one place: names, units and attributes (docs/observability.md
// lists them with their Prometheus names). Durations are in seconds, sizes in bytes, as the
// OpenTelemetry conventions have them.
import { metrics, type Counter, type Histogram, type MeterProvider, type ObservableGauge } from '@opentelemetry/api';

/** Bucket bounds of step, stage and migration-pause durations: 1 ms to 10 s (seconds). */
const LATENCY_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];

/** Strata's instruments. */
export interface StrataMetrics {
  /** strata.tokens.generated {pipeline}: tokens sampled for clients (its rate is tokens/s) — coordinator */
  tokensGenerated: Counter;
  /** strata.prompt.tokens {pipeline}: prompt tokens of requests that ended — coordinator */
  promptTokens: Counter;
  /** strata.prompt.tokens.cached {pipeline}: of those, the ones a session or the prefix cache held (hit ratio: cached / all) — coordinator */
  promptTokensCached: Counter;
  /** strata.step.duration (s) {pipeline, kind, outcome}: a micro-batch from send to result — coordinator */
  stepDuration: Histogram;
  /** strata.queue.depth {pipeline}: requests waiting for sequences or cells — coordinator */
  queueDepth: ObservableGauge;
  /** strata.pipeline.load {pipeline}: requests running or waiting on the pipeline (what autoscaling tracks) — coordinator */
  pipelineLoad: ObservableGauge;
  /** strata.migrations {state: done|aborted}: migrations ended — coordinator */
  migrations: Counter;
  /** strata.migration.bytes (By) {state}: KV bytes pushed by migrations — coordinator */
  migrationBytes: Counter;
  /** strata.migration.pause (s): time a migrated session did not decode — coordinator */
  migrationPause: Histogram;
  /** strata.handoffs {from, to, outcome: done|stayed}: requests a prefill pipeline handed to a decode pipeline, or kept (disaggregation) — coordinator */
  handOffs: Counter;
  /** strata.handoff.bytes (By) {from, to}: KV bytes those hand-offs pushed — coordinator */
  handOffBytes: Counter;
  /** strata.handoff.duration (s): from a request's first token on its prefill pipeline to decoding on its decode pipeline — coordinator */
  handOffDuration: Histogram;
  /** strata.stage.duration (s) {worker, kind}: one stage computing one micro-batch — worker */
  stageDuration: Histogram;
  /** strata.kv.cells.used {worker}: KV cells holding some sequence — worker */
  kvCellsUsed: ObservableGauge;
  /** strata.kv.cells.total {worker}: KV cells of the stage — worker */
  kvCellsTotal: ObservableGauge;
  /** strata.kv.tier.bytes (By) {worker, tier: host|disk}: KV states of evicted sessions and prefixes the worker's tiers keep — worker */
  kvTierBytes: ObservableGauge;
  /** strata.kv.tier.states {worker, tier}: how many — worker */
  kvTierStates: ObservableGauge;
  /** strata.kv.tier.ops {worker, op: save|load|miss, tier: host|disk|none}: states saved (none: no tier could hold it), loaded back, and asked for but not there (dropped for room, damaged) — worker */
  kvTierOps: Counter;
  /** strata.stage.busy (s) {worker}: how long the step computing now has been computing (0: idle) — worker */
  stageBusy: ObservableGauge;
  /** strata.worker.slow {worker}: 1 while its step runs past twice its predicted time — coordinator */
  workerSlow: ObservableGauge;
  /** http.server.request.duration (s) {http.request.method, http.route, http.response.status_code} — gateway */
  httpDuration: Histogram;
}

function create(provider: MeterProvider): StrataMetrics {
  const m = provider.getMeter('strata');
  const latency = { unit: 's', advice: { explicitBucketBoundaries: LATENCY_BUCKETS } };
  return {
    tokensGenerated: m.createCounter('strata.tokens.generated', { description: 'tokens sampled for clients', unit: '{token}' }),
    promptTokens: m.createCounter('strata.prompt.tokens', { description: 'prompt tokens of requests that ended', unit: '{token}' }),
    promptTokensCached: m.createCounter('strata.prompt.tokens.cached', { description: 'prompt tokens of requests that ended whose cells a session or the prefix cache already held', unit: '{token}' }),
    stepDuration: m.createHistogram('strata.step.duration', { ...latency, description: 'a micro-batch\'s round trip through its pipeline, seen by the scheduler' }),
    queueDepth: m.createObservableGauge('strata.queue.depth', { description: 'requests waiting for sequences or KV cells', unit: '{request}' }),
    pipelineLoad: m.createObservableGauge('strata.pipeline.load', { description: 'requests running or waiting on the pipeline', unit: '{request}' }),
    migrations: m.createCounter('strata.migrations', { description: 'migrations ended, by state', unit: '{migration}' }),
    migrationBytes: m.createCounter('strata.migration.bytes', { description: 'KV state bytes pushed by migrations', unit: 'By' }),
    migrationPause: m.createHistogram('strata.migration.pause', { ...latency, description: 'time a migrated session did not decode (hold to resumption)' }),
    handOffs: m.createCounter('strata.handoffs', { description: 'requests a prefill pipeline handed to a decode pipeline (done) or decoded itself (stayed)', unit: '{request}' }),
    handOffBytes: m.createCounter('strata.handoff.bytes', { description: 'KV state bytes pushed by hand-offs from prefill to decode pipelines', unit: 'By' }),
    handOffDuration: m.createHistogram('strata.handoff.duration', { ...latency, description: 'a hand-off\'s pause: from the first token on the prefill pipeline to decoding on the decode pipeline' }),
    stageDuration: m.createHistogram('strata.stage.duration', { ...latency, description: 'one stage computing one micro-batch' }),
    kvCellsUsed: m.createObservableGauge('strata.kv.cells.used', { description: 'KV cells holding some sequence', unit: '{cell}' }),
    kvCellsTotal: m.createObservableGauge('strata.kv.cells.total', { description: 'KV cells of the stage', unit: '{cell}' }),
    kvTierBytes: m.createObservableGauge('strata.kv.tier.bytes', { description: 'KV states of evicted sessions and cached prefixes kept in the worker\'s tiers', unit: 'By' }),
    kvTierStates: m.createObservableGauge('strata.kv.tier.states', { description: 'KV states kept in the worker\'s tiers', unit: '{state}' }),
    kvTierOps: m.createCounter('strata.kv.tier.ops', { description: 'KV states saved to the tiers, loaded back, or asked for and missing', unit: '{state}' }),
    stageBusy: m.createObservableGauge('strata.stage.busy', { description: 'how long the step computing now has been computing (0: idle)', unit: 's' }),
    workerSlow: m.createObservableGauge('strata.worker.slow', { description: '1 while a worker\'s step runs past twice its predicted time (shown, never taken down for it)', unit: '{worker}' }),
    httpDuration: m.createHistogram('http.server.request.duration', { ...latency, description: 'HTTP requests the gateway answered, to the end of the body' }),
  };
}

let cached: { provider: MeterProvider; metrics: StrataMetrics } | null = null;

/**
 * Strata's instruments on the registered meter provider (no-ops while none is registered),
 * made once per provider.
 */
export function strataMetrics(): StrataMetrics {
  const provider = metrics.getMeterProvider();
  if (cached?.provider !== provider) cached = { provider, metrics: create(provider) };
  return cached.metrics;
}
