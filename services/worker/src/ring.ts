// The ring on a pipeline's first stage: a step planned while the one before it computed (it
// "follows" it) has chained entries, whose one token is the sample that step drew for their
// sequence. The samples come from the last stage (RingTokens over NATS), or from this stage itself
// when it is also the last; the step waits for them here, in its place in the stage's order,
// instead of a round trip through the coordinator. Entries whose sample ended their choice (an end
// of generation, a failure) or never came are dropped, exactly as the coordinator expects.
import type { RingTokensSchema, SampledToken, StepEntry, StepHeader, encode } from '@strata/wire';
import type { ChainedRewrite, RingSamples } from './stage-protocol.ts';

/** Samples kept for steps that may still be followed: far more than a pipeline has in flight. */
const KEEP = 64;

/**
 * Fills the chained entries of a step with `samples` (null: they never came) and drops those
 * whose sample ended its choice or is missing; the other entries and their tokens stay as they are.
 */
export function fillChained(entries: readonly StepEntry[], tokens: readonly number[], samples: RingSamples | null): ChainedRewrite {
  const out: ChainedRewrite = { entries: [], tokens: [] };
  let at = 0;
  for (const e of entries) {
    const own = tokens.slice(at, at + e.nTokens);
    at += e.nTokens;
    if (!e.chained) {
      out.entries.push(e);
      out.tokens.push(...own);
      continue;
    }
    const s = samples && !samples.failed ? samples.tokens.get(e.seq) : undefined;
    if (!s || s.ends || e.nTokens !== 1) continue;
    out.entries.push(e);
    out.tokens.push(s.token);
  }
  return out;
}

/** One sequence's sample as the ring carries it (RingToken on the wire). */
export interface RingSample {
  seq: number;
  token: number;
  ends: boolean;
}

/** A last stage's samples as the ring carries them; `ends[i]`: sample i ends its choice. */
export function ringEntries(tokens: readonly SampledToken[], ends: readonly boolean[]): RingSample[] {
  return tokens.map((t, i) => ({ seq: t.seq, token: t.token, ends: ends[i]! }));
}

/** A RingTokens message, as encode() takes it. */
export type RingMessage = Parameters<typeof encode<typeof RingTokensSchema>>[1];

/** The RingTokens of step `h`: its samples, or its failure (`error`, with no samples). */
export function ringMessage(h: StepHeader, tokens: readonly RingSample[], error: { code: string; message: string; workerId: string } | null): RingMessage {
  return { stepId: h.stepId, pipelineId: h.pipelineId, tokens: [...tokens], error: error ?? undefined, term: h.term, generation: h.generation, fenceProof: h.fenceProof };
}

/** A step's samples (none when it `failed`) as the step that follows it takes them. */
export function ringSamples(samples: readonly RingSample[], failed = false): RingSamples {
  return { tokens: new Map(samples.map((s) => [s.seq, { token: s.token, ends: s.ends }])), failed };
}

/** The samples of recent steps, and the one step waiting for some. */
export class RingBook {
  readonly #samples = new Map<bigint, RingSamples>();
  #waiter: { stepId: bigint; wake: () => void } | null = null;

  /** Keeps the samples of step `stepId` (wakes the step waiting for them). */
  record(stepId: bigint, samples: RingSamples): void {
    this.#samples.set(stepId, samples);
    if (this.#samples.size > KEEP) this.#samples.delete(this.#samples.keys().next().value!);
    if (this.#waiter?.stepId === stepId) this.#waiter.wake();
  }

  /**
   * The samples of step `stepId` once they are here; null when `gone()` says the waiting step no
   * longer matters (a newer fence), checked at each interrupt(), or after `timeoutMs`.
   */
  async wait(stepId: bigint, timeoutMs: number, gone: () => boolean): Promise<RingSamples | null> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const s = this.#samples.get(stepId);
      if (s) {
        this.#samples.delete(stepId);
        return s;
      }
      if (gone() || Date.now() >= until) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, until - Date.now());
        this.#waiter = { stepId, wake: () => {
          clearTimeout(timer);
          resolve();
        } };
      });
      this.#waiter = null;
    }
  }

  /** Wakes the waiting step to check whether it still matters. */
  interrupt(): void {
    this.#waiter?.wake();
  }
}
