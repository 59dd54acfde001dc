// Errors of telemetry set-up.

/** Telemetry could not start (a metrics port taken, a bad OTLP endpoint). */
export class TelemetryError extends Error {
  /** metrics_port, bad_endpoint */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'TelemetryError';
    this.code = code;
  }
}
