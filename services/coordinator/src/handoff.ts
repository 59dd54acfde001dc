// Prefill/decode disaggregation's hand-off: a request that a prefill pipeline computed the prompt
// of (and sampled its first token from) moves, KV and all, to a decode pipeline, which may be split
// at other layers or hold K/V in another type, and decodes the rest there. It is a migration of a
// held request: the same plan by layer overlap, the same pushes between stages (KvTransfer), the
// same two ports of each pipeline (migration.ts); but one round (the request does not decode
// while it moves), no record in the migration ledger (a hand-off is part of serving a request,
// like a step: a request's KV is not worth three Redis writes), and a session's claim only when
// the request has one. Whatever fails before the switch leaves the request where it is: it
// decodes on its prefill pipeline, and its client sees no difference but the speed.
import { randomBytes } from 'node:crypto';
import { CoordinatorError } from './errors.ts';
import type { MigrationSource, MigrationTarget, Push } from './migration.ts';
import { planMigration } from './migration-plan.ts';
import { isRequestKey } from './pipeline-core.ts';

/** What a hand-off needs from the coordinator. */
export interface HandOffDeps {
  /** carries out one push; the bytes sent (CoordinatorError when it fails) */
  push: (p: Push) => Promise<number>;
  /** takes a session for `pipeline` in Redis: the switch; its new epoch */
  claim: (session: string, pipeline: string) => Promise<number>;
}

/** How a hand-off ended. */
export interface HandOffResult {
  /** done: decoding on `to`; stayed: decoding where it was prefilled; gone: it ended meanwhile */
  outcome: 'done' | 'stayed' | 'gone';
  /** the decode pipeline it went to ('' when it did not) */
  to: string;
  bytes: number;
  /** positions moved */
  positions: number;
  /** from its first token to its adoption on `to` (milliseconds) */
  pauseMs: number;
  /** why it stayed */
  error: string;
}

/**
 * Moves the held request (or session) `key` from `src` to the first of `targets` that has room
 * for it (the caller orders them: least loaded first).
 */
export async function handOff(d: HandOffDeps, key: string, src: MigrationSource, targets: readonly MigrationTarget[]): Promise<HandOffResult> {
  const t0 = performance.now();
  const result = (outcome: HandOffResult['outcome'], to = '', bytes = 0, positions = 0, error = ''): HandOffResult => ({ outcome, to, bytes, positions, pauseMs: performance.now() - t0, error });
  const st = src.place(key);
  if (!st) return result('gone');
  src.begin(key);
  let dst: MigrationTarget | null = null;
  let seq = -1;
  const refusals: string[] = [];
  for (const t of targets) {
    if (t.draining()) continue;
    try {
      seq = await t.reserve(st.cells);
      dst = t;
      break;
    } catch (err) {
      refusals.push((err as Error).message);
    }
  }
  if (!dst) {
    src.stay(key);
    return result('stayed', '', 0, 0, targets.length === 0 ? 'no decode pipeline takes work' : refusals.join('; ') || 'every decode pipeline drains');
  }
  let switched = false;
  try {
    // Held since its first token: what every stage holds does not change while it moves.
    const parts = planMigration(src.view.stages, dst.view.stages);
    const id = `h-${randomBytes(8).toString('hex')}`;
    const sent = await Promise.all(parts.map((part) => d.push({ migrationId: id, part, seq: st.seq, targetSeq: seq, p0: 0, p1: st.done })));
    const bytes = sent.reduce((a, b) => a + b, 0);
    if (src.place(key)?.done !== st.done) throw new CoordinatorError('not_found', `${key} ended or changed during its hand-off`);
    if (dst.draining()) throw new CoordinatorError('pipeline_draining', `pipeline ${dst.view.id} began draining during the hand-off`);
    const epoch = isRequestKey(key) ? 0 : await d.claim(key, dst.view.id);
    const moved = src.handOver(key);
    switched = true;
    // (A client that cancelled while the claim was awaited: nothing is left to decode.)
    if (!moved.job && isRequestKey(key)) {
      await dst.cancel(seq);
      return result('gone');
    }
    dst.adopt(key, seq, moved, epoch);
    return result('done', dst.view.id, bytes, st.done);
  } catch (err) {
    if (!switched) {
      src.stay(key);
      await dst.cancel(seq).catch(() => {});
    }
    return result(src.place(key) ? 'stayed' : 'gone', '', 0, 0, err instanceof CoordinatorError ? `${err.code}: ${err.message}` : (err as Error).message);
  }
}
