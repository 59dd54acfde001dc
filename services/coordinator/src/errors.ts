// Errors of the coordinator.

/** A request the coordinator refuses or could not carry out. */
export class CoordinatorError extends Error {
  /** no_pipeline, session_busy, stage_failed, context_length_exceeded, kv_full, bad_request, store_unavailable; admin: not_found, last_pipeline, pipeline_draining, unavailable */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'CoordinatorError';
    this.code = code;
  }
}
