// The cluster actor: workers announce themselves by heartbeat; it assembles pipelines (chains of
// stages of one model covering [0, n_layer)) from the stages it sees and takes a pipeline down
// when one of its workers stops heartbeating, restarts or drains, and says when one reconnected
// to NATS (steps through it may be lost). Pure: transition(state, msg)
// returns the next state and the effects for the runtime to carry out.
import type { StageInfo, StageLoad } from '@strata/wire';

/** A worker as last heard. */
export interface WorkerView {
  info: StageInfo;
  kvCellsUsed: number;
  lastSeenMs: number;
  draining: boolean;
  /** what it computed when it last heartbeated */
  load?: StageLoad;
  /** times its NATS connection came back (its heartbeats' count) */
  reconnects: number;
}

/** What a pipeline does: computes prompts and hands requests on, decodes, or both (its stages' --role). */
export type Role = 'prefill' | 'decode' | 'both';

/** A stage's role ('' from a worker that predates roles: both). */
export function roleOf(st: StageInfo): Role {
  return st.role === 'prefill' || st.role === 'decode' ? st.role : 'both';
}

/** A pipeline: worker ids in layer order. */
export interface PipelineView {
  id: string;
  modelId: string;
  fingerprint: string;
  /** its stages' role (they all have the same) */
  role: Role;
  stages: StageInfo[];
}

/** The cluster actor's state. */
export interface ClusterState {
  workers: Map<string, WorkerView>;
  pipelines: Map<string, PipelineView>;
  /** worker id -> pipeline id */
  memberOf: Map<string, string>;
}

/** Messages the cluster actor takes. */
export type ClusterMsg =
  | { type: 'heartbeat'; info: StageInfo; kvCellsUsed: number; draining: boolean; nowMs: number; load?: StageLoad; reconnects?: number }
  | { type: 'tick'; nowMs: number };

/** What the runtime must do. */
export type ClusterEffect =
  | { type: 'pipeline_up'; pipeline: PipelineView }
  | { type: 'pipeline_down'; pipeline: PipelineView; reason: string; lost: boolean }
  /** a worker of the pipeline reconnected to NATS: steps in flight through it may be lost */
  | { type: 'reconnected'; pipeline: PipelineView; workerId: string };

/** Settings of the cluster actor. */
export interface ClusterOptions {
  /** a worker unheard for this long is dead (milliseconds) */
  workerTimeoutMs: number;
}

/** An empty cluster. */
export function initialCluster(): ClusterState {
  return { workers: new Map(), pipelines: new Map(), memberOf: new Map() };
}

/** The cluster actor's transition. The state is updated in place and returned. */
export function clusterTransition(s: ClusterState, msg: ClusterMsg, o: ClusterOptions): { state: ClusterState; effects: ClusterEffect[] } {
  const effects: ClusterEffect[] = [];
  /** `lost`: a worker died or restarted under the pipeline (a drain is no loss) */
  const down = (workerId: string, reason: string, lost: boolean) => {
    const pid = s.memberOf.get(workerId);
    const p = pid === undefined ? undefined : s.pipelines.get(pid);
    if (!p) return;
    s.pipelines.delete(p.id);
    for (const st of p.stages) s.memberOf.delete(st.workerId);
    effects.push({ type: 'pipeline_down', pipeline: p, reason, lost });
  };
  if (msg.type === 'heartbeat') {
    const prev = s.workers.get(msg.info.workerId);
    if (prev && prev.info.startedAtMs !== msg.info.startedAtMs) down(msg.info.workerId, `worker ${msg.info.workerId} restarted`, true);
    if (prev && !prev.draining && msg.draining) down(msg.info.workerId, `worker ${msg.info.workerId} is draining`, false);
    const reconnects = msg.reconnects ?? 0;
    const pid = s.memberOf.get(msg.info.workerId);
    if (prev && reconnects > prev.reconnects && pid !== undefined) effects.push({ type: 'reconnected', pipeline: s.pipelines.get(pid)!, workerId: msg.info.workerId });
    s.workers.set(msg.info.workerId, { info: msg.info, kvCellsUsed: msg.kvCellsUsed, lastSeenMs: msg.nowMs, draining: msg.draining, load: msg.load, reconnects });
  } else {
    for (const [id, w] of s.workers) {
      if (msg.nowMs - w.lastSeenMs > o.workerTimeoutMs) {
        down(id, `worker ${id} missed heartbeats for ${msg.nowMs - w.lastSeenMs} ms`, true);
        s.workers.delete(id);
      }
    }
  }
  for (const p of assemble(s)) {
    s.pipelines.set(p.id, p);
    for (const st of p.stages) s.memberOf.set(st.workerId, p.id);
    effects.push({ type: 'pipeline_up', pipeline: p });
  }
  return { state: s, effects };
}

/**
 * Chains free stages into pipelines: per model fingerprint, pipeline group and role, depth-first from a
 * stage starting at layer 0 through stages starting where the previous one ends, in worker-id
 * order, so the same workers always give the same pipelines.
 */
function assemble(s: ClusterState): PipelineView[] {
  const free = [...s.workers.values()]
    .filter((w) => !w.draining && !s.memberOf.has(w.info.workerId))
    .map((w) => w.info)
    .sort((a, b) => (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : 0));
  const used = new Set<string>();
  const out: PipelineView[] = [];
  const chain = (at: number, fp: string, path: StageInfo[]): StageInfo[] | null => {
    const nLayer = path[0]?.nLayer ?? 0;
    if (path.length > 0 && at === nLayer) return path;
    for (const st of free) {
      if (used.has(st.workerId) || st.l0 !== at || st.modelFingerprint !== fp || path.includes(st)) continue;
      if (path.length > 0 && (st.group !== path[0]!.group || roleOf(st) !== roleOf(path[0]!))) continue;
      if (path.length > 0 && (st.nLayer !== nLayer || st.modelId !== path[0]!.modelId)) continue;
      const r = chain(st.l1, fp, [...path, st]);
      if (r) return r;
    }
    return null;
  };
  for (const head of free) {
    if (used.has(head.workerId) || head.l0 !== 0) continue;
    const stages = chain(0, head.modelFingerprint, []);
    if (!stages) continue;
    for (const st of stages) used.add(st.workerId);
    out.push({ id: pipelineId(stages), modelId: stages[0]!.modelId, fingerprint: stages[0]!.modelFingerprint, role: roleOf(stages[0]!), stages });
  }
  return out;
}

/** A pipeline's id: its workers in order (stable while they live). */
export function pipelineId(stages: StageInfo[]): string {
  return stages.map((s) => s.workerId).join('~');
}
