// GBNF text as llama.cpp's grammar parser reads it: rule names, escaped literals and character
// classes, and bounded repetition that stays inside the parser's repetition limits.

/**
 * Largest `{m,n}` bound written directly. The parser expands `x{m,n}` into n rules and refuses a
 * count (times the rules already inside `x`) of 2000 or more; bigger bounds are split into blocks.
 */
const DIRECT_REPEAT = 1000;

/** Largest repetition bound `repeat` can express exactly (DIRECT_REPEAT blocks of DIRECT_REPEAT). */
export const MAX_REPEAT = DIRECT_REPEAT * DIRECT_REPEAT;

/** The longest rule-name stem kept from a hint, in characters. */
const NAME_STEM = 48;

/** A grammar under construction: uniquely named rules, rendered with `root` first. */
export class GbnfBuilder {
  /** the body of the whitespace rule between JSON tokens (json-grammar-primitives.ts ws) */
  readonly space: string | null;
  /** name → body; null while reserved but not yet defined (recursive rules) */
  readonly #rules = new Map<string, string | null>();
  /** primitive key → the name it got */
  readonly #shared = new Map<string, string>();

  /** `space`: the whitespace JSON may have between its tokens (default: up to MAX_WS characters). */
  constructor(space: string | null = null) {
    this.space = space;
  }

  /** Reserves a fresh rule name derived from `hint`: lowercase letters, digits and dashes. */
  reserve(hint: string): string {
    const stem = hint.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, NAME_STEM).replace(/-+$/, '') || 'rule';
    let name = stem;
    for (let i = 2; this.#rules.has(name); i++) name = `${stem}-${i}`;
    this.#rules.set(name, null);
    return name;
  }

  /** Sets the body of a reserved rule; each rule is defined once. */
  define(name: string, body: string): void {
    if (this.#rules.get(name) !== null) throw new Error(`GBNF rule ${name} is not reserved or already defined`);
    this.#rules.set(name, body);
  }

  /** Reserves a name from `hint`, defines it as `body`, and returns the name. */
  add(hint: string, body: string): string {
    const name = this.reserve(hint);
    this.define(name, body);
    return name;
  }

  /**
   * A rule shared by the whole grammar (`ws`, `string`, ...), built on first use. The name is
   * reserved before `body` runs, so mutually recursive primitives (value ↔ array) resolve.
   */
  shared(key: string, body: () => string): string {
    const known = this.#shared.get(key);
    if (known !== undefined) return known;
    const name = this.reserve(key);
    this.#shared.set(key, name);
    this.define(name, body());
    return name;
  }

  /** The grammar text, one rule a line, `root` first; every reserved rule must be defined. */
  render(): string {
    const lines: string[] = [];
    for (const [name, body] of this.#rules) {
      if (body === null) throw new Error(`GBNF rule ${name} was reserved but never defined`);
      const line = `${name} ::= ${body}`;
      if (name === 'root') lines.unshift(line);
      else lines.push(line);
    }
    return lines.join('\n') + '\n';
  }
}

/** A quoted GBNF literal matching `text` exactly (quotes, backslashes and controls escaped). */
export function literal(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') out += `\\${ch}`;
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (cp < 0x20 || cp === 0x7f) out += hexEscape(cp);
    else if (cp >= 0xd800 && cp <= 0xdfff) throw new Error('a lone UTF-16 surrogate has no UTF-8 form for a GBNF literal');
    else out += ch;
  }
  return `${out}"`;
}

/** One code point written for a character class: letters and digits as is, the rest escaped. */
export function classChar(cp: number): string {
  return /^[A-Za-z0-9]$/.test(String.fromCodePoint(cp)) ? String.fromCodePoint(cp) : hexEscape(cp);
}

function hexEscape(cp: number): string {
  const hex = cp.toString(16).toUpperCase();
  if (cp <= 0xff) return `\\x${hex.padStart(2, '0')}`;
  if (cp <= 0xffff) return `\\u${hex.padStart(4, '0')}`;
  return `\\U${hex.padStart(8, '0')}`;
}

/**
 * `item` repeated min..max times (max null: unbounded); '' when max is 0. `item` is one symbol
 * (a rule name, literal, class, or a group with no repetition inside). Bounds past DIRECT_REPEAT
 * go through block rules of DIRECT_REPEAT items, so the parser's limits are never hit.
 */
export function repeat(b: GbnfBuilder, item: string, min: number, max: number | null, hint: string): string {
  if (!Number.isSafeInteger(min) || min < 0 || min > MAX_REPEAT) throw new RangeError(`repeat min ${min}`);
  if (max !== null && (!Number.isSafeInteger(max) || max < min || max > MAX_REPEAT)) throw new RangeError(`repeat max ${max}`);
  if (max !== null && max <= DIRECT_REPEAT && min <= DIRECT_REPEAT) return bounded(item, min, max);
  if (max === null && min <= DIRECT_REPEAT) return bounded(item, min, null);
  let block: string | undefined;
  const blockRule = () => (block ??= b.add(`${hint}-block`, `${item}{${DIRECT_REPEAT}}`));
  const parts: string[] = [];
  if (min > DIRECT_REPEAT) parts.push(bounded(blockRule(), Math.floor(min / DIRECT_REPEAT), Math.floor(min / DIRECT_REPEAT)), bounded(item, min % DIRECT_REPEAT, min % DIRECT_REPEAT));
  else parts.push(bounded(item, min, min));
  if (max === null) {
    parts.push(`${item}*`);
  } else {
    const span = max - min;
    if (span <= DIRECT_REPEAT) {
      parts.push(bounded(item, 0, span));
    } else {
      // 0..span = q full blocks then 0..r items, or fewer blocks then 0..DIRECT_REPEAT-1 items.
      const q = Math.floor(span / DIRECT_REPEAT), r = span % DIRECT_REPEAT;
      const fewer = [bounded(blockRule(), 0, q - 1), bounded(item, 0, DIRECT_REPEAT - 1)].filter(Boolean).join(' ');
      const full = [bounded(blockRule(), q, q), bounded(item, 0, r)].filter(Boolean).join(' ');
      parts.push(`( ${fewer} | ${full} )`);
    }
  }
  return parts.filter(Boolean).join(' ');
}

/** `item{min,max}` in its shortest spelling; both bounds at most DIRECT_REPEAT. */
function bounded(item: string, min: number, max: number | null): string {
  if (max === 0) return '';
  if (max === null) return min === 0 ? `${item}*` : min === 1 ? `${item}+` : `${item}{${min},}`;
  if (min === max) return min === 1 ? item : `${item}{${min}}`;
  if (min === 0 && max === 1) return `${item}?`;
  return `${item}{${min},${max}}`;
}
