// Prefill/decode disaggregation's hand-off: a request that a prefill pipeline computes the prompt
// of moves, KV and all, to a decode pipeline, which may be split at other layers or hold K/V in
// another type, and decodes the rest there. It starts with the request: a decode pipeline
// reserves the request's cells, and the prompt's KV is copied there chunk by chunk as the prefill
// pipeline's stages compute it (the pre-copy of a migration, here while it prefills); the request
// is held after its first token, the last chunk follows, and the decode pipeline adopts it. So
// the pause between its first and second token is one chunk's copy, whatever the prompt's
// length. It is a migration in all but three things: it copies while the request prefills
// instead of decodes, it is not recorded in the migration ledger (a hand-off is part of serving a
// request, like a step; it is counted in metrics instead), and it claims a session in Redis only
// when the request has one. Whatever fails before the switch leaves the request where it is: it
// decodes on its prefill pipeline, and its client sees no difference but the speed.
import { randomBytes } from 'node:crypto';
import { CoordinatorError } from './errors.ts';
import { pushRange, type MigrationSource, type MigrationTarget, type Push } from './migration.ts';
import { planMigration } from './migration-plan.ts';
import { isRequestKey } from './pipeline-core.ts';

/** What a hand-off needs from the coordinator. */
export interface HandOffDeps {
  /** carries out one push; the bytes sent (CoordinatorError when it fails) */
  push: (p: Push) => Promise<number>;
  /** takes a session for `pipeline` in Redis: the switch; its new epoch */
  claim: (session: string, pipeline: string) => Promise<number>;
}

/** Copies smaller than this wait for more of the prompt, until its first token (positions). */
export const MIN_COPY = 256;

/** How often a hand-off looks at how far its request's prefill has come (milliseconds). */
const POLL_MS = 20;

/** How a hand-off ended. */
export interface HandOffResult {
  /** done: decoding on `to`; stayed: decoding where it was prefilled; gone: it ended meanwhile */
  outcome: 'done' | 'stayed' | 'gone';
  /** the decode pipeline it went to ('' when it did not) */
  to: string;
  bytes: number;
  /** positions moved */
  positions: number;
  /** copies it took */
  rounds: number;
  /** from its first token to its adoption on `to` (milliseconds): what it adds between its first and second token */
  pauseMs: number;
  /** why it stayed */
  error: string;
}

/**
 * Moves the request (or session) `key`, which `src` starts prefilling now, to the first of
 * `targets` that has room for it (the caller orders them: least loaded first); `prefilled`
 * resolves once it has its first token and `src` holds it.
 */
export async function handOff(d: HandOffDeps, key: string, src: MigrationSource, targets: readonly MigrationTarget[], prefilled: Promise<void>): Promise<HandOffResult> {
  let tFirst = 0;
  const first = prefilled.then(() => void (tFirst = performance.now()));
  const result = (outcome: HandOffResult['outcome'], to = '', bytes = 0, positions = 0, rounds = 0, error = ''): HandOffResult =>
    ({ outcome, to, bytes, positions, rounds, pauseMs: tFirst ? performance.now() - tFirst : 0, error });
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
    return result('stayed', '', 0, 0, 0, targets.length === 0 ? 'no decode pipeline takes work' : refusals.join('; ') || 'every decode pipeline drains');
  }
  let switched = false;
  let bytes = 0, rounds = 0;
  try {
    const parts = planMigration(src.view.stages, dst.view.stages);
    const id = `h-${randomBytes(8).toString('hex')}`;
    const copy = async (p0: number, p1: number) => {
      bytes += await pushRange(d.push, parts, id, st.seq, seq, p0, p1);
      rounds++;
    };
    // What every stage has computed, as it computes it; the rest once the first token is out
    // (the request is held then: what the stages hold no longer changes).
    let sent = 0;
    for (;;) {
      const held = tFirst > 0;
      const now = src.place(key);
      if (!now) throw new CoordinatorError('not_found', `${key} ended during its hand-off`);
      if (now.done > sent && (held || now.done - sent >= MIN_COPY)) {
        await copy(sent, now.done);
        sent = now.done;
      } else if (held) {
        break;
      } else {
        await Promise.race([first, new Promise((r) => setTimeout(r, POLL_MS))]);
      }
    }
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
    return result('done', dst.view.id, bytes, sent, rounds);
  } catch (err) {
    if (!switched) {
      src.stay(key);
      await dst.cancel(seq).catch(() => {});
    }
    return result(src.place(key) ? 'stayed' : 'gone', '', 0, 0, rounds, err instanceof CoordinatorError ? `${err.code}: ${err.message}` : (err as Error).message);
  }
}
