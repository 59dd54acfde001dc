// Errors for GGUF files: every one names the file and what is wrong with it.

/** A GGUF file is missing, truncated, malformed or not what it claims. */
export class GgufError extends Error {
  /** stable machine-readable code: not_found, bad_magic, truncated, malformed, unsupported */
  readonly code: string;
  readonly path: string;
  constructor(code: string, path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = 'GgufError';
    this.code = code;
    this.path = path;
  }
}
