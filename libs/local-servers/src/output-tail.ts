// The last lines a child process printed, kept for error messages.

/** Bounded buffer of a process's most recent output; older text is dropped. */
export class OutputTail {
  #text = '';
  /** characters kept; a few dozen lines of server log */
  readonly maxChars: number;
  constructor(maxChars = 8192) {
    this.maxChars = maxChars;
  }

  /** Appends a chunk of stdout or stderr. */
  push(chunk: Buffer | string): void {
    this.#text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
    if (this.#text.length > this.maxChars * 2) this.#text = this.#text.slice(-this.maxChars);
  }

  /** The last `n` non-empty lines, joined by newlines. */
  lines(n = 20): string {
    return this.#text.slice(-this.maxChars).split('\n').map((l) => l.trimEnd()).filter((l) => l !== '').slice(-n).join('\n');
  }
}
