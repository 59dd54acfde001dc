// A migration's decisions, pure: which source stage sends which layers to which target stage,
// and, round by round, whether to pre-copy more positions while the session decodes or to hold
// it and switch.
import type { StageInfo } from '@strata/wire';
import { CoordinatorError } from './errors.ts';

/** One source stage feeding one target stage with the layers both hold. */
export interface PlanPart {
  source: StageInfo;
  target: StageInfo;
  /** layers, half-open */
  l0: number;
  l1: number;
}

/** For every target stage, the source stages that hold its layers, and which layers each sends. */
export function planMigration(from: readonly StageInfo[], to: readonly StageInfo[]): PlanPart[] {
  const parts: PlanPart[] = [];
  for (const target of to) {
    for (const source of from) {
      const l0 = Math.max(source.l0, target.l0), l1 = Math.min(source.l1, target.l1);
      if (l0 < l1) parts.push({ source, target, l0, l1 });
    }
  }
  const covered = to.reduce((n, t) => n + (t.l1 - t.l0), 0);
  if (parts.reduce((n, p) => n + (p.l1 - p.l0), 0) !== covered) throw new CoordinatorError('bad_plan', 'the source pipeline does not hold every layer of the target');
  return parts;
}

/** Settings of the pre-copy. */
export interface RoundOptions {
  /** pre-copy rounds at most before the hold */
  maxRounds: number;
  /** a round that would send at most this many new positions goes straight to the hold */
  deltaPositions: number;
}

/** Where the pre-copy stands before a round. */
export interface RoundState {
  /** the round about to run, from 1 */
  round: number;
  /** positions [0, sent) are on the target already */
  sent: number;
  /** positions [0, end) every source stage holds now */
  end: number;
  /** the session still decodes (its positions grow between rounds) */
  decoding: boolean;
}

/** The next step of the pre-copy: copy positions [p0, p1), or hold the session and switch. */
export type RoundPlan = { copy: { p0: number; p1: number } } | { switch: true };

/**
 * Pre-copy while the session decodes: round 1 sends what every stage holds; each later round
 * sends what was written since, unless the session stopped decoding (nothing more will come), the
 * rounds ran out, or what is new is small enough to copy during the hold.
 */
export function planRound(s: RoundState, o: RoundOptions): RoundPlan {
  if (s.round > o.maxRounds) return { switch: true };
  if (s.round > 1 && (!s.decoding || s.end - s.sent <= o.deltaPositions)) return { switch: true };
  return { copy: { p0: s.sent, p1: s.end } };
}
