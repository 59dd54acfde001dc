// Continuous batching: which tokens of which jobs go into the next micro-batch. Decoding jobs
// come first (one token each, at most decodeCap of them so that several micro-batches can be in
// flight), then prefill chunks fill what is left, at most prefillChunk prompt tokens per
// micro-batch and, with a step budget while some session decodes, only as many as keep the
// micro-batch's predicted time within it, so a long prompt never stalls everyone's decoding. Pure.
import { isReady, nextPos, stopAt, type Job } from './job.ts';
import { workOf, type StepWork } from './step-cost.ts';

/** Prompt tokens a step budget lets through while a cost is known: at least this many, to make progress. */
export const MIN_PREFILL = 16;

/** One job's tokens in a micro-batch. */
export interface PlannedEntry {
  job: Job;
  tokens: number[];
  pos0: number;
  /** sample after the last token */
  output: boolean;
  /** its one token is the sample the step this one follows draws (tokens holds 0 for it) */
  chained?: boolean;
  /** the first stage dropped this chained entry: the sample it was to take ended its job */
  dropped?: boolean;
}

/** Limits of one micro-batch. */
export interface BatchLimits {
  /** tokens in a micro-batch at most (the workers' max batch) */
  maxBatch: number;
  /** prompt tokens in a micro-batch at most */
  prefillChunk: number;
  /** decoding jobs in a micro-batch at most */
  decodeCap: number;
  /**
   * the step budget: how many prompt tokens (up to `cap`) of a sequence at `pos0` may join a
   * micro-batch that already holds `fixed`; absent: `cap`
   */
  prefillWithin?: (fixed: StepWork, pos0: number, cap: number) => number;
  /**
   * decoding jobs are taken in sequence order (stages with one KV stream per sequence: nearby
   * sequences share an attention op), else in arrival order
   */
  bySeq?: boolean;
}

/**
 * Plans the next micro-batch from `jobs` (in arrival order); null when none is ready. A ready job
 * that must run alone (Job.alone) goes first, in a micro-batch of its own. `chained` jobs (see
 * {@link chainable}) come first, each with the one token the step they await samples.
 */
export function planMicroBatch(jobs: readonly Job[], l: BatchLimits, chained: readonly Job[] = []): PlannedEntry[] | null {
  const suspect = jobs.find((j) => j.alone && isReady(j));
  const pool = suspect ? [suspect] : jobs.some((j) => j.alone) ? jobs.filter((j) => !j.alone) : jobs;
  const entries: PlannedEntry[] = suspect ? [] : chained.slice(0, l.maxBatch).map((j) => ({ job: j, tokens: [0], pos0: nextPos(j), output: true, chained: true }));
  let used = entries.length;
  let decodes = entries.length;
  for (const j of l.bySeq ? [...pool].sort((a, b) => a.seq - b.seq) : pool) {
    if (!isReady(j) || j.fed < j.prompt.length || used >= l.maxBatch || decodes >= l.decodeCap) continue;
    entries.push({ job: j, tokens: [j.pending!], pos0: nextPos(j), output: true });
    used++;
    decodes++;
  }
  // The budget protects decoding sessions: with none, a prompt takes whole chunks.
  const within = jobs.some((j) => j.finish === null && j.fed >= j.prompt.length) ? l.prefillWithin : undefined;
  let prefill = 0;
  for (const j of pool) {
    if (!isReady(j) || j.fed >= j.prompt.length) continue;
    // (A checkpoint or a fork of its prompt is taken where every stage holds the positions before it.)
    const cap = Math.min(j.prompt.length - j.fed, l.maxBatch - used, l.prefillChunk - prefill, stopAt(j) - nextPos(j));
    if (cap <= 0) break;
    const fixed = workOf(entries.map((e) => ({ tokens: e.tokens.length, pos0: e.pos0 })));
    const n = within ? Math.max(within(fixed, nextPos(j), cap), Math.min(cap, prefill === 0 ? MIN_PREFILL : 0)) : cap;
    if (n <= 0) break;
    entries.push({ job: j, tokens: j.prompt.slice(j.fed, j.fed + n), pos0: nextPos(j), output: j.fed + n === j.prompt.length });
    used += n;
    prefill += n;
  }
  return entries.length > 0 ? entries : null;
}

/**
 * Whether a step may follow the in-flight one whose entry `e` samples for its job, taking that
 * sample on the stages: the job runs on here (not finishing, cancelled, held, to be handed off or alone), nothing
 * already follows that sample, and the sample cannot be its last by length.
 */
export function chainable(e: PlannedEntry): boolean {
  const j = e.job;
  return e.output && !e.dropped && j.finish === null && !j.cancelled && !j.held && !j.handOff && !j.alone && j.awaitingToken && j.chained === 0 &&
    j.fed >= j.prompt.length && j.generated.length + 1 < j.maxTokens;
}

/** Marks the planned tokens as sent. */
export function applyPlan(entries: readonly PlannedEntry[]): void {
  for (const e of entries) {
    const j = e.job;
    if (e.chained) {
      j.pos++;
      j.inflight++;
      j.chained++;
      continue;
    }
    if (j.fed < j.prompt.length) j.fed += e.tokens.length;
    else j.pending = null;
    j.pos += e.tokens.length;
    j.inflight++;
    if (e.output) j.awaitingToken = true;
  }
}

/** Decoding jobs per micro-batch so that `depth` micro-batches share `active` jobs. */
export function decodeCap(active: number, depth: number): number {
  return Math.max(1, Math.ceil(active / Math.max(1, depth)));
}
