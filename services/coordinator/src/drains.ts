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

/** A pipeline as a drain's admission sees it. */
export interface DrainTarget {
  id: string;
  modelId: string;
  fingerprint: string;
  draining: boolean;
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

/**
 * Why draining `target` (for `worker`) must be refused unless forced, or null: its model would
 * be left with no pipeline that takes work, because every other pipeline of the model (same
 * fingerprint: where its sessions could go) is draining, or there is none. A pipeline already
 * draining is never refused: draining it again changes nothing.
 */
export function drainRefusal(worker: string, target: DrainTarget, pipelines: readonly DrainTarget[]): string | null {
  if (target.draining) return null;
  const others = pipelines.filter((p) => p.id !== target.id && p.fingerprint === target.fingerprint);
  if (others.some((p) => !p.draining)) return null;
  const why = others.length === 0 ? 'it is the only pipeline of the model' : `the other ${others.length} pipeline(s) of the model are draining`;
  return `draining worker ${worker} would leave model '${target.modelId}' with no pipeline that takes work: ${why} (pipeline ${target.id}). `
    + 'Undrain another pipeline first, or force the drain (strata drain --force, or {"force": true}) to take the model out of service';
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
