// The gateway's configuration: one schema, read from flags, STRATA_* environment and a JSON file.
import { loadConfig, ConfigError, type ConfigOf, type Schema, type Sources } from '@strata/config';
import { ensureDefaultModel, modelIdOf } from '@strata/model';
import { telemetryOptions, telemetrySchema, type TelemetryOptions } from '@strata/telemetry';
import type { GrammarLimits } from './gbnf-limits.ts';

/** Every setting of a gateway. */
export const gatewaySchema = {
  host: { kind: 'string', doc: 'address to listen on', default: '127.0.0.1' },
  port: { kind: 'int', doc: 'port to listen on (0: any free one)', default: 8080 },
  natsUrl: { kind: 'string', doc: 'NATS server (nats://[user:password@]host:port), or the servers of a cluster separated by commas', default: 'nats://127.0.0.1:4222' },
  model: { kind: 'string', doc: 'GGUF whose vocabulary the gateway tokenizes with, or several separated by commas: it serves each of them (default: the synthetic default model)' },
  modelId: { kind: 'string', doc: 'model id clients name, or one per --model separated by commas (default: each file name without .gguf)' },
  timeoutMs: { kind: 'int', doc: 'the cluster must accept and keep answering within this long', default: 60000 },
  drainMs: { kind: 'int', doc: 'on SIGTERM, running requests may finish for this long before their connections close', default: 30000 },
  maxBodyBytes: { kind: 'int', doc: 'largest request body', default: 4 * 1024 * 1024 },
  termPublicKeyFile: { kind: 'string', doc: 'the coordinators\' Ed25519 public key (SPKI PEM, or a PEM certificate of it): a leader announcement counts only with their signature (unset: every one does)' },
  leaderLapseMs: { kind: 'int', doc: 'no leader announcement for this long means no coordinator holds the lease: requests then fail at once with 503 no_coordinator instead of waiting (keep it above the coordinators\' --lease-ms × 4/3, when a standby has taken over)', default: 6000 },
  grammarMaxBytes: { kind: 'int', doc: 'largest grammar (GBNF, or the one a JSON schema compiles to), and largest JSON schema, in bytes', default: 32768 },
  grammarMaxRules: { kind: 'int', doc: 'rules a grammar may expand to (named rules, groups, and those repetitions add)', default: 4096 },
  grammarMaxAlternatives: { kind: 'int', doc: 'alternatives a grammar may have, over every rule and group', default: 2048 },
  grammarMaxNesting: { kind: 'int', doc: 'groups a grammar may nest inside one another', default: 32 },
  grammarMaxFanout: { kind: 'int', doc: 'alternatives one rule of a grammar may open at once, through nested rules (the grammar sampler checks every candidate token against each)', default: 256 },
  corsOrigins: { kind: 'string', doc: 'browser origins allowed to call the API, comma-separated (https://app.example.com), or * for any; unset: no CORS headers (browsers refuse cross-origin calls)', default: '' },
  apiKeysFile: { kind: 'string', doc: 'file of API keys, one "<key> user|admin" per line (a mounted secret); without it the gateway takes every caller' },
  ...telemetrySchema,
  logLevel: { kind: 'string', doc: 'debug, info, warn, error, none', default: 'info' },
} satisfies Schema;

/** A model the gateway serves: the id clients name and its GGUF. */
export interface ModelSource { id: string; path: string }

/** A gateway's settings, compiled and checked. */
export type GatewayConfig = Omit<ConfigOf<typeof gatewaySchema>, 'model' | 'modelId'> & { models: ModelSource[]; telemetry: TelemetryOptions; grammar: GrammarLimits };

/** Reads and checks a gateway's configuration. */
export function gatewayConfig(sources?: Sources): GatewayConfig {
  const c = loadConfig(gatewaySchema, sources);
  if (c.port < 0 || c.port > 65535) throw new ConfigError('bad_value', `port must be 0-65535, got ${c.port}`, 'port');
  if (c.timeoutMs < 1 || c.maxBodyBytes < 1 || c.drainMs < 0) throw new ConfigError('bad_value', 'timeoutMs and maxBodyBytes must be positive, drainMs not negative');
  for (const k of ['leaderLapseMs', 'grammarMaxBytes', 'grammarMaxRules', 'grammarMaxAlternatives', 'grammarMaxNesting', 'grammarMaxFanout'] as const) {
    if (c[k] < 1) throw new ConfigError('bad_value', `${k} must be at least 1, got ${c[k]}`, k);
  }
  const models = modelSources(c.model, c.modelId);
  const grammar: GrammarLimits = {
    maxBytes: c.grammarMaxBytes, maxRules: c.grammarMaxRules, maxAlternatives: c.grammarMaxAlternatives, maxNesting: c.grammarMaxNesting, maxFanout: c.grammarMaxFanout,
  };
  const { model: _, modelId: __, ...rest } = c;
  return { ...rest, models, telemetry: telemetryOptions(c, 'gateway', undefined, sources?.env), grammar };
}

/** --model's files with --model-id's ids (each file's name without .gguf where none is given). */
function modelSources(model: string | undefined, modelId: string | undefined): ModelSource[] {
  const list = (s: string) => s.split(',').map((x) => x.trim());
  const paths = model === undefined ? [ensureDefaultModel()] : list(model);
  const ids = modelId === undefined ? paths.map(modelIdOf) : list(modelId);
  if (paths.some((p) => p === '')) throw new ConfigError('bad_value', `model '${model}' names an empty file`, 'model');
  if (ids.length !== paths.length) throw new ConfigError('bad_value', `modelId gives ${ids.length} id(s) for ${paths.length} model(s)`, 'modelId');
  const dup = ids.find((id, i) => id === '' || ids.indexOf(id) !== i);
  if (dup !== undefined) throw new ConfigError('bad_value', dup === '' ? 'a model id is empty' : `model id '${dup}' is given twice`, 'modelId');
  return paths.map((path, i) => ({ id: ids[i]!, path }));
}
