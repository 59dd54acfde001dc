// Errors a gateway answers with: OpenAI's JSON error shape and an HTTP status.

/** An error for an HTTP caller: status, OpenAI error type, a stable code and the parameter at fault. */
export class ApiError extends Error {
  readonly status: number;
  /** invalid_request_error, not_found_error, rate_limit_error, server_error, ... */
  readonly type: string;
  readonly code: string;
  readonly param: string | null;
  /** seconds a client should wait before retrying (sent as Retry-After) */
  retryAfter: number | null = null;
  /** more response headers (a 405's Allow) */
  headers: Record<string, string> = {};
  constructor(status: number, code: string, message: string, param: string | null = null, type?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.param = param;
    this.type = type ?? (status === 404 ? 'not_found_error' : status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error');
  }

  /** The JSON body OpenAI clients parse. */
  body(): { error: { message: string; type: string; param: string | null; code: string } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** The HTTP answer to a coordinator's refusal code. */
export function fromClusterError(code: string, message: string): ApiError {
  switch (code) {
    // What the client must change: the same request would fail the same way again.
    case 'context_length_exceeded':
    case 'bad_request':
    case 'invalid_grammar':
    case 'repeated_failure':
      return new ApiError(400, code, message);
    case 'no_pipeline':
      return new ApiError(503, code, message);
    case 'session_busy':
      return new ApiError(409, code, message, 'session_id');
    case 'kv_full':
    case 'overloaded': {
      const e = new ApiError(429, code, `${message} (retry later)`);
      e.retryAfter = 1;
      return e;
    }
    case 'pipeline_down':
    case 'store_unavailable':
    case 'stage_failed':
    case 'step_timeout': {
      const e = new ApiError(503, code, `${message} (retry the request)`);
      e.retryAfter = 1;
      return e;
    }
    default:
      return new ApiError(500, code || 'internal', message);
  }
}

/** The HTTP answer to a coordinator's refusal of an admin request (migrate, drain, undrain). */
export function fromAdminError(code: string, message: string): ApiError {
  switch (code) {
    case 'not_found':
    case 'no_pipeline':
      return new ApiError(404, code, message);
    case 'session_busy':
    case 'pipeline_draining':
    case 'last_pipeline':
      return new ApiError(409, code, message);
    case 'unavailable': {
      const e = new ApiError(503, code, `${message} (retry later)`);
      e.retryAfter = 1;
      return e;
    }
    default:
      return new ApiError(400, code, message);
  }
}
