// Errors of the KV cache: state that cannot be imported, named precisely.

/** Exported KV state is corrupt, truncated, or does not fit the cache it is imported into. */
export class KvStateError extends Error {
  /** bad_magic, unsupported_version, truncated, checksum, model_mismatch, layer_mismatch, type_mismatch, no_room, conflict */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'KvStateError';
    this.code = code;
  }
}
