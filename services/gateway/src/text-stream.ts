// Token bytes to text as it streams: whole UTF-8 characters only, and stop strings cut the text
// before them (text that could be the start of a stop string is held back until it is not).
const decoder = () => new TextDecoder('utf-8', { fatal: false });

/** One choice's text, fed token bytes. */
export class TextStream {
  readonly #stops: readonly string[];
  readonly #utf8 = decoder();
  #held = '';
  #stopped = false;

  constructor(stops: readonly string[]) {
    this.#stops = stops;
  }

  /** a stop string matched; nothing more will be emitted */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Adds one token's bytes; returns the text that can be shown now. */
  push(bytes: Uint8Array): string {
    if (this.#stopped) return '';
    this.#held += this.#utf8.decode(bytes, { stream: true });
    return this.#release(false);
  }

  /** The text still held back, at the end of the choice. */
  end(): string {
    if (this.#stopped) return '';
    this.#held += this.#utf8.decode();
    return this.#release(true);
  }

  #release(final: boolean): string {
    let cut = -1;
    for (const s of this.#stops) {
      const i = this.#held.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      this.#stopped = true;
      const out = this.#held.slice(0, cut);
      this.#held = '';
      return out;
    }
    let keep = 0;
    if (!final) {
      for (const s of this.#stops) {
        for (let k = Math.min(s.length - 1, this.#held.length); k > keep; k--) {
          if (this.#held.endsWith(s.slice(0, k))) {
            keep = k;
            break;
          }
        }
      }
    }
    const out = this.#held.slice(0, this.#held.length - keep);
    this.#held = this.#held.slice(this.#held.length - keep);
    return out;
  }
}
