// Decode bursts (vLLM's multi-step decoding), on one-stage pipelines: when every job is decoding
// and nothing waits, one step asks the stage to decode its jobs several tokens each, feeding each
// sample back as the next token itself (StepHeader.burst); one message each way, and one event per
// job, carry all of them. What a token costs outside the compute (the coordinator's turn, NATS,
// the gateway) is paid once per burst instead of once per token, which on a host whose cores the
// compute threads fill is time taken from the compute. A burst lasts about
// PipelineOptions.decodeBurstMs (the stage's predicted step time tells how many tokens fit), so
// work that arrives meanwhile waits at most that long. Pure.
import type { PlannedEntry } from './batcher.ts';
import type { PipelineCore } from './pipeline-state.ts';
import { workOf } from './step-cost.ts';

/** Tokens per job in one burst at most (the worker takes up to 32). */
export const MAX_BURST = 16;

/**
 * How many evaluations the step `plan` should run on the stage (1: a plain step): a burst when
 * bursts are on, the pipeline has one stage, the plan decodes every job there is and nothing else
 * waits, and the stage's predicted time for the step lets at least two fit in the budget; never
 * more than any of its jobs may still sample.
 */
export function burstOf(c: PipelineCore, plan: readonly PlannedEntry[]): number {
  if (!burstsNow(c)) return 1;
  const budget = c.options.decodeBurstMs!;
  const live = c.jobs.filter((j) => j.finish === null);
  if (plan.length !== live.length) return 1;
  let room = MAX_BURST;
  for (const e of plan) {
    const j = e.job;
    if (e.chained || e.tokens.length !== 1 || !e.output || j.fed < j.prompt.length || j.alone || j.handOff || j.held || j.cancelled || j.sampling.embed) return 1;
    room = Math.min(room, j.maxTokens - j.generated.length);
  }
  const stepMs = c.costs.predict(c.route, workOf(plan.map((e) => ({ tokens: 1, pos0: e.pos0 }))));
  if (stepMs === null || stepMs <= 0) return 1;
  const k = Math.min(room, Math.floor(budget / stepMs));
  return k >= 2 ? k : 1;
}

/**
 * Whether the pipeline decodes in bursts now (one stage, bursts on, nothing waiting): its next
 * decoding step is then planned when the one in flight is back, as a burst, rather than chained
 * behind it (overlapped steps).
 */
export function burstsNow(c: PipelineCore): boolean {
  return (c.options.decodeBurstMs ?? 0) > 0 && c.view.stages.length === 1 && c.waiting.length + c.rebuilds.length + c.moving.size + c.holding.size === 0;
}

/** A burst's samples, per sequence in the order drawn. */
export function samplesBySeq<T extends { seq: number }>(tokens: readonly T[]): Map<number, T[]> {
  const out = new Map<number, T[]>();
  for (const t of tokens) {
    const list = out.get(t.seq);
    if (list) list.push(t);
    else out.set(t.seq, [t]);
  }
  return out;
}
