// Checkpoints of prompts, on a pipeline whose prefix tree shares only where a cache sequence ends
// (stages with windowed layers in a small cache: PrefixTreeOptions.endsOnly). Two prompts that
// begin alike (a chat application's system prompt) share nothing there when the first one's cache
// sequence goes on past what they have in common: its windowed cells before that point were
// taken over. The second one computes those positions again; it stops where its prompt leaves the
// paths already in the tree, its positions [0, at) are copied into a cache sequence of their own
// (one seq_cp, while the window before `at` is still held on every stage), and it goes on. That
// sequence ends at `at`: every later prompt that begins the same way shares it. Like llama-server's
// context checkpoints for SWA models, but a place in the shared tree rather than a saved state.
import { SeqOpKind } from '@strata/wire';
import type { GenerateRequest } from '@strata/wire';
import { copyReady, type Job } from './job.ts';
import { commonPrefix } from './pipeline-admission.ts';
import { dropSeq, running, type PipelineCore, type PipelineEffect } from './pipeline-state.ts';
import { seqOp } from './replies.ts';

/** A checkpoint is taken only this many positions or more past what the prompt shares already. */
export const MIN_CHECKPOINT_GAIN = 32;

/**
 * Where a one-off request starting at `cached` should have its prompt checkpointed: where it
 * leaves every path the tree holds, when that is far enough past `cached` and before its last
 * token; null when not (a tree that shares anywhere needs none).
 */
export function checkpointAt(c: PipelineCore, req: GenerateRequest, cached: number): number | null {
  const tree = c.room.prefixes;
  if (!tree.endsOnly || !c.options.prefixCache || req.sessionId || req.sampling?.embed || Math.max(1, req.n) > 1) return null;
  const at = tree.common(req.cacheScope, req.prompt, req.prompt.length - 1);
  if (at - cached < MIN_CHECKPOINT_GAIN) return null;
  // One checkpoint of a prefix at a time: prompts that arrive together share the first one's.
  for (const j of c.jobs) {
    const other = j.checkpoint && c.requests.get(j.requestId)?.req;
    if (other && j.checkpoint!.at === at && other.cacheScope === req.cacheScope && commonPrefix(other.prompt, req.prompt) >= at) return null;
  }
  return at;
}


/**
 * A free sequence for a checkpoint, reserved; null when taking one would evict anything (a
 * checkpoint is worth a spare sequence, not someone's cells).
 */
export function checkpointSeq(c: PipelineCore): number | null {
  const grant = c.room.plan({ seqs: 1, cells: 0, keep: '', extra: 0 }, running(c));
  if (!grant || grant.evicted.length + grant.prefixes.length + grant.emptyFirst.length + grant.drops.length > 0) return null;
  c.room.apply(grant);
  const seq = grant.seqs[0]!;
  c.room.reserveIncoming(seq, 0);
  return seq;
}

/**
 * After a step result: a job whose positions before its checkpoint every stage holds now has them
 * copied. From then on the copy's cells count as the sequence's own too (the job may end, and its
 * sequence be emptied, before the copy is known to be done).
 */
export function checkpointDue(c: PipelineCore, fx: PipelineEffect[], j: Job): void {
  const k = j.checkpoint;
  if (!k || k.copying || !copyReady(j, k.at)) return;
  k.copying = true;
  c.room.reserveIncoming(k.seq, k.at);
  fx.push({ type: 'checkpoint', requestId: j.requestId, index: j.index, seq: k.seq, ops: [seqOp(SeqOpKind.REMOVE, k.seq), seqOp(SeqOpKind.COPY, j.seq, 0, k.at, k.seq)] });
}

/**
 * The copy of a job's checkpoint into cache sequence `seq` is done (`ok`) or failed: the sequence
 * becomes the tree's at the checkpoint, or is emptied (as it is when the job, cancelled meanwhile,
 * or its node is gone); the job goes on.
 */
export function checkpointed(c: PipelineCore, fx: PipelineEffect[], requestId: string, index: number, seq: number, ok: boolean, now: number): void {
  const j = c.requests.get(requestId)?.jobs.find((x) => x.index === index);
  const k = j?.checkpoint?.copying && j.checkpoint.seq === seq ? j.checkpoint : null;
  if (k) j!.checkpoint = null;
  const cells = c.room.endIncoming(seq);
  const placed = ok && k !== null && j!.grown !== null && c.room.prefixes.checkpoint(j!.grown, k.at, seq, now);
  if (placed) fx.push({ type: 'log', level: 'debug', message: 'a prompt checkpointed for the prefix cache', fields: { request: requestId, seq, at: k.at } });
  else dropSeq(c, fx, seq, cells);
}

/**
 * A job leaves (ends, or moves away) before its checkpoint was copied: the sequence reserved for
 * it is emptied and freed. One being copied stays until 'checkpointed' says how it went.
 */
export function dropCheckpoint(c: PipelineCore, fx: PipelineEffect[], j: Job): void {
  const k = j.checkpoint;
  if (!k || k.copying) return;
  j.checkpoint = null;
  dropSeq(c, fx, k.seq, c.room.endIncoming(k.seq));
}
