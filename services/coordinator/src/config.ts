// The coordinator's configuration: one schema, read from flags, STRATA_* environment and a JSON file.
import { isId } from '@strata/wire';
import { randomBytes } from 'node:crypto';
import { loadConfig, ConfigError, type ConfigOf, type Schema, type Sources } from '@strata/config';
import { telemetryOptions, telemetrySchema, type TelemetryOptions } from '@strata/telemetry';

/** Every setting of a coordinator. */
export const coordinatorSchema = {
  id: { kind: 'string', doc: 'coordinator id (default: random)' },
  natsUrl: { kind: 'string', doc: 'NATS server (nats://[user:password@]host:port), or the servers of a cluster separated by commas', default: 'nats://127.0.0.1:4222' },
  redisUrl: { kind: 'string', doc: 'Redis server (redis://user:password@host:port), or a primary behind Sentinel (redis-sentinel://user:password@host:26379,host:26379/<primary name>); pass credentials in STRATA_REDIS_URL, not on the command line', default: 'redis://127.0.0.1:6379' },
  termKeyFile: { kind: 'string', doc: 'Ed25519 private key (PKCS#8 PEM) that signs leader terms and pipeline generations; every coordinator of a cluster holds the same one, workers and gateways its public key (unset: unsigned, which verifying workers refuse)' },
  sessionTtlS: { kind: 'int', doc: 'a session unused for this many seconds is forgotten (its Redis keys expire; 0: never)', default: 86400 },
  workerTimeoutMs: { kind: 'int', doc: 'a worker unheard for this long is dead', default: 3000 },
  leaseMs: { kind: 'int', doc: 'the leader\'s Redis lease; a standby takes over this long after the leader stops renewing it', default: 3000 },
  prefillChunk: { kind: 'int', doc: 'prompt tokens per micro-batch at most', default: 256 },
  defaultMaxTokens: { kind: 'int', doc: 'tokens a request without max_tokens may generate', default: 1024 },
  maxQueue: { kind: 'int', doc: 'requests a pipeline queues at most before answering 429', default: 256 },
  queueFactor: { kind: 'number', doc: 'cells queued requests may reserve, in multiples of a pipeline\'s cells, before 429', default: 4 },
  stepDeadlineFloorMs: { kind: 'int', doc: 'a step is stuck (its pipeline resets) past --step-deadline-margin times its predicted cost, never sooner than this; also the deadline while its cost is unknown', default: 30000 },
  stepDeadlineMargin: { kind: 'number', doc: 'how many times its predicted cost a step may take before it is stuck', default: 4 },
  overlapSteps: { kind: 'bool', doc: 'plan each decoding step while the one before it computes; the stages hand samples from the last stage to the first (a ring) instead of through the coordinator', default: true },
  prefixCache: { kind: 'bool', doc: 'every request shares the longest cached prefix of its prompt with earlier requests of its cache scope (its tenant); prompts of ended requests stay cached until room is needed', default: true },
  kvTiers: { kind: 'bool', doc: 'an idle session evicted for new work is saved to its workers\' tiers (host memory, then disk: the workers\' --kv-host-cache-mib, --kv-disk-cache-mib, --kv-disk-dir) and restored from there when used again, instead of prefilled again', default: true },
  routeByPrefix: { kind: 'bool', doc: 'place a request without a session on the pipeline where its uncached prompt plus --route-load-tokens per request already there costs least (false: the least loaded pipeline)', default: true },
  routeLoadTokens: { kind: 'int', doc: 'placement prices each request running or waiting on a pipeline like this many prompt tokens to compute: a request goes where its uncached prompt plus that price is lowest (a hot prefix spreads once its pipeline is that much busier)', default: 256 },
  disaggMinPrompt: { kind: 'int', doc: 'with pipelines of role prefill (workers\' --role), a one-choice request whose prompt has at least this many tokens that the prefill pipeline does not hold is prefilled there and decoded on a decode pipeline (its KV moves over KvTransfer after the first token); shorter prompts are prefilled where they decode', default: 512 },
  disaggMaxPrefillLoad: { kind: 'int', doc: 'a request is handed to a prefill pipeline only while that pipeline has fewer than this many requests running or waiting; otherwise it is prefilled where it decodes', default: 16 },
  decodeBurstMs: { kind: 'int', doc: 'on a one-stage pipeline whose jobs all decode while nothing waits, one step decodes several tokens each on the stage, lasting about this long: one message each way and one event per request for all of them (0: a step per token)', default: 100 },
  stepBudgetMs: { kind: 'int', doc: 'prompt tokens in a micro-batch are cut so that its predicted time through the pipeline stays within this (0: only --prefill-chunk limits them)', default: 200 },
  maxRequestFailures: { kind: 'int', doc: 'a request in the step that took its pipeline down (stuck past its deadline, or in flight on a worker that died) this many times fails with 400 repeated_failure instead of being rebuilt again', default: 2 },
  seqOpTimeoutMs: { kind: 'int', doc: 'a sequence operation unanswered for this long fails', default: 5000 },
  migrationRounds: { kind: 'int', doc: 'pre-copy rounds of a migration at most', default: 3 },
  migrationDelta: { kind: 'int', doc: 'a pre-copy round of at most this many new positions goes to the switch', default: 8 },
  pushTimeoutMs: { kind: 'int', doc: 'a source push unanswered for this long aborts its migration', default: 120000 },
  rebalanceHigh: { kind: 'number', doc: 'a worker whose KV occupancy passes this (0..1) sheds a session; 0: no rebalancer', default: 0.9 },
  rebalanceLow: { kind: 'number', doc: 'sessions shed go to a pipeline whose occupancy is below this (0..1)', default: 0.7 },
  ...telemetrySchema,
  logLevel: { kind: 'string', doc: 'debug, info, warn, error, none', default: 'info' },
} satisfies Schema;

/** A coordinator's settings, compiled and checked. */
export type CoordinatorConfig = Omit<ConfigOf<typeof coordinatorSchema>, 'id'> & {
  id: string;
  migration: { maxRounds: number; deltaPositions: number; pushTimeoutMs: number };
  telemetry: TelemetryOptions;
};

/** Reads and checks a coordinator's configuration. */
export function coordinatorConfig(sources?: Sources): CoordinatorConfig {
  const c = loadConfig(coordinatorSchema, sources);
  const id = c.id ?? `c-${randomBytes(4).toString('hex')}`;
  if (!isId(id)) throw new ConfigError('bad_value', `id '${id}' must be 1-128 of A-Z a-z 0-9 _ -`, 'id');
  for (const k of ['workerTimeoutMs', 'leaseMs', 'prefillChunk', 'defaultMaxTokens', 'stepDeadlineFloorMs', 'stepDeadlineMargin', 'seqOpTimeoutMs', 'migrationRounds', 'pushTimeoutMs', 'maxQueue', 'queueFactor', 'maxRequestFailures', 'disaggMinPrompt', 'disaggMaxPrefillLoad'] as const) {
    if (c[k] < 1) throw new ConfigError('bad_value', `${k} must be at least 1, got ${c[k]}`, k);
  }
  if (c.decodeBurstMs < 0) throw new ConfigError('bad_value', `decodeBurstMs must be 0 or more, got ${c.decodeBurstMs}`, 'decodeBurstMs');
  if (c.stepBudgetMs < 0) throw new ConfigError('bad_value', `stepBudgetMs must be 0 or more, got ${c.stepBudgetMs}`, 'stepBudgetMs');
  if (c.rebalanceHigh < 0 || c.rebalanceHigh > 1 || c.rebalanceLow < 0 || c.rebalanceLow > 1) throw new ConfigError('bad_value', 'rebalanceHigh and rebalanceLow are fractions 0..1', 'rebalanceHigh');
  return { ...c, id, migration: { maxRounds: c.migrationRounds, deltaPositions: c.migrationDelta, pushTimeoutMs: c.pushTimeoutMs }, telemetry: telemetryOptions(c, 'coordinator', id, sources?.env) };
}
