// What a step costs each stage, learned from the steps it ran (the milliseconds every stage
// reports in a step's result): ms ≈ a + b·tokens + c·attention, where attention counts the cells
// each token attends to (Σ over entries of n_tokens × (pos0 + n_tokens)). The model is fitted by
// exponentially weighted least squares with every coefficient kept non-negative, so it follows a
// stage that gets slower (a busy host) and grows with the context. Pure: no clock, no I/O.
//
// It serves two decisions: a step's deadline (a step past a margin times its predicted cost is
// stuck, never judged by heartbeats or one fixed timeout) and the step budget (how many prompt
// tokens fit in a micro-batch whose predicted time must stay within --step-budget-ms).

/** The work of one micro-batch. */
export interface StepWork {
  tokens: number;
  /** Σ n_tokens × (pos0 + n_tokens): cells attended, summed over the batch's tokens */
  attention: number;
}

/** The work of a micro-batch of entries (`tokens` tokens of a sequence from position `pos0`). */
export function workOf(entries: readonly { tokens: number; pos0: number }[]): StepWork {
  let tokens = 0, attention = 0;
  for (const e of entries) {
    tokens += e.tokens;
    attention += e.tokens * (e.pos0 + e.tokens);
  }
  return { tokens, attention };
}

/** Observations of a stage before its predictions are used. */
export const MIN_SAMPLES = 3;
/** weight left to an observation after each newer one (about the last 200 steps count) */
const DECAY = 0.995;
/** attention is counted in units of this many cells, to keep the sums well scaled */
const ATTN_UNIT = 1024;

const features = (w: StepWork): [number, number, number] => [1, w.tokens, w.attention / ATTN_UNIT];

/** Every subset of the three coefficients, for the non-negative fit (intercept always in). */
const SUBSETS: readonly (readonly number[])[] = [[0, 1, 2], [0, 1], [0, 2], [0]];

/** Solves the small symmetric system m·x = v (Gaussian elimination); null when singular. */
function solve(m: number[][], v: number[]): number[] | null {
  const n = v.length;
  const a = m.map((row, i) => [...row, v[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r]![c]!) > Math.abs(a[p]![c]!)) p = r;
    if (Math.abs(a[p]![c]!) < 1e-12) return null;
    [a[c], a[p]] = [a[p]!, a[c]!];
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = a[r]![c]! / a[c]![c]!;
      for (let k = c; k <= n; k++) a[r]![k]! -= f * a[c]![k]!;
    }
  }
  return a.map((row, i) => row[n]! / row[i]!);
}

/** The cost model of one stage. */
export class StageCost {
  /** Σ w·x·xᵀ // [3][3] */
  readonly #xx = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  /** Σ w·x·y // [3] */
  readonly #xy = [0, 0, 0];
  #yy = 0;
  #samples = 0;
  /** fitted [a, b, c], or null until refitted */
  #coef: number[] | null = null;

  /** steps observed */
  get samples(): number {
    return this.#samples;
  }

  /** Takes one step's work and the milliseconds it took on this stage. */
  observe(w: StepWork, ms: number): void {
    if (!(ms >= 0) || !Number.isFinite(ms) || w.tokens < 1) return;
    const x = features(w);
    for (let i = 0; i < 3; i++) {
      this.#xy[i] = this.#xy[i]! * DECAY + x[i]! * ms;
      for (let j = 0; j < 3; j++) this.#xx[i]![j] = this.#xx[i]![j]! * DECAY + x[i]! * x[j]!;
    }
    this.#yy = this.#yy * DECAY + ms * ms;
    this.#samples++;
    this.#coef = null;
  }

  /** [a ms, b ms per token, c ms per 1024 cells attended], non-negative; null before MIN_SAMPLES. */
  coefficients(): [number, number, number] | null {
    if (this.#samples < MIN_SAMPLES) return null;
    if (!this.#coef) this.#coef = this.#fit();
    return this.#coef as [number, number, number];
  }

  /** The fit of least squared error among those with no negative coefficient. */
  #fit(): number[] {
    let best: number[] = [0, 0, 0];
    let bestErr = Infinity;
    for (const s of SUBSETS) {
      // a small ridge keeps a subset solvable when its features hardly vary
      const m = s.map((i) => s.map((j) => this.#xx[i]![j]! + (i === j ? 1e-6 * (1 + this.#xx[i]![i]!) : 0)));
      const x = solve(m, s.map((i) => this.#xy[i]!));
      if (!x || x.some((c) => c < 0 || !Number.isFinite(c))) continue;
      const coef = [0, 0, 0];
      s.forEach((i, k) => (coef[i] = x[k]!));
      // Σw(y − β·x)² = Σwy² − 2β·Σwxy + βᵀ(Σwxxᵀ)β
      let err = this.#yy;
      for (let i = 0; i < 3; i++) {
        err -= 2 * coef[i]! * this.#xy[i]!;
        for (let j = 0; j < 3; j++) err += coef[i]! * coef[j]! * this.#xx[i]![j]!;
      }
      if (err < bestErr - 1e-9) {
        bestErr = err;
        best = coef;
      }
    }
    return best;
  }

  /** Predicted milliseconds of a step's work on this stage; null before MIN_SAMPLES. */
  predict(w: StepWork): number | null {
    const c = this.coefficients();
    if (!c) return null;
    const x = features(w);
    return c[0] * x[0] + c[1] * x[1] + c[2] * x[2];
  }
}

/** The cost models of a pipeline's stages, by worker id (they outlive a pipeline's resets). */
export class CostBook {
  readonly #byWorker = new Map<string, StageCost>();

  /** The model of one worker's stage. */
  stage(workerId: string): StageCost {
    let c = this.#byWorker.get(workerId);
    if (!c) this.#byWorker.set(workerId, (c = new StageCost()));
    return c;
  }

  /** Takes a step's result: `stageMs[i]` is what stage `route[i]` spent on it. */
  observe(route: readonly string[], w: StepWork, stageMs: readonly number[]): void {
    route.forEach((id, i) => {
      const ms = stageMs[i];
      if (ms !== undefined) this.stage(id).observe(w, ms);
    });
  }

  /** Predicted milliseconds of a step through every stage of `route`; null if one stage is still unknown. */
  predict(route: readonly string[], w: StepWork): number | null {
    let total = 0;
    for (const id of route) {
      const ms = this.stage(id).predict(w);
      if (ms === null) return null;
      total += ms;
    }
    return total;
  }

  /** Forgets a worker (it left the cluster). */
  forget(workerId: string): void {
    this.#byWorker.delete(workerId);
  }

  /** Forgets every worker `alive` does not name. */
  keepOnly(alive: (workerId: string) => boolean): void {
    for (const id of this.#byWorker.keys()) if (!alive(id)) this.#byWorker.delete(id);
  }
}

/** How long a step may take before it is stuck: a margin over its predicted cost, never below the floor. */
export function stepDeadlineMs(predictedMs: number | null, o: { floorMs: number; margin: number }): number {
  return predictedMs === null ? o.floorMs : Math.max(o.floorMs, o.margin * predictedMs);
}

/**
 * The most prompt tokens (up to `cap`) a micro-batch that already holds `fixed` can add for one
 * sequence continuing at `pos0`, keeping the predicted time within `budgetMs`; `cap` while the
 * cost is still unknown. Monotone in the tokens, so a binary search finds it.
 */
export function tokensWithin(predict: (w: StepWork) => number | null, budgetMs: number, fixed: StepWork, pos0: number, cap: number): number {
  if (cap <= 0) return 0;
  const at = (n: number) => predict({ tokens: fixed.tokens + n, attention: fixed.attention + n * (pos0 + n) });
  const full = at(cap);
  if (full === null || full <= budgetMs) return cap;
  let lo = 0, hi = cap; // at(lo) fits (or lo = 0), at(hi) does not
  while (hi - lo > 1) {
    const mid = (lo + hi) >>> 1;
    if (at(mid)! <= budgetMs) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** A stage's load as its heartbeat tells it (StageLoad). */
export interface BusyLoad {
  busyStepId: bigint;
  busyTokens: number;
  busyAttention: bigint;
  busyMs: number;
}

/** Slower than this many times its prediction, a computing stage is shown as slow. */
export const SLOW_FACTOR = 2;

/**
 * The prediction for the step a stage computes now, and whether it has been computing for more
 * than SLOW_FACTOR times that (and over a second): shown to operators, never a reason to take the
 * stage down. Unknown cost or no step: not slow.
 */
export function judgeLoad(load: BusyLoad | undefined, cost: StageCost): { predictedMs: number; slow: boolean } {
  if (!load || load.busyStepId === 0n) return { predictedMs: 0, slow: false };
  const predictedMs = cost.predict({ tokens: load.busyTokens, attention: Number(load.busyAttention) }) ?? 0;
  return { predictedMs, slow: predictedMs > 0 && load.busyMs > Math.max(1000, SLOW_FACTOR * predictedMs) };
}
