// The choices of one request (n > 1) share its prompt. The first choice computes the prompt up to
// its last token; then every other choice's sequence gets a copy of those positions (one seq_cp
// each on every stage, no compute) and each choice computes the last token itself, sampling its
// own first token (vLLM's parallel sampling shares the prompt's blocks the same way). Until the
// copy is done the first choice waits at the last token and the others wait to start; where the
// copy fails, or the first choice leaves before it, the others compute the whole prompt. Pure.
import { SeqOpKind, type GenerateRequest, type SeqOp } from '@strata/wire';
import { copyReady, type Job } from './job.ts';
import { seqOp } from './replies.ts';
import type { PipelineCore, PipelineEffect } from './pipeline-state.ts';

/** Prompt tokens a fork must spare each other choice: fewer are not worth the first one's wait. */
export const MIN_FORK = 16;

/**
 * Where the choices of a one-off request starting at `cached` fork: the position of its last
 * prompt token, when it asks for several choices and they would share at least MIN_FORK
 * positions more than the cache gives them; else null. (A session's request has one sequence that
 * stays; an embedding computes every token of every choice.)
 */
export function forkAt(req: GenerateRequest, cached: number): number | null {
  if (Math.max(1, req.n) < 2 || req.sessionId || req.sampling?.embed) return null;
  const at = req.prompt.length - 1;
  return at - cached >= MIN_FORK ? at : null;
}

/**
 * After a step result: once every stage holds the first choice's positions before its fork, they
 * are copied into the sequences of the choices that wait for them.
 */
export function forkDue(c: PipelineCore, fx: PipelineEffect[], j: Job): void {
  const f = j.fork;
  if (!f || f.copying || !copyReady(j, f.at)) return;
  const waiting = siblings(c, j).filter((s) => s.finish === null);
  if (waiting.length === 0) {
    release(c, j);
    return;
  }
  f.copying = true;
  fx.push({ type: 'fork', requestId: j.requestId, at: f.at, ops: waiting.map((s) => seqOp(SeqOpKind.COPY, j.seq, j.pos0, f.at, s.seq)) });
}

/**
 * The copy of a request's prompt into its other choices' sequences is done (`ok`) or failed: they
 * start from its last token when it is done; when not, from their whole prompt, once what the copy
 * may have left on some stages is removed again.
 */
export function forked(c: PipelineCore, fx: PipelineEffect[], requestId: string, at: number, ok: boolean): void {
  const request = c.requests.get(requestId);
  if (!request) return;
  const first = request.jobs.find((j) => j.fork?.copying && j.fork.at === at);
  if (first) first.fork = null;
  const undo: SeqOp[] = [];
  for (const s of request.jobs) {
    if (!s.forkWait) continue;
    s.forkWait = false;
    if (s.finish !== null) continue;
    if (!ok) {
      s.held = true;
      undo.push(seqOp(SeqOpKind.REMOVE, s.seq, s.pos0, -1));
      continue;
    }
    s.prompt = s.prompt.slice(at - s.pos0);
    s.pos0 = at;
    s.pos = at;
    s.done = at;
  }
  if (undo.length > 0) fx.push({ type: 'prepare', requestId, ops: undo, claim: '', history: null });
}

/**
 * A first choice leaves (it ends, or its request is rebuilt) before its fork was copied: the
 * others compute their whole prompt. One being copied stays until 'forked' says how it went.
 */
export function dropFork(c: PipelineCore, j: Job): void {
  if (j.fork && !j.fork.copying) release(c, j);
}

function release(c: PipelineCore, j: Job): void {
  j.fork = null;
  for (const s of siblings(c, j)) s.forkWait = false;
}

/** The choices of `j`'s request that wait for its fork. */
function siblings(c: PipelineCore, j: Job): Job[] {
  return (c.requests.get(j.requestId)?.jobs ?? []).filter((s) => s !== j && s.forkWait);
}
