// Errors of configuration loading.

/** A configuration value that is missing, unknown or of the wrong type. */
export class ConfigError extends Error {
  /** unknown_key, bad_value, missing, bad_file */
  readonly code: string;
  /** the key concerned (camelCase), when one is */
  readonly key: string | undefined;
  constructor(code: string, message: string, key?: string) {
    super(message);
    this.name = 'ConfigError';
    this.code = code;
    this.key = key;
  }
}
