// The rebalancer's decision, pure: which session moves where when a pipeline's KV cells fill up.

/** A pipeline as the rebalancer sees it. */
export interface PipelineLoad {
  id: string;
  fingerprint: string;
  draining: boolean;
  /** a prefill pipeline takes no session */
  prefill?: boolean;
  /** the fullest of its workers: KV cells used / cells, 0..1 */
  occupancy: number;
  /** cells of its smallest stage */
  cells: number;
  /** the most positions one sequence may hold there (one KV stream per sequence: a stream's cells); default: `cells` */
  perSeq?: number;
  /** sessions living on it and the cells each holds */
  sessions: { id: string; cells: number }[];
}

/** A move the rebalancer asks for. */
export interface RebalanceMove {
  session: string;
  from: string;
  to: string;
  /** the source's occupancy that triggered it */
  occupancy: number;
}

/**
 * When a pipeline's occupancy passes `high`, its largest session that keeps the emptiest other
 * pipeline of the same model below `low` moves there: one move at a time, and never one that
 * would make the target the next to shed (no ping-pong). Null: nothing to do.
 */
export function pickRebalance(pipelines: readonly PipelineLoad[], high: number, low: number): RebalanceMove | null {
  if (high <= 0) return null;
  for (const src of pipelines) {
    if (src.draining || src.occupancy < high) continue;
    const dst = pipelines
      .filter((p) => p !== src && !p.draining && !p.prefill && p.fingerprint === src.fingerprint && p.occupancy < low)
      .sort((a, b) => a.occupancy - b.occupancy)[0];
    if (!dst) continue;
    const biggest = src.sessions.filter((s) => s.cells > 0 && s.cells <= (dst.perSeq ?? dst.cells) && dst.occupancy + s.cells / dst.cells < low).sort((a, b) => b.cells - a.cells)[0];
    if (biggest) return { session: biggest.id, from: src.id, to: dst.id, occupancy: src.occupancy };
  }
  return null;
}
