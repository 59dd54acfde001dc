// GBNF grammars held to limits before anything compiles them. A grammar's cost is paid on the last
// stage of a pipeline, in the step that samples its sequence: libllama's grammar sampler keeps one
// stack per way the output could go on and checks every candidate token against each of them, so a
// grammar of many alternatives (or of alternatives reached through alternatives) slows every step
// it is in, and libllama's recursive-descent parser overflows its stack on deep nesting. This is a
// parser of llama.cpp's GBNF (src/llama-grammar.cpp, read as the reference; the syntax, escapes and
// repetition rules follow it) that measures a grammar and stops as soon as it passes a limit, so
// that a refused grammar costs the gateway little and never reaches libllama.

/** How much grammar a request may carry (docs/cluster.md, "Grammars"). */
export interface GrammarLimits {
  /** UTF-8 bytes of grammar text */
  maxBytes: number;
  /** rules as libllama builds them: named rules, groups, and the rules repetitions expand into */
  maxRules: number;
  /** `|`-separated sequences over every rule and group as written */
  maxAlternatives: number;
  /** groups inside groups */
  maxNesting: number;
  /** stacks one rule reference may open at once (see {@link GrammarShape.fanout}) */
  maxFanout: number;
}

/** What a grammar measures. */
export interface GrammarShape {
  bytes: number;
  rules: number;
  alternatives: number;
  /** deepest nesting of groups */
  nesting: number;
  /**
   * The most stacks one rule reference opens in libllama's grammar sampler: a rule's alternatives,
   * each counted by the elements it may start with (through rule references, and past elements
   * that may match nothing). The sampler's work per candidate token grows with it.
   */
  fanout: number;
}

/** A grammar that is not valid GBNF (`invalid_grammar`) or passes a limit (`grammar_too_large`). */
export class GrammarError extends Error {
  readonly code: 'invalid_grammar' | 'grammar_too_large';
  constructor(code: GrammarError['code'], message: string) {
    super(message);
    this.name = 'GrammarError';
    this.code = code;
  }
}

/** libllama refuses a repetition whose count, times the rules inside what it repeats, reaches this. */
const REPETITION_THRESHOLD = 2000;

/**
 * Grammar elements (8 bytes each in libllama) a grammar may expand to: repetitions copy what they
 * repeat, so a short grammar can ask for millions. A fixed bound, far above any grammar within the
 * other limits written without repeated long literals.
 */
export const MAX_ELEMENTS = 1 << 20;

/**
 * One element of a sequence: a terminal (characters or a token: it always matches something) or
 * a rule. Repetitions become rules as libllama builds them, so whether an element may match
 * nothing, and left recursion through one, come out as libllama will see them.
 */
interface Item {
  /** rule index, or -1 for a terminal */
  rule: number;
  /** grammar elements libllama writes for it in the sequence */
  size: number;
}

/** A rule: its alternatives, each a sequence of items (an empty one matches nothing). */
type Rule = Item[][];

/**
 * Measures `text` against `limits`; throws GrammarError when it is not GBNF as libllama reads it
 * (syntax, undefined rules, no `root`, left recursion) or when it passes a limit. `isToken` says
 * whether a `<piece>` element (angle brackets included) is one token of the vocabulary, as
 * libllama will require; without it such elements are left to libllama.
 */
export function checkGrammar(text: string, limits: GrammarLimits, isToken?: (piece: string) => boolean): GrammarShape {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > limits.maxBytes) throw tooLarge(`the grammar is ${bytes} bytes; at most ${limits.maxBytes} are taken`);
  if (text.includes('\0')) throw new GrammarError('invalid_grammar', 'invalid grammar: it contains a NUL character');
  const p = new Parser(text, limits, isToken);
  p.parse();
  const fanout = p.fanout();
  if (fanout > limits.maxFanout) throw tooLarge(`one rule of the grammar opens more than ${limits.maxFanout} alternatives at once (through nested rules); the grammar sampler would check every candidate token against each`);
  return { bytes, rules: p.rulesBuilt, alternatives: p.alternatives, nesting: p.deepest, fanout };
}

function tooLarge(message: string): GrammarError {
  return new GrammarError('grammar_too_large', message);
}

function isWordChar(c: string | undefined): boolean {
  return c !== undefined && /[A-Za-z0-9-]/.test(c);
}

function isDigit(c: string | undefined): boolean {
  return c !== undefined && c >= '0' && c <= '9';
}

/** One parse of one grammar text; positions are UTF-16 indices into it. */
class Parser {
  readonly #src: string;
  readonly #limits: GrammarLimits;
  readonly #isToken: ((piece: string) => boolean) | undefined;
  #pos = 0;
  /** name → rule index (named rules; groups and repetitions get unnamed indices) */
  readonly #names = new Map<string, number>();
  /** index → alternatives; undefined while referenced but not yet defined */
  readonly #rules: (Rule | undefined)[] = [];
  /** rules libllama would build (its symbol ids) */
  rulesBuilt = 0;
  alternatives = 0;
  #elements = 0;
  deepest = 0;
  #depth = 0;

  constructor(src: string, limits: GrammarLimits, isToken?: (piece: string) => boolean) {
    this.#src = src;
    this.#limits = limits;
    this.#isToken = isToken;
  }

  parse(): void {
    this.#space(true);
    while (this.#pos < this.#src.length) this.#rule();
    this.#names.forEach((index, name) => {
      if (this.#rules[index] === undefined) throw this.#invalid(`rule '${name}' is used but never defined`, null);
    });
    if (!this.#names.has('root')) throw this.#invalid("there is no 'root' rule", null);
  }

  /** the character at the position (a method: TypeScript would narrow a getter across moves) */
  #c(): string | undefined {
    return this.#src[this.#pos];
  }

  #invalid(what: string, at: number | null = this.#pos): GrammarError {
    if (at === null) return new GrammarError('invalid_grammar', `invalid grammar: ${what}`);
    const before = this.#src.slice(0, at);
    const line = before.split('\n').length, col = at - before.lastIndexOf('\n');
    const near = this.#src.slice(at, at + 20);
    return new GrammarError('invalid_grammar', `invalid grammar: ${what} at line ${line}, column ${col}${near ? ` (near ${JSON.stringify(near)})` : ' (the end)'}`);
  }

  /** Spaces, tabs and `#` comments; newlines too where `newlines`. */
  #space(newlines: boolean): void {
    for (;;) {
      const c = this.#c();
      if (c === ' ' || c === '\t' || (newlines && (c === '\r' || c === '\n'))) this.#pos++;
      else if (c === '#') while (this.#pos < this.#src.length && this.#c() !== '\r' && this.#c() !== '\n') this.#pos++;
      else return;
    }
  }

  #name(): string {
    const start = this.#pos;
    while (isWordChar(this.#c())) this.#pos++;
    if (this.#pos === start) throw this.#invalid('expecting a rule name');
    return this.#src.slice(start, this.#pos);
  }

  #int(): number {
    const start = this.#pos;
    while (isDigit(this.#c())) this.#pos++;
    if (this.#pos === start) throw this.#invalid('expecting an integer');
    return Number(this.#src.slice(start, this.#pos));
  }

  /** A rule index by name, counted as libllama counts symbols. */
  #symbol(name: string): number {
    let index = this.#names.get(name);
    if (index === undefined) {
      index = this.#newRule();
      this.#names.set(name, index);
    }
    return index;
  }

  #newRule(): number {
    this.#count(1);
    this.#rules.push(undefined);
    return this.#rules.length - 1;
  }

  #count(rules: number): void {
    this.rulesBuilt += rules;
    if (this.rulesBuilt > this.#limits.maxRules) throw tooLarge(`the grammar expands to more than ${this.#limits.maxRules} rules (named rules, groups, and the rules each repetition adds)`);
  }

  /** `name ::= alternatives` and the end of its line. */
  #rule(): void {
    const name = this.#name();
    this.#space(false);
    if (!this.#src.startsWith('::=', this.#pos)) throw this.#invalid("expecting '::='");
    this.#pos += 3;
    this.#space(true);
    // (A rule defined twice keeps its last definition, as in libllama.)
    this.#rules[this.#symbol(name)] = this.#alternates(false);
    if (this.#c() === '\r') this.#pos += this.#src[this.#pos + 1] === '\n' ? 2 : 1;
    else if (this.#c() === '\n') this.#pos++;
    else if (this.#pos < this.#src.length) throw this.#invalid('expecting a newline or the end');
    this.#space(true);
  }

  #alternates(nested: boolean): Rule {
    const alts: Rule = [this.#sequence(nested)];
    while (this.#c() === '|') {
      this.#pos++;
      this.#space(true);
      alts.push(this.#sequence(nested));
    }
    this.alternatives += alts.length;
    if (this.alternatives > this.#limits.maxAlternatives) throw tooLarge(`the grammar has more than ${this.#limits.maxAlternatives} alternatives`);
    return alts;
  }

  #sequence(nested: boolean): Item[] {
    const seq: Item[] = [];
    /** where the last symbol's items start (a repetition repeats them); seq.length: none */
    let last = 0;
    /** rules built inside the last symbol (libllama's n_prev_rules), for its repetition limit */
    let inner = 1;
    /** A symbol of `size` elements; an empty literal or class is none (libllama writes nothing). */
    const push = (rule: number, size: number) => {
      last = seq.length;
      inner = 1;
      if (size === 0) return;
      seq.push({ rule, size });
      this.#grow(size);
    };
    for (;;) {
      const c = this.#c();
      if (c === '"') {
        this.#pos++;
        let n = 0;
        for (; this.#c() !== '"'; n++) this.#char();
        this.#pos++;
        push(-1, n);
      } else if (c === '[') {
        this.#pos++;
        if (this.#c() === '^') this.#pos++;
        let n = 0;
        for (; this.#c() !== ']'; n++) {
          this.#char();
          if (this.#c() === '-' && this.#src[this.#pos + 1] !== ']') {
            if (this.#pos + 1 >= this.#src.length) throw this.#invalid('unexpected end of input');
            this.#pos++;
            this.#char();
            n++;
          }
        }
        this.#pos++;
        push(-1, n);
      } else if (c === '<' || c === '!') {
        this.#token();
        push(-1, 1);
      } else if (isWordChar(c)) {
        push(this.#symbol(this.#name()), 1);
      } else if (c === '(') {
        this.#pos++;
        this.#space(true);
        if (++this.#depth > this.#limits.maxNesting) throw tooLarge(`the grammar nests groups more than ${this.#limits.maxNesting} deep`);
        this.deepest = Math.max(this.deepest, this.#depth);
        const before = this.rulesBuilt;
        const index = this.#newRule();
        this.#rules[index] = this.#alternates(true);
        this.#depth--;
        if (this.#c() !== ')') throw this.#invalid("expecting ')'");
        this.#pos++;
        push(index, 1);
        inner = Math.max(1, this.rulesBuilt - before);
      } else if (c === '.') {
        this.#pos++;
        push(-1, 1);
      } else if (c === '*' || c === '+' || c === '?') {
        this.#pos++;
        this.#space(nested);
        inner = this.#repeat(seq, last, inner, c === '+' ? 1 : 0, c === '?' ? 1 : Infinity);
        continue;
      } else if (c === '{') {
        this.#pos++;
        this.#space(nested);
        if (!isDigit(this.#c())) throw this.#invalid('expecting an integer');
        const min = this.#int();
        this.#space(nested);
        let max = Infinity;
        if (this.#c() === '}') {
          max = min;
        } else if (this.#c() === ',') {
          this.#pos++;
          this.#space(nested);
          if (isDigit(this.#c())) max = this.#int();
          this.#space(nested);
          if (this.#c() !== '}') throw this.#invalid("expecting '}'");
        } else {
          throw this.#invalid("expecting ',' or '}'");
        }
        if (max < min) throw this.#invalid('a repetition whose maximum is below its minimum');
        this.#pos++;
        this.#space(nested);
        if (min > REPETITION_THRESHOLD) throw this.#invalid(`a repetition of more than ${REPETITION_THRESHOLD}`);
        // (libllama reads a maximum past the threshold as no maximum)
        inner = this.#repeat(seq, last, inner, min, max > REPETITION_THRESHOLD ? Infinity : max);
        continue;
      } else {
        return seq;
      }
      this.#space(nested);
    }
  }

  /**
   * Repeats the last symbol (the items from `from` on) min..max times (max Infinity: unbounded),
   * as libllama rewrites it: min copies, then a rule `S' ::= S S' |` (unbounded) or a chain of
   * max - min rules `S'(k) ::= S S'(k-1) |`. Returns the rules now inside the repeated symbol.
   */
  #repeat(seq: Item[], from: number, inner: number, min: number, max: number): number {
    if (from >= seq.length) throw this.#invalid('expecting something to repeat before it');
    const unit = seq.splice(from);
    const size = unit.reduce((n, it) => n + it.size, 0);
    const unbounded = max === Infinity;
    const total = !unbounded && max > 0 ? max : min > 0 ? min : 1;
    if (inner * total >= REPETITION_THRESHOLD) throw this.#invalid(`a repetition that expands into ${inner * total} rules or more (libllama's limit is ${REPETITION_THRESHOLD})`);
    const optional = unbounded ? 1 : max - min;
    this.#count(optional);
    // min copies in the sequence (none for 0), each optional rule a copy and three elements more.
    this.#grow((min - 1) * size + optional * (size + 3) + (optional > 0 ? 1 : 0));
    for (let i = 0; i < min; i++) seq.push(...unit);
    if (optional === 0) return inner * total;
    const ref = (rule: number): Item => ({ rule, size: 1 });
    let next = -1;
    for (let k = 0; k < optional; k++) {
      const index = this.#rules.length;
      this.#rules.push([[...unit, ...(unbounded ? [ref(index)] : next >= 0 ? [ref(next)] : [])], []]);
      next = index;
    }
    seq.push(ref(next));
    return inner * total;
  }

  /** Counts grammar elements libllama will write. */
  #grow(elements: number): void {
    this.#elements += elements;
    if (this.#elements > MAX_ELEMENTS) throw tooLarge(`the grammar expands to more than ${MAX_ELEMENTS} elements (repetitions copy what they repeat)`);
  }

  /** One character of a literal or class, escapes included. */
  #char(): void {
    const c = this.#c();
    if (c === undefined) throw this.#invalid('unexpected end of input');
    if (c !== '\\') {
      this.#pos += (c.codePointAt(0)! > 0xffff ? 2 : 1);
      return;
    }
    const e = this.#src[this.#pos + 1];
    const hex = e === 'x' ? 2 : e === 'u' ? 4 : e === 'U' ? 8 : 0;
    if (hex > 0) {
      if (!/^[0-9A-Fa-f]+$/.test(this.#src.slice(this.#pos + 2, this.#pos + 2 + hex)) || this.#pos + 2 + hex > this.#src.length) throw this.#invalid(`expecting ${hex} hex digits`);
      this.#pos += 2 + hex;
    } else if (e !== undefined && 'trn\\"[]-'.includes(e)) {
      this.#pos += 2;
    } else {
      throw this.#invalid('unknown escape');
    }
  }

  /** `<[id]>`, `<piece>` or their `!` inverse; the vocabulary is libllama's to check. */
  #token(): void {
    if (this.#c() === '!') this.#pos++;
    if (this.#c() !== '<') throw this.#invalid("expecting '<'");
    const start = this.#pos++;
    if (this.#c() === '[') {
      this.#pos++;
      this.#int();
      if (this.#c() !== ']') throw this.#invalid("expecting ']'");
      this.#pos++;
      if (this.#c() !== '>') throw this.#invalid("expecting '>'");
      this.#pos++;
      return;
    }
    const end = this.#src.indexOf('>', this.#pos);
    if (end < 0) throw this.#invalid("expecting '>'");
    const piece = this.#src.slice(start, end + 1);
    if (this.#isToken && !this.#isToken(piece)) throw this.#invalid(`${piece} is not one token of the vocabulary`, start);
    this.#pos = end + 1;
  }

  /**
   * The largest fan-out of any rule (capped just past the limit); throws on left recursion, which
   * libllama refuses and whose fan-out would have no end. One depth-first walk over the elements
   * each alternative may start with, without recursion (a chain of rules may be long): a rule's
   * fan-out and whether it may match nothing are known when its walk ends. (What decides whether
   * a rule may match nothing lies in those leading positions, so its dependencies come first.)
   */
  fanout(): number {
    const rules = this.#rules as Rule[];
    const cap = this.#limits.maxFanout + 1;
    const fan = new Array<number>(rules.length).fill(-1);
    const nullable = new Array<boolean>(rules.length).fill(false);
    const walking = new Array<boolean>(rules.length).fill(false);
    const nameOf = (i: number) => [...this.#names].find(([, v]) => v === i)?.[0];
    let most = 0;
    for (let top = 0; top < rules.length; top++) {
      if (fan[top]! >= 0) continue;
      const stack = [{ rule: top, alt: 0, item: 0, sum: 0 }];
      walking[top] = true;
      while (stack.length > 0) {
        const f = stack[stack.length - 1]!;
        const seq = rules[f.rule]![f.alt];
        if (!seq) {
          fan[f.rule] = f.sum;
          walking[f.rule] = false;
          most = Math.max(most, f.sum);
          stack.pop();
          continue;
        }
        const it = seq[f.item];
        if (!it) {
          // Every element of this alternative may match nothing.
          nullable[f.rule] = true;
          f.alt++;
          f.item = 0;
          continue;
        }
        if (it.rule >= 0 && fan[it.rule]! < 0) {
          if (walking[it.rule]) throw this.#invalid(`left recursion through rule '${nameOf(it.rule) ?? 'a group'}' (a rule that can reach itself before matching anything)`, null);
          walking[it.rule] = true;
          stack.push({ rule: it.rule, alt: 0, item: 0, sum: 0 });
          continue;
        }
        f.sum = Math.min(cap, f.sum + (it.rule < 0 ? 1 : fan[it.rule]!));
        if (it.rule >= 0 && nullable[it.rule]) {
          f.item++;
        } else {
          f.alt++;
          f.item = 0;
        }
      }
    }
    return most;
  }
}
