// The messages between a worker's main thread (NATS, gRPC, heartbeats) and its stage thread (the
// stage, its KV cache, its samplers). Everything here crosses postMessage: plain data, typed
// arrays moved (transferred) rather than copied where the sender is done with them.
import type { StageCounters, StageMemory } from '@strata/model';
import type { SampledToken, SeqOp, StepEntry, StepHeader } from '@strata/wire';
import type { LinkCounters } from './stage-link.ts';

/** What the stage thread loads (its workerData). */
export interface StageThreadOptions {
  workerId: string;
  model: string;
  /** layers l0:l1 (default: every layer) */
  layers?: string;
  threads: number;
  device: string;
  ctxSize: number;
  kvType: number;
  maxBatch: number;
  nSeqMax: number;
  /** windowed layers keep a full-size cache (false: one sized for nSeqMax windows, llama.cpp's iSWA) */
  kvSwaFull: boolean;
  /** one KV stream per sequence: nSeqMax streams of ctxSize / nSeqMax cells (false: one stream of ctxSize) */
  kvStreams: boolean;
  /** print every stage's cells after each batch (STRATA_KV_DEBUG=1) */
  kvDebug: boolean;
  /** directory of this host's stage sockets ('': no same-host links) */
  linkDir: string;
  /** the token links present (the KvTransfer token); null: none */
  linkToken: string | null;
  /**
   * Test only: every step of at least `testStepDelayMinTokens` tokens takes this much longer
   * (milliseconds, 0: none), as a slow device would; the thread's event loop stays free meanwhile.
   */
  testStepDelayMs: number;
  testStepDelayMinTokens: number;
}

/** The stage as the main thread knows it, sent once when it is loaded. */
export interface StageDescription {
  fingerprint: string;
  nLayer: number;
  nVocab: number;
  nEmbd: number;
  nCtxTrain: number;
  l0: number;
  l1: number;
  /** KV cells, all streams */
  kvCells: number;
  /** KV streams: 1, or one per sequence */
  kvStreams: number;
  /** cells of a windowed group smaller than kvCells (0: none) */
  kvSwaCells: number;
  /** bytes of one K (or V) row of one cell and layer */
  rowBytes: number;
}

/** The step the stage thread computes now, as the main thread reckons it. */
export interface BusyStep {
  stepId: bigint;
  tokens: number;
  /** Σ n_tokens × (pos0 + n_tokens) over its entries: the cells its tokens attend to */
  attention: number;
  /** Date.now() since when it has been the stage's oldest unanswered step */
  sinceMs: number;
}

/** What the main thread knows of the stage without asking: sent with every answer (no extra message per step). */
export interface StageSnapshot {
  /** cells in use */
  used: number;
  /** sequences holding cells */
  sequences: number;
  counters: StageCounters;
  /** steps and operations waiting behind the one running */
  queued: number;
  /** the last step: its tokens and how long it computed (milliseconds) */
  lastStep: { tokens: number; ms: number } | null;
  /** frames over same-host stage links (null: none) */
  links: LinkCounters | null;
}

/**
 * A fence on steps and sequence operations: the coordinator's leader term and the generation of
 * its pipeline (a pipeline reset starts a new one). Work of an older fence than the newest seen
 * is dropped unrun; 0/0 is unfenced (tools).
 */
export interface Fence {
  term: bigint;
  generation: bigint;
}

/**
 * A request to the stage thread. Each gets exactly one reply with its id, except 'ring' (a step's
 * samples from the last stage, for a step that follows it here) and 'leader' (a newer leader's
 * term: work of older terms is stale), which get none. A step carries its span's trace context
 * (W3C fields), for the next stage when it goes there over a link.
 */
export type StageRequest =
  | { op: 'ring'; id: 0; stepId: bigint; samples: RingSamples; fence: Fence }
  | { op: 'leader'; id: 0; term: bigint }
  | { op: 'step'; id: number; header: StepHeader; hidden: Float32Array; trace: Record<string, string> }
  | { op: 'seq'; id: number; ops: SeqOp[]; fence: Fence }
  | { op: 'export'; id: number; seq: number; p0: number; p1: number; l0: number; l1: number }
  | { op: 'posMax'; id: number; seq: number }
  | { op: 'import'; id: number; blob: Uint8Array; seq: number }
  | { op: 'memory'; id: number };

/**
 * What a step produced: hidden states for the next stage, or the sampled tokens (and whether each
 * ends its choice), or nothing: every entry was chained to a sample that ended its choice.
 */
export type StepOutput =
  | { kind: 'hidden'; hidden: Float32Array }
  /**
   * the hidden states went to the next stage over a same-host link (`bytes`), or were `dropped`:
   * the link its fence's steps take broke
   */
  | { kind: 'forwarded'; bytes: number; dropped: boolean }
  /** `evaluated`: tokens the stage computed for them (more than the step's with a burst) */
  | { kind: 'tokens'; tokens: SampledToken[]; ends: boolean[]; evaluated: number }
  | { kind: 'empty' };

/** A step's samples, as the step that follows it takes them (RingTokens, or the stage's own). */
export interface RingSamples {
  /** seq -> its sample, and whether it ends the choice */
  tokens: Map<number, { token: number; ends: boolean }>;
  /** the step failed: what follows it drops its chained entries */
  failed: boolean;
}

/** The entries and tokens of a step after its first stage filled in (or dropped) its chained entries. */
export interface ChainedRewrite {
  entries: StepEntry[];
  tokens: number[];
}

/** The value each request answers with. */
export interface StageValues {
  /** `ringed`: the stage sent the samples to the first stage itself, over a same-host link */
  step: { output: StepOutput; ms: number; rewrite?: ChainedRewrite; ringed?: boolean } | { stale: true };
  seq: { posMax: number[] } | { stale: true };
  export: Uint8Array;
  posMax: number;
  import: { l0: number; l1: number; cells: number };
  memory: StageMemory;
}

/** A failure on the stage thread, by the name and code of the error thrown there. */
export interface StageFailure {
  /** the thrown error's class name (WorkerError, KvStateError, ...) */
  name: string;
  /** its code, or the wire code of a step's failure */
  code: string;
  message: string;
  /** a step's failure went to its first stage over a same-host link already */
  ringed?: boolean;
}

/** Messages from the stage thread. */
export type StageMessage =
  | { type: 'ready'; description: StageDescription; memory: StageMemory; snapshot: StageSnapshot }
  | { type: 'load_failed'; failure: StageFailure }
  /** a line for the worker's log, at warn */
  | { type: 'warn'; msg: string; fields: Record<string, unknown> }
  /** a step came over a same-host link: its reply will come with `id` (negative, the thread's own count) */
  | { type: 'linked'; id: number; header: StepHeader; trace: Record<string, string>; bytes: number }
  | { type: 'reply'; id: number; ok: true; value: unknown; snapshot: StageSnapshot }
  | { type: 'reply'; id: number; ok: false; failure: StageFailure; snapshot: StageSnapshot };

/** Whether fence `a` is older than `b` (then `a`'s work is stale); unfenced work never is. */
export function fenceOlder(a: Fence, b: Fence): boolean {
  if (a.term === 0n && a.generation === 0n) return false;
  return a.term < b.term || (a.term === b.term && a.generation < b.generation);
}

/**
 * The newest of the fence seen so far and `f`: `f` when it is newer. A stage starts at 0/0, which
 * the first fenced message raises (unfenced work never lowers or raises it).
 */
export function newestFence(seen: Fence, f: Fence): Fence {
  return f.term > seen.term || (f.term === seen.term && f.generation > seen.generation) ? { term: f.term, generation: f.generation } : seen;
}
