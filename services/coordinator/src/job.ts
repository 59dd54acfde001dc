// A job: one choice of one request on one sequence of a pipeline (a request of n choices runs n
// jobs; a session's request runs one, on the sequence the session keeps). It is fed prompt tokens
// (in chunks) and then its own samples, and decides when it is done. Pure: the pipeline's core
// (pipeline-core.ts) runs it and carries out the effects.
import { FinishReason, type SampledToken, type Sampling } from '@strata/wire';
import type { PrefixNode } from './prefix-tree.ts';

/** One choice of a request, as it moves through a pipeline. */
export interface Job {
  requestId: string;
  /** choice index */
  index: number;
  /** '' for a one-off sequence, else the session whose cells stay for its next turn */
  sessionId: string;
  /** sequence id on every stage of the pipeline */
  seq: number;
  /** tokens to evaluate before sampling: the prompt after what the cache already holds */
  prompt: number[];
  /** position of prompt[0] (tokens already in the cache) */
  pos0: number;
  /** prompt tokens sent to the pipeline */
  fed: number;
  /** position of the next token sent */
  pos: number;
  sampling: Sampling;
  /** sampling settings travel with the first entry that asks for a token */
  samplerSent: boolean;
  maxTokens: number;
  generated: SampledToken[];
  /** last sampled token, not yet evaluated */
  pending: number | null;
  /** a micro-batch that will sample this job is in flight */
  awaitingToken: boolean;
  /** micro-batches in flight holding this job's tokens */
  inflight: number;
  /**
   * entries in flight that feed the sample awaited now, before it came back (0 or 1): a step
   * planned while the one that samples it computes (PipelineOptions.overlap)
   */
  chained: number;
  /** not ready: its sequence operations and session claim are under way, or it is moving */
  held: boolean;
  /** position after the last token whose step came back: what every stage holds for sure */
  done: number;
  /** tokens sampled for this request before it moved here, replayed into the new sampler */
  replay: number[];
  /** generated tokens that are also at the end of `prompt` (a job rebuilt by re-prefill) */
  inPrompt: number;
  cancelled: boolean;
  /**
   * it was in a step that took a pipeline down: its micro-batches carry nothing else, so that a
   * second failure is its own and not its neighbours'
   */
  alone: boolean;
  finish: FinishReason | null;
  /** failure code and message when finish is ERROR */
  error: { code: string; message: string } | null;
  /** the prefix-cache node its sequence shares positions [0, shared) with (prefix-tree.ts), or null */
  prefix: PrefixNode | null;
  /** positions shared with the prefix cache: its cells are the cache's, not reserved by the job */
  shared: number;
  /** the prefix-cache node this job computes (its prompt, for later prompts to share), or null */
  grown: PrefixNode | null;
  /** held after its first sample, for a decode pipeline to take its KV and go on (disaggregation) */
  handOff: boolean;
  /**
   * a checkpoint of its prompt for the prefix cache (prefix-checkpoint.ts): once every stage holds
   * positions [0, at), they are copied into cache sequence `seq` (while `copying`, the job waits)
   */
  checkpoint: { at: number; seq: number; copying: boolean } | null;
  /**
   * the first choice of a request whose choices share its prompt (choice-fork.ts): once every
   * stage holds positions [pos0, at), they are copied into the other choices' sequences (it waits
   * at `at` until then)
   */
  fork: { at: number; copying: boolean } | null;
  /** another choice of such a request: not ready until the first one's fork is copied (or dropped) */
  forkWait: boolean;
}

/** What a job asks the runtime to do after a transition. */
export type JobEffect =
  | { type: 'emit'; token: SampledToken }
  | { type: 'finish'; reason: FinishReason };

/** Messages a job takes. */
export type JobMsg =
  /** `fedAhead`: a step in flight already feeds this sample (a chained entry), and samples the next */
  | { type: 'sampled'; token: SampledToken; fedAhead?: boolean }
  | { type: 'cancel' }
  | { type: 'failed'; code: string; message: string };

/** A new job. */
export function newJob(init: Pick<Job, 'requestId' | 'index' | 'sessionId' | 'seq' | 'prompt' | 'pos0' | 'sampling' | 'maxTokens'>): Job {
  if (init.prompt.length === 0) throw new Error('a job needs at least one token to evaluate');
  return { ...init, fed: 0, pos: init.pos0, samplerSent: false, generated: [], pending: null, awaitingToken: false, inflight: 0, chained: 0, held: false, done: init.pos0, replay: [], inPrompt: 0, cancelled: false, alone: false, finish: null, error: null, prefix: null, shared: 0, grown: null, handOff: false, checkpoint: null, fork: null, forkWait: false };
}

/** Position of the next token the job will feed. */
export function nextPos(j: Job): number {
  return j.pos;
}

/** Whether the job has tokens to send now. */
export function isReady(j: Job): boolean {
  return j.finish === null && !j.cancelled && !j.held && !j.awaitingToken && !j.forkWait && (j.fed < j.prompt.length || j.pending !== null) && j.pos < stopAt(j);
}

/**
 * Where the job stops feeding until its positions before that point are copied (its checkpoint's
 * or its fork's), or Infinity.
 */
export function stopAt(j: Job): number {
  return Math.min(j.checkpoint?.at ?? Infinity, j.fork?.at ?? Infinity);
}

/** Whether every stage holds the job's positions before `at`, with nothing of it in flight: a copy of them may start. */
export function copyReady(j: Job, at: number): boolean {
  return j.done >= at && j.inflight === 0 && j.finish === null;
}

/** Tokens the job's sequence will hold at most when it ends. */
export function cellsNeeded(j: Job): number {
  return j.pos0 + j.prompt.length + j.maxTokens - j.inPrompt;
}

/** Cells the job reserves: what its sequence will hold, less what it shares with the prefix cache. */
export function ownCells(j: Job): number {
  return cellsNeeded(j) - j.shared;
}

/** The job actor's transition. The job is updated in place. */
export function jobTransition(j: Job, msg: JobMsg): JobEffect[] {
  if (j.finish !== null) return [];
  const finish = (reason: FinishReason): JobEffect => {
    j.finish = reason;
    return { type: 'finish', reason };
  };
  switch (msg.type) {
    case 'sampled': {
      j.generated.push(msg.token);
      j.awaitingToken = msg.fedAhead === true;
      j.pending = msg.fedAhead ? null : msg.token.token;
      const fx: JobEffect[] = [{ type: 'emit', token: msg.token }];
      if (msg.token.eog && !j.sampling.ignoreEos) fx.push(finish(FinishReason.STOP));
      else if (j.generated.length >= j.maxTokens) fx.push(finish(FinishReason.LENGTH));
      else if (j.cancelled) fx.push(finish(FinishReason.CANCELLED));
      return fx;
    }
    case 'cancel':
      j.cancelled = true;
      // One in flight: its token is dropped with the job when it lands.
      return j.inflight === 0 || !j.awaitingToken ? [finish(FinishReason.CANCELLED)] : [];
    case 'failed':
      j.error = { code: msg.code, message: msg.message };
      j.awaitingToken = false;
      return [finish(FinishReason.ERROR)];
  }
}

/** Tokens the job's sequence holds in the cache once it is done and nothing is in flight. */
export function cachedTokens(j: Job): number[] {
  // The last sample was never evaluated; what was fed is in the cache (samples a rebuilt job
  // fed as prompt are in the prompt already).
  const gen = j.generated.map((t) => t.token);
  const evaluated = gen.slice(j.inPrompt, Math.max(j.inPrompt, gen.length - (j.pending === null ? 0 : 1)));
  return [...j.prompt.slice(0, j.fed), ...evaluated];
}

/** What the job's sequence holds past its prompt once it is done: the samples it fed (none while its prompt is not all in). */
export function fedSamples(j: Job): number[] {
  return j.fed < j.prompt.length ? [] : cachedTokens(j).slice(j.prompt.length);
}

/**
 * Turns a job whose cells were lost (its pipeline went down) into one that rebuilds them by
 * prefilling everything its sequence held, and every token it sampled, from position 0: its next
 * sample follows the last one its client saw, from a sampler that replays them.
 */
export function rebuildJob(j: Job, prefix: readonly number[]): void {
  const gen = j.generated.map((t) => t.token);
  j.prompt = [...prefix, ...j.prompt, ...gen.slice(j.inPrompt)];
  j.inPrompt = gen.length;
  j.pos0 = 0;
  j.fed = 0;
  j.pos = 0;
  j.done = 0;
  j.pending = null;
  j.awaitingToken = false;
  j.inflight = 0;
  j.chained = 0;
  j.samplerSent = false;
  j.replay = gen;
  j.held = false;
  j.prefix = null;
  j.shared = 0;
  j.grown = null;
  j.handOff = false;
  j.checkpoint = null;
  j.fork = null;
  j.forkWait = false;
}
