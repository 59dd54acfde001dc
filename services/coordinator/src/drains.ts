// Drains, pure. An operator drains a worker; the pipeline that worker is in takes no new request
// and no session while the drain holds. A drain is a mark on one worker *process* (its id and
// start time), not on a pipeline id: a worker that only missed heartbeats comes back still
// drained, one that restarted (a new start time) or stopped (it heartbeats `draining` on its way
// out) is done with, and its mark is stale.
import type { StageInfo } from '@strata/wire';

/** A drain as Redis keeps it (drain-book.ts). */
export interface DrainMark {
  worker: string;
  /** the worker process drained: its start time (milliseconds since the epoch) */
  startedAtMs: number;
  /** the pipeline it was in when drained (for operators; the mark holds whatever pipeline it is in) */
  pipeline: string;
  /** drained although no other pipeline of its model took work */
  forced: boolean;
  /** when it was drained (milliseconds since the epoch) */
  atMs: number;
}

/** A worker as last heard, as far as its mark is concerned. */
export interface MarkedWorker {
  startedAtMs: number;
  /** it said it is stopping */
  stopping: boolean;
}

/** The mark that drains a pipeline of these stages (one on one of its worker processes), or null. */
export function drainOf(stages: readonly StageInfo[], marks: ReadonlyMap<string, DrainMark>): DrainMark | null {
  for (const st of stages) {
    const m = marks.get(st.workerId);
    if (m && m.startedAtMs === Number(st.startedAtMs)) return m;
  }
  return null;
}

/** Workers whose mark drains nothing any more: they run as another process now, or are stopping. */
export function staleMarks(marks: ReadonlyMap<string, DrainMark>, workers: ReadonlyMap<string, MarkedWorker>): string[] {
  const out: string[] = [];
  for (const [id, m] of marks) {
    const w = workers.get(id);
    if (w && (w.startedAtMs !== m.startedAtMs || w.stopping)) out.push(id);
  }
  return out;
}

/** A mark as stored (JSON). */
export function encodeMark(m: DrainMark): string {
  return JSON.stringify(m);
}

/** A stored mark, or null when it is not one (a hand-edited or foreign value). */
export function decodeMark(worker: string, text: string): DrainMark | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof v !== 'object' || v === null) return null;
  const o = v as Record<string, unknown>;
  if (o.worker !== worker || typeof o.startedAtMs !== 'number' || typeof o.pipeline !== 'string' || typeof o.forced !== 'boolean' || typeof o.atMs !== 'number') return null;
  return { worker, startedAtMs: o.startedAtMs, pipeline: o.pipeline, forced: o.forced, atMs: o.atMs };
}
