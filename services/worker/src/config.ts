// The worker's configuration: one schema, read from flags, STRATA_* environment and a JSON file.
import { isId } from '@strata/wire';
import { hostname } from 'node:os';
import { GgmlType } from '@strata/ggml';
import { loadConfig, ConfigError, type ConfigOf, type Schema, type Sources } from '@strata/config';
import { ensureDefaultModel, modelIdOf } from '@strata/model';
import { telemetryOptions, telemetrySchema, type TelemetryOptions } from '@strata/telemetry';

/** What a pipeline may do (its stages' --role). */
export const ROLES = ['prefill', 'decode', 'both'] as const;

/** Every setting of a worker. */
export const workerSchema = {
  model: { kind: 'string', doc: 'GGUF file (default: the synthetic default model)' },
  modelId: { kind: 'string', doc: 'model id clients name (default: the file name without .gguf)' },
  layers: { kind: 'string', doc: 'layer range l0:l1 this worker holds (default: its stage of --stages, else every layer)' },
  stages: { kind: 'string', doc: 'the pipeline\'s layer ranges l0:l1,l1:l2,…; with S ranges, the worker at --ordinal N holds range N mod S of pipeline replica N div S, and chains only with that replica\'s workers (its group gets the suffix #<replica>)' },
  ordinal: { kind: 'int', doc: 'this worker\'s place in --stages, from 0: range ordinal mod S of replica ordinal div S (default: the -N suffix of HOSTNAME, as a StatefulSet pod has)' },
  id: { kind: 'string', doc: 'worker id, unique in the cluster (default: host-pid)' },
  group: { kind: 'string', doc: 'pipeline group: this stage chains only with stages of the same group', default: '' },
  role: { kind: 'string', doc: 'what this stage\'s pipeline does: prefill (computes long prompts, then hands each request\'s KV to a decode pipeline), decode (takes the hand-offs, sessions and short prompts) or both; a stage chains only with stages of the same role', default: 'both' },
  natsUrl: { kind: 'string', doc: 'NATS server (nats://[user:password@]host:port), or the servers of a cluster separated by commas', default: 'nats://127.0.0.1:4222' },
  threads: { kind: 'int', doc: 'CPU threads', default: 2 },
  device: { kind: 'string', doc: 'ggml device (CPU, CUDA0, ...)', default: 'CPU' },
  ctxSize: { kind: 'int', doc: 'KV cells', default: 4096 },
  kvType: { kind: 'string', doc: 'K/V type: f16, f32, q8_0, q4_0', default: 'f16' },
  nSeqMax: { kind: 'int', doc: 'sequences the worker holds at once', default: 64 },
  kvStreams: { kind: 'bool', doc: 'one KV stream per sequence: --n-seq-max streams of --ctx-size / --n-seq-max cells each (the most a sequence holds), each token attending to its own stream only (llama-server\'s default layout, faster attention with many sequences); a cached prefix is then copied into a sequence rather than shared. false: one stream every sequence shares', default: false },
  kvSwaFull: { kind: 'bool', doc: 'windowed layers (Gemma 2/3, gpt-oss) keep a full-size K/V cache; false: one sized for --n-seq-max windows plus a micro-batch beside the full layers\' (llama.cpp\'s iSWA cache, llama-server\'s default), and the pipeline then continues a cached sequence, and shares a cached prefix, only where it ends', default: true },
  kvHostCacheMib: { kind: 'int', doc: 'host memory for the KV state of idle sessions evicted from the device\'s cells, restored when they are used again (0: none)', default: 512 },
  kvDiskCacheMib: { kind: 'int', doc: 'disk for the KV state of evicted sessions that host memory no longer holds (with --kv-disk-dir)', default: 4096 },
  kvDiskDir: { kind: 'string', doc: 'directory of the disk tier: the worker keeps its files in <dir>/<worker id>, emptied at start (unset: no disk tier)', default: '' },
  maxBatch: { kind: 'int', doc: 'most tokens in one micro-batch', default: 512 },
  grpcHost: { kind: 'string', doc: 'address the KvTransfer gRPC service listens on', default: '127.0.0.1' },
  grpcPort: { kind: 'int', doc: 'port of the KvTransfer gRPC service (0: any free one)', default: 0 },
  grpcAdvertise: { kind: 'string', doc: 'host:port other workers reach KvTransfer at (default: host:port it listens on)' },
  termPublicKeyFile: { kind: 'string', doc: 'the coordinators\' Ed25519 public key (SPKI PEM, or a PEM certificate of it): a newer leader term or pipeline generation is taken only with their signature, unfenced messages are refused (unset: every term is believed)' },
  transferTokenFile: { kind: 'string', doc: 'file holding the shared token KvTransfer peers must present (a mounted secret); none: no token' },
  grpcTlsCert: { kind: 'string', doc: 'PEM certificate of this worker for KvTransfer (with --grpc-tls-key and --grpc-tls-ca: TLS)' },
  grpcTlsKey: { kind: 'string', doc: 'PEM private key of that certificate' },
  grpcTlsCa: { kind: 'string', doc: 'PEM CA that signs every worker\'s certificate' },
  grpcTlsMutual: { kind: 'bool', doc: 'require and check a client certificate from KvTransfer peers', default: false },
  transferMaxBlobBytes: { kind: 'int', doc: 'largest KV state blob a push may carry', default: 256 * 1024 * 1024 },
  stageLinkDir: { kind: 'string', doc: 'directory of this host\'s stage sockets, the same for every worker of the host (made with mode 0700; refused if other users may enter it): a step goes to a next stage on this host, and its samples back to the first, over a Unix socket between the stage threads instead of NATS; the workers present --transfer-token-file\'s token to each other (unset: every step crosses NATS)', default: '' },
  heartbeatMs: { kind: 'int', doc: 'milliseconds between heartbeats', default: 1000 },
  kvDebug: { kind: 'bool', doc: 'print the stage\'s cells after every batch (STRATA_KV_DEBUG=1)', default: false },
  testStepDelayMs: { kind: 'int', doc: 'test only: every step of at least --test-step-delay-min-tokens tokens takes this many milliseconds longer, as on a slow device (0: none)', default: 0 },
  testStepDelayMinTokens: { kind: 'int', doc: 'test only: the smallest step --test-step-delay-ms slows down', default: 1 },
  drainMs: { kind: 'int', doc: 'on SIGTERM, how long the coordinator may take to migrate this worker\'s sessions away before it stops anyway (0: stop at once; the coordinator rebuilds them)', default: 60000 },
  ...telemetrySchema,
  logLevel: { kind: 'string', doc: 'debug, info, warn, error, none', default: 'info' },
} satisfies Schema;

const KV_TYPES: Record<string, number> = { f16: GgmlType.F16, f32: GgmlType.F32, q8_0: GgmlType.Q8_0, q4_0: GgmlType.Q4_0 };

/** A worker's settings, compiled and checked. */
export interface WorkerConfig extends Omit<ConfigOf<typeof workerSchema>, 'model' | 'modelId' | 'id' | 'kvType'> {
  model: string;
  modelId: string;
  id: string;
  kvType: number;
  kvTypeName: string;
  telemetry: TelemetryOptions;
}

/** Reads and checks a worker's configuration. */
export function workerConfig(sources?: Sources): WorkerConfig {
  const c = loadConfig(workerSchema, sources);
  const model = c.model ?? ensureDefaultModel();
  const kvType = KV_TYPES[c.kvType.toLowerCase()];
  if (kvType === undefined) throw new ConfigError('bad_value', `kvType must be one of ${Object.keys(KV_TYPES).join(', ')}, got '${c.kvType}'`, 'kvType');
  const id = c.id ?? `${hostname().replace(/[^A-Za-z0-9_-]/g, '-')}-${process.pid}`;
  if (!isId(id)) throw new ConfigError('bad_value', `id '${id}' must be 1-128 of A-Z a-z 0-9 _ -`, 'id');
  for (const k of ['threads', 'ctxSize', 'nSeqMax', 'maxBatch', 'heartbeatMs'] as const) {
    if (c[k] < 1) throw new ConfigError('bad_value', `${k} must be at least 1, got ${c[k]}`, k);
  }
  if (c.kvStreams && (c.nSeqMax > 256 || c.ctxSize % c.nSeqMax !== 0)) {
    throw new ConfigError('bad_value', `--kv-streams splits --ctx-size ${c.ctxSize} into --n-seq-max ${c.nSeqMax} equal streams of at most 256: give a multiple of it`, 'kvStreams');
  }
  if (!(ROLES as readonly string[]).includes(c.role)) throw new ConfigError('bad_value', `role must be one of ${ROLES.join(', ')}, got '${c.role}'`, 'role');
  const tls = [c.grpcTlsCert, c.grpcTlsKey, c.grpcTlsCa].filter((x) => x !== undefined).length;
  if (tls !== 0 && tls !== 3) throw new ConfigError('bad_value', 'TLS for KvTransfer needs --grpc-tls-cert, --grpc-tls-key and --grpc-tls-ca together', 'grpcTlsCert');
  if (c.grpcTlsMutual && tls === 0) throw new ConfigError('bad_value', '--grpc-tls-mutual needs TLS', 'grpcTlsMutual');
  const place = c.stages === undefined ? { layers: c.layers, group: c.group } : stageOf(c, (sources?.env ?? process.env).HOSTNAME ?? hostname());
  return { ...c, ...place, model, modelId: c.modelId ?? modelIdOf(model), id, kvType, kvTypeName: c.kvType.toLowerCase(), telemetry: telemetryOptions(c, 'worker', id, sources?.env) };
}

/**
 * The range and group of the worker at --ordinal (else the `-N` that ends `host`) of --stages: one
 * StatefulSet holds whole pipelines, pods S·k … S·k+S-1 making replica k.
 */
function stageOf(c: { layers?: string; stages?: string; ordinal?: number; group: string }, host: string): { layers: string; group: string } {
  if (c.layers !== undefined) throw new ConfigError('bad_value', 'give --layers or --stages, not both', 'stages');
  const stages = c.stages!.split(',').map((s) => s.trim());
  let next = 0; // each range starts where the previous one ends, the first at layer 0
  for (const s of stages) {
    const m = /^(\d+):(\d+)$/.exec(s);
    if (!m || Number(m[1]) !== next || Number(m[2]) <= next) throw new ConfigError('bad_value', `stages '${c.stages}' must be ranges l0:l1 that follow each other from layer 0`, 'stages');
    next = Number(m[2]);
  }
  const ordinal = c.ordinal ?? Number(/-(\d+)$/.exec(host)?.[1] ?? NaN);
  if (Number.isNaN(ordinal)) throw new ConfigError('bad_value', `--stages needs --ordinal or a host name ending in -N, got '${host}'`, 'ordinal');
  if (ordinal < 0) throw new ConfigError('bad_value', `ordinal ${ordinal} must not be negative`, 'ordinal');
  return { layers: stages[ordinal % stages.length]!, group: `${c.group}#${Math.floor(ordinal / stages.length)}` };
}
