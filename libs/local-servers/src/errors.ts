// Errors of the local servers: a binary that is missing, a process that would not start.

/** Why a local server could not be found, started, or configured. */
export type LocalServerErrorCode = 'not_installed' | 'invalid_options' | 'spawn_failed' | 'start_timeout' | 'exited';

/** Structured fields of a {@link LocalServerError}. */
export interface LocalServerErrorFields {
  /** binary name, e.g. 'nats-server' */
  server?: string;
  /** last lines of the process's stdout and stderr, interleaved as they arrived */
  output?: string;
}

/** A local nats-server or redis-server is not installed, would not start in time, or exited while starting. */
export class LocalServerError extends Error {
  /** not_installed, invalid_options, spawn_failed, start_timeout, exited */
  readonly code: LocalServerErrorCode;
  /** binary name, when the error concerns one server */
  readonly server: string | undefined;
  /** last lines the process printed, when it ran at all */
  readonly output: string | undefined;
  constructor(code: LocalServerErrorCode, message: string, fields: LocalServerErrorFields = {}) {
    super(message);
    this.name = 'LocalServerError';
    this.code = code;
    this.server = fields.server;
    this.output = fields.output;
  }
}
