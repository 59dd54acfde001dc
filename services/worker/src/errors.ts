// Errors of a worker.

/** A request a worker refuses or cannot serve. */
export class WorkerError extends Error {
  /** bad_step, bad_request, kv_full, kv_tier_miss, stage_failed, stale_leader, unproven_fence */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'WorkerError';
    this.code = code;
  }
}
