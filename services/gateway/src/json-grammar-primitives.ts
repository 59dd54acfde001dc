// The JSON lexical rules every grammar shares: bounded whitespace, strings with escapes, numbers,
// any value, string formats, integer ranges and object keys that avoid declared names.
// Convention: every rule that matches a JSON value also eats the whitespace after it.
import { classChar, literal, type GbnfBuilder } from './json-grammar-gbnf.ts';

/** Most whitespace characters between two tokens, so generation cannot loop on spaces. */
export const MAX_WS = 20;

/** Most digits in an integer part or a fraction; keeps numbers finite, as llama.cpp's json.gbnf does. */
const MAX_DIGITS = 16;

/** Optional whitespace: the builder's own rule, else at most MAX_WS spaces, tabs or newlines. */
export function ws(b: GbnfBuilder): string {
  return b.shared('ws', () => b.space ?? `[ \\t\\n]{0,${MAX_WS}}`);
}

/** One character inside a JSON string: no quote, backslash or raw control; or an escape. */
export function jsonChar(b: GbnfBuilder): string {
  return b.shared('char', () => `[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" ( ["\\\\/bfnrt] | "u" [0-9a-fA-F]{4} )`);
}

/** Any JSON string. */
export function jsonString(b: GbnfBuilder): string {
  return b.shared('string', () => `"\\"" ${jsonChar(b)}* "\\"" ${ws(b)}`);
}

/** Any JSON number (at most MAX_DIGITS digits before and after the point, 3 in the exponent). */
export function jsonNumber(b: GbnfBuilder): string {
  return b.shared('number', () => `"-"? ( "0" | [1-9] [0-9]{0,${MAX_DIGITS - 1}} ) ( "." [0-9]{1,${MAX_DIGITS}} )? ( [eE] [-+]? [0-9]{1,3} )? ${ws(b)}`);
}

/** Any JSON integer written without fraction or exponent (at most MAX_DIGITS digits). */
export function jsonInteger(b: GbnfBuilder): string {
  return b.shared('integer', () => `"-"? ( "0" | [1-9] [0-9]{0,${MAX_DIGITS - 1}} ) ${ws(b)}`);
}

/** `true` or `false`. */
export function jsonBoolean(b: GbnfBuilder): string {
  return b.shared('boolean', () => `( "true" | "false" ) ${ws(b)}`);
}

/** `null`. */
export function jsonNull(b: GbnfBuilder): string {
  return b.shared('null', () => `"null" ${ws(b)}`);
}

/** Any JSON value. */
export function jsonValue(b: GbnfBuilder): string {
  return b.shared('value', () => [jsonObject(b), jsonArray(b), jsonString(b), jsonNumber(b), jsonBoolean(b), jsonNull(b)].join(' | '));
}

/** Any JSON object. */
export function jsonObject(b: GbnfBuilder): string {
  return b.shared('object', () => {
    const kv = `${jsonString(b)} ":" ${ws(b)} ${jsonValue(b)}`;
    return `"{" ${ws(b)} ( ${kv} ( "," ${ws(b)} ${kv} )* )? "}" ${ws(b)}`;
  });
}

/** Any JSON array. */
export function jsonArray(b: GbnfBuilder): string {
  return b.shared('array', () => `"[" ${ws(b)} ( ${jsonValue(b)} ( "," ${ws(b)} ${jsonValue(b)} )* )? "]" ${ws(b)}`);
}

/** String formats the grammar enforces (RFC 3339 dates and times, RFC 4122 UUIDs, dotted IPv4). */
export const ENFORCED_FORMATS = ['date', 'time', 'date-time', 'uuid', 'ipv4'] as const;

/** A format in ENFORCED_FORMATS. */
export type EnforcedFormat = (typeof ENFORCED_FORMATS)[number];

/** A JSON string in `format`. Dates allow day 31 in every month; times need an offset or `Z`. */
export function formattedString(b: GbnfBuilder, format: EnforcedFormat): string {
  const hex = '[0-9a-fA-F]';
  const two = (first: string) => `${first} [0-9]`;
  const date = () => b.shared('date', () => `[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )`);
  const time = () => b.shared('time', () => {
    const hour = `( ${two('[01]')} | "2" [0-3] )`, minute = two('[0-5]');
    return `${hour} ":" ${minute} ":" ${minute} ( "." [0-9]{1,9} )? ( "Z" | [+-] ${hour} ":" ${minute} )`;
  });
  const body: Record<EnforcedFormat, () => string> = {
    date,
    time,
    'date-time': () => b.shared('date-time', () => `${date()} "T" ${time()}`),
    uuid: () => b.shared('uuid', () => `${hex}{8} "-" ${hex}{4} "-" ${hex}{4} "-" ${hex}{4} "-" ${hex}{12}`),
    ipv4: () => b.shared('ipv4', () => {
      const octet = b.shared('ipv4-octet', () => `"25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9] [0-9] | [0-9]`);
      return `${octet} "." ${octet} "." ${octet} "." ${octet}`;
    }),
  };
  return b.shared(`${format}-string`, () => `"\\"" ${body[format]()} "\\"" ${ws(b)}`);
}

/**
 * Integers from lo to hi inclusive (lo <= hi), written without leading zeros, as an expression
 * without trailing whitespace. Each digit count gets its own branch, then digits split like a
 * range regex: a shared prefix, then the low edge, a full middle and the high edge.
 */
export function integerRange(lo: bigint, hi: bigint): string {
  if (lo > hi) throw new RangeError(`integer range ${lo}..${hi} is empty`);
  const alts: string[] = [];
  if (lo < 0n) alts.push(`"-" ${naturalRange(hi < 0n ? -hi : 1n, -lo)}`);
  if (hi >= 0n) alts.push(naturalRange(lo > 0n ? lo : 0n, hi));
  return alts.length === 1 ? alts[0]! : `( ${alts.join(' | ')} )`;
}

/** 0 <= lo <= hi, split by digit count. */
function naturalRange(lo: bigint, hi: bigint): string {
  const alts: string[] = [];
  for (let len = lo.toString().length; len <= hi.toString().length; len++) {
    const floor = len === 1 ? 0n : 10n ** BigInt(len - 1), ceil = 10n ** BigInt(len) - 1n;
    const a = lo > floor ? lo : floor, z = hi < ceil ? hi : ceil;
    if (a <= z) alts.push(sameLength(a.toString(), z.toString()));
  }
  return alts.length === 1 ? alts[0]! : `( ${alts.join(' | ')} )`;
}

/** Digit strings of one length between x and y inclusive (x <= y). */
function sameLength(x: string, y: string): string {
  if (x === y) return literal(x);
  const x0 = Number(x[0]), y0 = Number(y[0]), xs = x.slice(1), ys = y.slice(1);
  if (x0 === y0) return `${literal(String(x0))} ${sameLength(xs, ys)}`;
  const anyRest = xs.length === 0 ? '' : xs.length === 1 ? ' [0-9]' : ` [0-9]{${xs.length}}`;
  const lowFull = /^0*$/.test(xs), highFull = /^9*$/.test(ys);
  const from = lowFull ? x0 : x0 + 1, to = highFull ? y0 : y0 - 1;
  const alts: string[] = [];
  if (!lowFull) alts.push(`${literal(String(x0))} ${sameLength(xs, '9'.repeat(xs.length))}`);
  if (from <= to) alts.push(`${from === to ? literal(String(from)) : `[${from}-${to}]`}${anyRest}`);
  if (!highFull) alts.push(`${literal(String(y0))} ${sameLength('0'.repeat(ys.length), ys)}`);
  return alts.length === 1 ? alts[0]! : `( ${alts.join(' | ')} )`;
}

/**
 * A JSON object key (with trailing whitespace) that differs from every name in `declared`.
 * Such keys are spelled without escapes, so a declared name cannot come back in disguise
 * (`"\u0061"` for `"a"`); a trie over the declared names forbids ending on one of them.
 */
export function keyExcluding(b: GbnfBuilder, declared: readonly string[], hint: string): string {
  const plain = (cp: number) => cp >= 0x20 && cp !== 0x22 && cp !== 0x5c && cp !== 0x7f && !(cp >= 0xd800 && cp <= 0xdfff);
  interface Node { end: boolean; next: Map<number, Node> }
  const root: Node = { end: false, next: new Map() };
  for (const name of declared) {
    const cps = Array.from(name, (c) => c.codePointAt(0)!);
    // A name that needs an escape can never be spelled by an escape-free key.
    if (!cps.every(plain)) continue;
    let node = root;
    for (const cp of cps) {
      let child = node.next.get(cp);
      if (!child) node.next.set(cp, (child = { end: false, next: new Map() }));
      node = child;
    }
    node.end = true;
  }
  const keyChar = b.shared('key-char', () => '[^"\\\\\\x7F\\x00-\\x1F]');
  const rule = (node: Node, path: string): string => {
    const alts: string[] = [];
    for (const [cp, child] of node.next) alts.push(`${literal(String.fromCodePoint(cp))} ${rule(child, `${path}-${/^[A-Za-z0-9]$/.test(String.fromCodePoint(cp)) ? String.fromCodePoint(cp) : cp.toString(16)}`)}`);
    const others = [...node.next.keys()].map(classChar).join('');
    alts.push(`[^"\\\\\\x7F\\x00-\\x1F${others}] ${keyChar}*`);
    // A key may stop here unless that would spell a declared name.
    return b.add(path, (node.end ? '' : '| ') + alts.join(' | '));
  };
  return b.add(`${hint}-key`, `"\\"" ${rule(root, `${hint}-key-trie`)} "\\"" ${ws(b)}`);
}
