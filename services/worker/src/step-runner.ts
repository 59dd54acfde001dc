// Runs micro-batches on a stage (on the worker's stage thread): checks a step against what this worker is, evaluates it, and on
// the last stage samples each entry that asks for a token.
import { KvCacheFullError, ModelError, type Stage } from '@strata/model';
import type { SampledToken, SeqOp, StepHeader } from '@strata/wire';
import { SeqOpKind } from '@strata/wire';
import { WorkerError } from './errors.ts';
import { EmbeddingPools } from './pooling.ts';
import type { SamplerSet } from './samplers.ts';
import type { StepOutput } from './stage-protocol.ts';

/** Evaluations in one decode burst at most (StepHeader.burst). */
export const MAX_BURST = 32;

/** Options of a {@link StepRunner}. */
export interface StepRunnerOptions {
  workerId: string;
  /** sequence ids are [0, nSeqMax) */
  nSeqMax: number;
  /** most tokens in one micro-batch */
  maxBatch: number;
}

/** Evaluates steps and sequence operations on one stage. */
export class StepRunner {
  readonly stage: Stage;
  readonly #samplers: SamplerSet | null;
  /** embedding requests' pooled states (last stage) */
  readonly #pools: EmbeddingPools;
  readonly #o: StepRunnerOptions;

  constructor(stage: Stage, samplers: SamplerSet | null, options: StepRunnerOptions) {
    if (stage.isLast !== (samplers !== null)) throw new Error('a last stage needs samplers, and only it');
    this.stage = stage;
    this.#samplers = samplers;
    this.#pools = new EmbeddingPools(stage.hp.nEmbd, stage.hp.pooling);
    this.#o = options;
  }

  /**
   * Runs one micro-batch on this thread (its graph computes here: see below); a step that does not
   * fit this stage throws WorkerError('bad_step').
   */
  run(h: StepHeader, hidden: Float32Array): StepOutput {
    const { stage } = this;
    const bad = (why: string) => new WorkerError('bad_step', `step ${h.stepId}: ${why}`);
    if (h.route[h.hop] !== this.#o.workerId) throw bad(`routed to '${h.route[h.hop] ?? ''}', this is '${this.#o.workerId}'`);
    let n = 0;
    for (const e of h.entries) {
      if (e.seq >= this.#o.nSeqMax) throw bad(`seq ${e.seq} is not below ${this.#o.nSeqMax}`);
      if (e.nTokens < 1) throw bad('an entry without tokens');
      n += e.nTokens;
    }
    if (n < 1 || n > this.#o.maxBatch) throw bad(`${n} tokens; a micro-batch holds 1 to ${this.#o.maxBatch}`);
    if (stage.isFirst ? h.tokens.length !== n : hidden.length !== n * stage.hp.nEmbd) {
      throw bad(stage.isFirst ? `${h.tokens.length} tokens for entries of ${n}` : `${hidden.length} activations for ${n} tokens of ${stage.hp.nEmbd}`);
    }
    if (stage.isFirst) for (const t of h.tokens) if (t < 0 || t >= stage.hp.nVocab) throw bad(`token ${t} outside the vocabulary`);
    if (h.burst > 1) {
      if (!stage.isFirst || !stage.isLast) throw bad('a decode burst needs a one-stage pipeline');
      if (h.burst > MAX_BURST) throw bad(`a burst of ${h.burst} steps; at most ${MAX_BURST}`);
      if (h.entries.some((e) => e.nTokens !== 1 || !e.output || e.embed)) throw bad('a decode burst holds decoding entries only (one token each, sampled)');
      if (new Set(h.entries.map((e) => e.seq)).size !== h.entries.length) throw bad('a decode burst holds each sequence once');
    }
    const pos = new Int32Array(n), seq = new Int32Array(n);
    const outputs: number[] = [], embed: number[] = [];
    let i = 0;
    for (const e of h.entries) {
      if (stage.isLast && e.embed && e.pos0 === 0) this.#pools.reset(e.seq);
      for (let t = 0; t < e.nTokens; t++, i++) {
        pos[i] = e.pos0 + t;
        seq[i] = e.seq;
        if (e.embed) embed.push(i);
      }
      if (e.output && !e.embed) outputs.push(i - 1);
      if (stage.isLast && e.sampling) this.#samplers!.reset(e.seq, e.sampling, e.replay);
      if (stage.isLast && e.output && !this.#samplers!.has(e.seq)) throw bad(`seq ${e.seq} asks for a token but has no sampling settings`);
    }
    // A step of prompt chunks only samples nothing; the last stage still computes one row of
    // logits (a stage outputs at least one token) and drops it: one row of the head, next to a
    // chunk's worth of layers.
    // Every step computes here, on the stage thread, never on a pool thread:
    // with ggml's OpenMP threads, each thread that starts a graph gets a team of its own, and
    // once a process holds more OpenMP threads than CPUs, libgomp stops spinning at barriers and
    // sleeps at each one instead. One long step on a pool thread made every later decode step
    // about 1.5 times slower (docs/benchmarks.md, "One OpenMP team"). Exports wait for the step.
    const out = stage.eval({
      tokens: stage.isFirst ? Int32Array.from(h.tokens) : undefined,
      hidden: stage.isFirst ? undefined : hidden,
      pos,
      seq,
      outputs: stage.isLast ? Int32Array.from(outputs.length > 0 || embed.length > 0 ? outputs : [n - 1]) : undefined,
      embed: stage.isLast && embed.length > 0 ? Int32Array.from(embed) : undefined,
    });
    if (!stage.isLast) return { kind: 'hidden', hidden: out };
    const { nVocab, nEmbd } = stage.hp;
    const embeddings = stage.embeddings;
    const tokens: SampledToken[] = [];
    let o = 0, r = 0;
    for (const e of h.entries) {
      if (e.embed) {
        this.#pools.add(e.seq, embeddings.subarray(r * nEmbd, (r + e.nTokens) * nEmbd));
        r += e.nTokens;
        if (e.output) tokens.push({ $typeName: 'strata.v1.SampledToken', seq: e.seq, token: 0, eog: true, logprob: 0, top: [], embedding: this.#pools.finish(e.seq) });
        continue;
      }
      if (!e.output) continue;
      tokens.push(this.#samplers!.sample(e.seq, out.subarray(o * nVocab, (o + 1) * nVocab)));
      o++;
    }
    const ends = tokens.map((t) => this.#samplers!.ends(t));
    if (h.burst > 1) return this.#burst(h, tokens, ends, n);
    return { kind: 'tokens', tokens, ends, evaluated: n };
  }

  /**
   * The rest of a decode burst after its first evaluation (`tokens`, one sample per entry): every
   * entry whose last sample did not end its choice is fed that sample, one position on, and
   * sampled again, up to `h.burst` evaluations in all.
   */
  #burst(h: StepHeader, first: SampledToken[], firstEnds: boolean[], evaluated: number): StepOutput {
    const { stage } = this;
    const nVocab = stage.hp.nVocab;
    const tokens = [...first], ends = [...firstEnds];
    let live = h.entries.map((e, i) => ({ seq: e.seq, pos: e.pos0 + 1, last: first[i]!, ends: firstEnds[i]! }));
    for (let k = 1; k < h.burst; k++) {
      live = live.filter((x) => !x.ends);
      if (live.length === 0) break;
      const n = live.length;
      const out = stage.eval({
        tokens: Int32Array.from(live.map((x) => x.last.token)), pos: Int32Array.from(live.map((x) => x.pos)), seq: Int32Array.from(live.map((x) => x.seq)),
        outputs: Int32Array.from(live.map((_, i) => i)),
      });
      evaluated += n;
      live.forEach((x, i) => {
        x.last = this.#samplers!.sample(x.seq, out.subarray(i * nVocab, (i + 1) * nVocab));
        x.ends = this.#samplers!.ends(x.last);
        x.pos++;
        tokens.push(x.last);
        ends.push(x.ends);
      });
    }
    return { kind: 'tokens', tokens, ends, evaluated };
  }

  /** Applies sequence operations in order; returns each op's sequence's highest position after it. */
  seqOps(ops: SeqOp[]): number[] {
    const { cache } = this.stage;
    for (const op of ops) {
      if (op.seq >= this.#o.nSeqMax || (op.kind === SeqOpKind.COPY && op.dst >= this.#o.nSeqMax)) {
        throw new WorkerError('bad_request', `seq op on seq ${op.seq}/${op.dst}: ids are below ${this.#o.nSeqMax}`);
      }
    }
    return ops.map((op) => {
      switch (op.kind) {
        case SeqOpKind.REMOVE:
          if (!cache.seqRemove(op.seq, op.p0, op.p1)) throw new WorkerError('bad_request', `seq ${op.seq}: cannot remove [${op.p0}, ${op.p1}) from the middle of a sequence`);
          if (op.p0 < 0 && op.p1 < 0) {
            this.#samplers?.drop(op.seq);
            this.#pools.drop(op.seq);
          }
          break;
        case SeqOpKind.COPY:
          cache.seqCopy(op.seq, op.dst, op.p0, op.p1);
          break;
        case SeqOpKind.KEEP:
          cache.seqKeep(op.seq);
          break;
        case SeqOpKind.ADD:
          cache.seqAdd(op.seq, op.p0, op.p1, op.delta);
          break;
        case SeqOpKind.DIVIDE:
          if (op.delta < 1) throw new WorkerError('bad_request', `seq ${op.seq}: divide by ${op.delta}`);
          cache.seqDivide(op.seq, op.p0, op.p1, op.delta);
          break;
        default:
          throw new WorkerError('bad_request', `unknown seq op kind ${op.kind}`);
      }
      return cache.seqPosMax(op.seq);
    });
  }
}

/** The wire error code of a failure while running a step. */
export function stepErrorCode(err: unknown): string {
  if (err instanceof WorkerError) return err.code;
  if (err instanceof KvCacheFullError) return 'kv_full';
  if (err instanceof ModelError && err.code === 'bad_input') return 'bad_step';
  return 'stage_failed';
}
