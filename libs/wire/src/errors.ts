// Errors of the wire layer.

/** A message that cannot be decoded or does not fit the protocol. */
export class WireError extends Error {
  /** corrupt, bad_subject, bad_chunk, too_large, bad_key */
  readonly code: string;
  /** subject or message type concerned, when known */
  readonly subject: string | undefined;
  constructor(code: string, message: string, subject?: string) {
    super(message);
    this.name = 'WireError';
    this.code = code;
    this.subject = subject;
  }
}
