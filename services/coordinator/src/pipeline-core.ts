// The core of one pipeline, in the style of vLLM v1's scheduler: it does no I/O. Everything that
// happens to the pipeline is a message, `transition(core, message, now)` changes the core and
// returns the effects for the runtime (scheduler.ts) to carry out, in order: steps to send,
// sequences to prepare or empty, history to write, events for gateways. What the runtime learns
// from carrying them out (a step's result, a sequence emptied, a session claimed) comes back as
// further messages. After every message the core settles: it retires finished jobs, starts queued
// requests while the room allows, and sends micro-batches while fewer than one per stage are in
// flight.
//
// The pieces: pipeline-state.ts (the state, effects and queries), pipeline-admission.ts (admit,
// resume, rebuild, prepare), pipeline-steps.ts (micro-batches, results, retire, cancel, the
// deadline), pipeline-moves.ts (a migration's two sides, down, abandon), prefix-checkpoint.ts
// (checkpoints of prompts where caches share only at ends); the room is seq-room.ts.
import type { GenerateRequest, StepResult } from '@strata/wire';
import { admit, offloaded, prepareFailed, prepared, resume, startWaiting } from './pipeline-admission.ts';
import { abandon, adopt, beginMove, down, handOver, hold, reserve, stay, unreserve } from './pipeline-moves.ts';
import { checkpointed } from './prefix-checkpoint.ts';
import { forked } from './choice-fork.ts';
import { settleHolds, type Blame, type MovedSession, type PipelineCore, type PipelineEffect, type Rebuild } from './pipeline-state.ts';
import { cancel, pump, retireFinished, stalled, stepResult } from './pipeline-steps.ts';

export { commonPrefix } from './pipeline-admission.ts';
export {
  isRequestKey, jobOf, knows, load, oneOff, openPipeline, queued, requestKey, sessionAt, sessionIds, sessionViews,
  type Admission, type Blame, type MovedSession, type PipelineCore, type PipelineEffect, type PipelineOptions, type Rebuild, type SessionView,
} from './pipeline-state.ts';

/** What can happen to a pipeline. */
export type PipelineMsg =
  /** every sequence of the stages was emptied (the answer to 'empty'): work may start */
  | { type: 'emptied' }
  /** a new request (answered by a 'reply' effect); `handOff`: hold it after its first token for a decode pipeline to take */
  | { type: 'admit'; req: GenerateRequest; handOff?: boolean }
  /** a request a previous leader accepted, to go on from what its client has (answered by 'reply') */
  | { type: 'resume'; req: GenerateRequest }
  /** a request whose pipeline went down, to rebuild here */
  | { type: 'rebuild'; rebuild: Rebuild }
  /** a client gave up on choices `indices` (all when empty) of a request */
  | { type: 'cancel'; requestId: string; indices: readonly number[] }
  /** a request's sequences are ready (the answer to 'prepare'; `session` claimed at `epoch`) */
  | { type: 'prepared'; requestId: string; session: string; epoch: number }
  /** a request's sequences could not be made ready */
  | { type: 'prepare_failed'; requestId: string; code: string; message: string }
  /** the answer to a step */
  | { type: 'step_result'; result: StepResult }
  /** a sequence was emptied (`ok`), or its emptying failed (the answer to 'drop_seq') */
  | { type: 'dropped'; seq: number; ok: boolean }
  /** a job's checkpoint was copied (`ok`), or not (the answer to 'checkpoint') */
  | { type: 'checkpointed'; requestId: string; index: number; seq: number; ok: boolean }
  /** a request's prompt was copied into its other choices' sequences (`ok`), or not (the answer to 'fork') */
  | { type: 'forked'; requestId: string; at: number; ok: boolean }
  /** a cache sequence was trimmed (`ok`), or its trim failed (the answer to 'trim_seq') */
  | { type: 'trimmed'; seq: number; ok: boolean }
  /** a while after a failed trim: ask it again, if the sequence still waits for it */
  | { type: 'retry_trim'; seq: number }
  /** a session was saved to every stage's tiers (`ok`), or not (the first answer to 'offload') */
  | { type: 'offloaded'; session: string; key: string; ok: boolean }
  /** time passes: a step past its deadline is reported ('stalled') */
  | { type: 'tick' }
  /** the pipeline went away; `blame`: whose requests count a failure for it */
  | { type: 'down'; reason: string; blame: Blame }
  /** another coordinator leads: drop everything without a word */
  | { type: 'abandon' }
  /** a migration's source side: the session starts moving, is held, stays, or is handed over ('handed_over') */
  | { type: 'begin_move'; session: string }
  | { type: 'hold'; session: string }
  | { type: 'stay'; session: string }
  | { type: 'hand_over'; session: string }
  /** a migration's target side: a sequence and cells reserved ('reserved'), the session adopted, or the reservation given up */
  | { type: 'reserve'; cells: number }
  | { type: 'adopt'; session: string; seq: number; moved: MovedSession; epoch: number }
  | { type: 'unreserve'; seq: number };

/** The pipeline's transition: changes `c` in place and returns the effects to carry out, in order. */
export function transition(c: PipelineCore, msg: PipelineMsg, now: number): PipelineEffect[] {
  const fx: PipelineEffect[] = [];
  switch (msg.type) {
    case 'emptied':
      c.clean = true;
      break;
    case 'admit':
      fx.push({ type: 'reply', reply: admit(c, fx, msg.req, now, msg.handOff) });
      break;
    case 'resume':
      fx.push({ type: 'reply', reply: resume(c, fx, msg.req) });
      break;
    case 'rebuild':
      c.rebuilds.push(msg.rebuild);
      break;
    case 'cancel':
      cancel(c, fx, msg.requestId, msg.indices);
      break;
    case 'prepared':
      if (c.down) return fx;
      prepared(c, msg.requestId, msg.session, msg.epoch);
      break;
    case 'prepare_failed':
      if (c.down) return fx;
      prepareFailed(c, fx, msg.requestId, msg.code, msg.message);
      break;
    case 'step_result':
      stepResult(c, fx, msg.result, now);
      settleHolds(c, fx);
      break;
    case 'dropped':
      if (c.down) return fx;
      c.room.released(msg.seq, msg.ok);
      break;
    case 'checkpointed':
      if (c.down) return fx;
      checkpointed(c, fx, msg.requestId, msg.index, msg.seq, msg.ok, now);
      break;
    case 'forked':
      if (c.down) return fx;
      forked(c, fx, msg.requestId, msg.at, msg.ok);
      break;
    case 'trimmed':
      if (c.down) return fx;
      c.room.trimmed(msg.seq, msg.ok);
      break;
    case 'retry_trim': {
      if (c.down) return fx;
      const keepTo = c.room.retryTrim(msg.seq);
      if (keepTo !== null) fx.push({ type: 'trim_seq', seq: msg.seq, keepTo });
      break;
    }
    case 'offloaded':
      if (c.down) return fx;
      offloaded(c, fx, msg.session, msg.key, msg.ok);
      break;
    case 'tick': {
      // A tick changes nothing: it only looks at the oldest step.
      const why = stalled(c, now);
      if (why) fx.push({ type: 'stalled', why });
      return fx;
    }
    case 'down':
      down(c, fx, msg.reason, msg.blame, now);
      return fx;
    case 'abandon':
      abandon(c, fx);
      return fx;
    case 'begin_move':
      beginMove(c, msg.session);
      break;
    case 'hold':
      hold(c, fx, msg.session);
      break;
    case 'stay':
      stay(c, msg.session);
      break;
    case 'hand_over':
      fx.push({ type: 'handed_over', moved: handOver(c, fx, msg.session, now) });
      break;
    case 'reserve':
      fx.push({ type: 'reserved', seq: reserve(c, fx, msg.cells) });
      break;
    case 'adopt':
      adopt(c, msg.session, msg.seq, msg.moved, msg.epoch, now);
      break;
    case 'unreserve':
      unreserve(c, fx, msg.seq);
      break;
  }
  settle(c, fx, now);
  return fx;
}

/** Retires finished jobs, starts queued requests while they fit, then fills the pipeline with micro-batches. */
function settle(c: PipelineCore, fx: PipelineEffect[], now: number): void {
  retireFinished(c, fx, now);
  startWaiting(c, fx, now);
  pump(c, fx, now);
}
