// JSON → GBNF for OpenAI's `response_format`. GBNF ("GGML BNF") is llama.cpp's grammar format:
// rules `name ::= ...` over literals, character classes, groups, alternation and repetition,
// starting at `root`; llama_sampler_init_grammar masks every token the grammar cannot continue
// with. The semantics follow llama.cpp's grammars/README.md, grammars/json.gbnf and
// common/json-schema-to-grammar.cpp (read as a reference; this is an independent implementation):
// optional whitespace is bounded, objects list required properties first, and
// `additionalProperties` is false unless the schema says otherwise. Unlike llama.cpp, whatever
// this module cannot enforce is refused with a JsonSchemaError instead of skipped.
//
// A schema keyword is either enforced, ignored as an annotation (ANNOTATIONS), or refused.
// Ignored on purpose: `format` values in IGNORED_FORMATS (JSON Schema 2020-12 treats format as an
// annotation by default), `oneOf` exclusivity (oneOf is compiled as anyOf), `uniqueItems: false`,
// and `maxLength`/`maxItems` past MAX_REPEAT (no completion gets that long).
import { GbnfBuilder, literal, MAX_REPEAT, repeat } from './json-grammar-gbnf.ts';
import {
  ENFORCED_FORMATS, formattedString, integerRange, jsonBoolean, jsonChar, jsonInteger, jsonNull, jsonNumber, jsonObject,
  jsonString, jsonValue, keyExcluding, ws, type EnforcedFormat,
} from './json-grammar-primitives.ts';

/** A schema the grammar cannot enforce; `pointer` is the JSON pointer of the offending keyword. */
export class JsonSchemaError extends Error {
  /** stable machine-readable code; the gateway answers HTTP 400 with it */
  readonly code = 'unsupported_schema';
  /** JSON pointer (RFC 6901) into the schema; '' is the schema itself */
  readonly pointer: string;
  constructor(pointer: string, message: string) {
    super(`${message} (at ${pointer === '' ? 'the schema root' : pointer})`);
    this.name = 'JsonSchemaError';
    this.pointer = pointer;
  }
}

/** The grammar of any JSON object: `response_format: {type: "json_object"}`. */
export function jsonObjectGrammar(): string {
  const b = new GbnfBuilder();
  b.define(b.reserve('root'), jsonObject(b));
  return b.render();
}

/** The grammar of the JSON documents a schema admits: `{type: "json_schema", json_schema: {schema}}`. */
export function jsonSchemaGrammar(schema: unknown): string {
  const b = new GbnfBuilder();
  new SchemaCompiler(schema, b).compile('root');
  return b.render();
}

/**
 * Adds the rules of the JSON documents `schema` admits to a grammar being built (its `$ref`s
 * resolve inside `schema` alone) and returns the name of its rule, derived from `hint`.
 */
export function jsonSchemaRule(b: GbnfBuilder, schema: unknown, hint: string): string {
  return new SchemaCompiler(schema, b).compile(hint);
}

/** Keywords that never change which documents are valid. `x-*` extensions count too. */
const ANNOTATIONS = new Set([
  '$schema', '$id', '$comment', '$defs', 'definitions', 'title', 'description', 'default', 'examples', 'deprecated',
  'readOnly', 'writeOnly', 'contentEncoding', 'contentMediaType',
]);

/** Keywords this compiler enforces. */
const ENFORCED = new Set([
  'type', 'enum', 'const', '$ref', 'anyOf', 'oneOf', 'allOf', 'properties', 'required', 'additionalProperties', 'items',
  'minItems', 'maxItems', 'uniqueItems', 'minLength', 'maxLength', 'format', 'minimum', 'maximum', 'exclusiveMinimum',
  'exclusiveMaximum',
]);

/** Formats accepted but not enforced: any string passes. */
const IGNORED_FORMATS = new Set(['email', 'idn-email', 'hostname', 'idn-hostname', 'uri', 'uri-reference', 'iri', 'iri-reference']);

const TYPES = ['null', 'boolean', 'object', 'array', 'number', 'integer', 'string'] as const;
type JsonType = (typeof TYPES)[number];

/** Which keywords imply which type when `type` is absent (a schema with none admits any value). */
const TYPE_KEYWORDS: Record<string, JsonType> = {
  properties: 'object', required: 'object', additionalProperties: 'object', items: 'array', minItems: 'array',
  maxItems: 'array', minLength: 'string', maxLength: 'string', format: 'string', minimum: 'number', maximum: 'number',
  exclusiveMinimum: 'number', exclusiveMaximum: 'number',
};

/** Integers with at most 16 digits when a bound is left open, like the plain integer rule. */
const DEFAULT_INT_LIMIT = 10n ** 16n - 1n;

type Schema = Record<string, unknown>;

function isRecord(v: unknown): v is Schema {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function child(pointer: string, ...segments: (string | number)[]): string {
  return pointer + segments.map((s) => `/${String(s).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
}

function fail(pointer: string, message: string): never {
  throw new JsonSchemaError(pointer, message);
}

/** One compilation: the schema document, the grammar being built, and the $ref rules so far. */
class SchemaCompiler {
  readonly #root: unknown;
  readonly #b: GbnfBuilder;
  /** $ref target pointer → its rule */
  readonly #refs = new Map<string, string>();
  /** $ref targets being compiled → container depth when they began (left-recursion check) */
  readonly #open = new Map<string, number>();
  /** objects and arrays entered: a grammar that re-enters a $ref at the same depth has consumed nothing */
  #depth = 0;

  constructor(root: unknown, b: GbnfBuilder) {
    this.#root = root;
    this.#b = b;
  }

  /** Defines the document's rule (named from `hint`) and returns its name. */
  compile(hint: string): string {
    const root = this.#b.reserve(hint);
    this.#refs.set('', root);
    this.#open.set('', 0);
    this.#b.define(root, this.#visit(this.#root, '', hint === 'root' ? '' : hint));
    return root;
  }

  /** The rule of the values `schema` admits (each such rule eats trailing whitespace). */
  #visit(schema: unknown, ptr: string, hint: string): string {
    if (schema === true) return jsonValue(this.#b);
    if (schema === false) fail(ptr, 'the schema false admits no value');
    if (!isRecord(schema)) fail(ptr, 'a schema must be an object or a boolean');
    this.#checkKeywords(schema, ptr);
    if ('$ref' in schema) return this.#ref(schema, ptr);
    if ('anyOf' in schema || 'oneOf' in schema) return this.#anyOf(schema, ptr, hint);
    if ('allOf' in schema) return this.#allOf(schema, ptr, hint);
    if ('enum' in schema || 'const' in schema) return this.#constants(schema, ptr, hint);
    const types = this.#types(schema, ptr);
    if (types.length === 0) return jsonValue(this.#b);
    const rules = types.map((t) => this.#typed(t, schema, ptr, hint));
    return rules.length === 1 ? rules[0]! : this.#b.add(hint || 'root-value', rules.join(' | '));
  }

  #checkKeywords(schema: Schema, ptr: string): void {
    for (const key of Object.keys(schema)) {
      if (ANNOTATIONS.has(key) || key.startsWith('x-')) continue;
      if (!ENFORCED.has(key)) fail(child(ptr, key), `the keyword ${key} is not supported`);
    }
    if (schema.uniqueItems !== undefined && schema.uniqueItems !== false) fail(child(ptr, 'uniqueItems'), 'uniqueItems is not supported');
  }

  /** Keywords beside a combinator must not constrain anything on their own. */
  #onlyAnnotationsBeside(schema: Schema, ptr: string, keyword: string, allowed: readonly string[] = []): void {
    for (const key of Object.keys(schema)) {
      if (key === keyword || allowed.includes(key) || ANNOTATIONS.has(key) || key.startsWith('x-')) continue;
      fail(child(ptr, key), `${key} beside ${keyword} is not supported`);
    }
  }

  #ref(schema: Schema, ptr: string): string {
    this.#onlyAnnotationsBeside(schema, ptr, '$ref');
    const at = child(ptr, '$ref');
    const ref = schema.$ref;
    if (typeof ref !== 'string' || !ref.startsWith('#')) fail(at, 'only local $ref ("#/$defs/...") is supported');
    let target: string;
    try {
      target = decodeURIComponent(ref.slice(1));
    } catch {
      fail(at, `$ref ${ref} is not a valid URI fragment`);
    }
    if (target !== '' && !target.startsWith('/')) fail(at, `$ref ${ref} is not a JSON pointer`);
    const known = this.#refs.get(target);
    if (known !== undefined) {
      if (this.#open.get(target) === this.#depth) fail(at, `$ref ${ref} recurses without passing through an object or array`);
      return known;
    }
    const resolved = resolvePointer(this.#root, target);
    if (resolved === undefined) fail(at, `$ref ${ref} does not resolve`);
    const name = this.#b.reserve(target.split('/').pop() || 'ref');
    this.#refs.set(target, name);
    this.#open.set(target, this.#depth);
    this.#b.define(name, this.#visit(resolved, target, name));
    this.#open.delete(target);
    return name;
  }

  #anyOf(schema: Schema, ptr: string, hint: string): string {
    const keyword = 'anyOf' in schema ? 'anyOf' : 'oneOf';
    this.#onlyAnnotationsBeside(schema, ptr, keyword);
    const branches = schema[keyword];
    if (!Array.isArray(branches) || branches.length === 0) fail(child(ptr, keyword), `${keyword} must be a non-empty array`);
    // oneOf's "exactly one" cannot be checked by a grammar; branches are alternatives either way.
    const rules = branches.map((s, i) => this.#visit(s, child(ptr, keyword, i), `${hint || 'alt'}-${i}`));
    return this.#b.add(hint || 'root-value', [...new Set(rules)].join(' | '));
  }

  #allOf(schema: Schema, ptr: string, hint: string): string {
    this.#onlyAnnotationsBeside(schema, ptr, 'allOf');
    const parts = schema.allOf;
    if (!Array.isArray(parts) || parts.length !== 1) fail(child(ptr, 'allOf'), 'allOf is supported with exactly one schema');
    return this.#visit(parts[0], child(ptr, 'allOf', 0), hint);
  }

  /** enum and const: the canonical (compact) spelling of each allowed value. */
  #constants(schema: Schema, ptr: string, hint: string): string {
    this.#onlyAnnotationsBeside(schema, ptr, 'enum' in schema ? 'enum' : 'const', ['enum', 'const', 'type']);
    let values: unknown[];
    if ('enum' in schema) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) fail(child(ptr, 'enum'), 'enum must be a non-empty array');
      values = schema.enum;
      if ('const' in schema) values = values.filter((v) => canonical(v) === canonical(schema.const));
    } else {
      values = [schema.const];
    }
    if ('type' in schema) {
      const types = this.#types(schema, ptr);
      values = values.filter((v) => types.some((t) => hasType(v, t)));
    }
    const spelled = [...new Set(values.map(canonical))];
    if (spelled.length === 0) fail(ptr, 'no value satisfies enum, const and type together');
    return this.#b.add(hint || 'root-constant', `( ${spelled.map(literal).join(' | ')} ) ${ws(this.#b)}`);
  }

  /** The types a schema admits: `type`, or those its keywords imply; [] for any value. */
  #types(schema: Schema, ptr: string): JsonType[] {
    let types: JsonType[];
    if ('type' in schema) {
      const raw = Array.isArray(schema.type) ? schema.type : [schema.type];
      raw.forEach((t, i) => {
        if (!TYPES.includes(t as JsonType)) fail(Array.isArray(schema.type) ? child(ptr, 'type', i) : child(ptr, 'type'), `unknown type ${JSON.stringify(t)}`);
      });
      if (raw.length === 0) fail(child(ptr, 'type'), 'type must name at least one type');
      types = raw as JsonType[];
    } else {
      types = Object.keys(schema).flatMap((k) => TYPE_KEYWORDS[k] ?? []);
    }
    types = [...new Set(types)];
    // Every integer is a number; keep the wider rule only.
    return types.includes('number') ? types.filter((t) => t !== 'integer') : types;
  }

  #typed(type: JsonType, schema: Schema, ptr: string, hint: string): string {
    const b = this.#b;
    switch (type) {
      case 'null': return jsonNull(b);
      case 'boolean': return jsonBoolean(b);
      case 'string': return this.#string(schema, ptr, hint);
      case 'integer': return this.#integer(schema, ptr, hint);
      case 'number': {
        for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum']) {
          if (k in schema) fail(child(ptr, k), `${k} is supported only with type integer`);
        }
        return jsonNumber(b);
      }
      case 'object': return this.#object(schema, ptr, hint);
      case 'array': return this.#array(schema, ptr, hint);
    }
  }

  #string(schema: Schema, ptr: string, hint: string): string {
    const b = this.#b;
    const format = schema.format;
    if (format !== undefined && !(typeof format === 'string' && IGNORED_FORMATS.has(format))) {
      if (!ENFORCED_FORMATS.includes(format as EnforcedFormat)) fail(child(ptr, 'format'), `format ${JSON.stringify(format)} is not supported`);
      for (const k of ['minLength', 'maxLength']) if (k in schema) fail(child(ptr, k), `${k} beside format is not supported`);
      return formattedString(b, format as EnforcedFormat);
    }
    const [min, max] = this.#bounds(schema, ptr, 'minLength', 'maxLength');
    if (min === 0 && max === null) return jsonString(b);
    return b.add(hint || 'root-string', `"\\"" ${repeat(b, jsonChar(b), min, max, `${hint}-chars`)} "\\"" ${ws(b)}`);
  }

  /** A min/max pair of counts: min defaults to 0, max to null (unbounded). */
  #bounds(schema: Schema, ptr: string, minKey: string, maxKey: string): [number, number | null] {
    const count = (key: string): number | undefined => {
      const v = schema[key];
      if (v === undefined) return undefined;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) fail(child(ptr, key), `${key} must be a non-negative integer`);
      return v;
    };
    const min = count(minKey) ?? 0;
    let max = count(maxKey) ?? null;
    if (min > MAX_REPEAT) fail(child(ptr, minKey), `${minKey} above ${MAX_REPEAT} is not supported`);
    if (max !== null && max < min) fail(child(ptr, maxKey), `${maxKey} is below ${minKey}`);
    if (max !== null && max > MAX_REPEAT) max = null;
    return [min, max];
  }

  #integer(schema: Schema, ptr: string, hint: string): string {
    const bound = (key: string): number | undefined => {
      const v = schema[key];
      if (v === undefined) return undefined;
      if (typeof v !== 'number' || !Number.isFinite(v)) fail(child(ptr, key), `${key} must be a number`);
      return v;
    };
    const lows: bigint[] = [], highs: bigint[] = [];
    const min = bound('minimum'), max = bound('maximum'), exMin = bound('exclusiveMinimum'), exMax = bound('exclusiveMaximum');
    if (min !== undefined) lows.push(BigInt(Math.ceil(min)));
    if (exMin !== undefined) lows.push(BigInt(Math.floor(exMin)) + 1n);
    if (max !== undefined) highs.push(BigInt(Math.floor(max)));
    if (exMax !== undefined) highs.push(BigInt(Math.ceil(exMax)) - 1n);
    if (lows.length === 0 && highs.length === 0) return jsonInteger(this.#b);
    // An open side reaches as far as the plain integer rule, or as far as the other bound.
    const limit = [DEFAULT_INT_LIMIT, ...lows, ...highs].reduce((m, v) => (v < 0n ? -v : v) > m ? (v < 0n ? -v : v) : m);
    const lo = lows.length ? lows.reduce((a, v) => (v > a ? v : a)) : -limit;
    const hi = highs.length ? highs.reduce((a, v) => (v < a ? v : a)) : limit;
    if (lo > hi) fail(ptr, `no integer lies between the bounds ${lo} and ${hi}`);
    return this.#b.add(hint || 'root-integer', `${integerRange(lo, hi)} ${ws(this.#b)}`);
  }

  #object(schema: Schema, ptr: string, hint: string): string {
    const b = this.#b;
    const props = schema.properties ?? {};
    if (!isRecord(props)) fail(child(ptr, 'properties'), 'properties must be an object');
    const required = schema.required ?? [];
    if (!Array.isArray(required)) fail(child(ptr, 'required'), 'required must be an array of property names');
    required.forEach((name, i) => {
      if (typeof name !== 'string') fail(child(ptr, 'required', i), 'required must be an array of property names');
      if (!Object.hasOwn(props, name)) fail(child(ptr, 'required', i), `required property ${JSON.stringify(name)} is not declared in properties`);
    });
    // llama.cpp's convention: declared properties close the object unless the schema opens it.
    const additional = 'additionalProperties' in schema ? schema.additionalProperties : !('properties' in schema);
    if (!('properties' in schema) && additional === true) return jsonObject(b);

    const kv = (name: string, value: string) => `${literal(JSON.stringify(name))} ${ws(b)} ":" ${ws(b)} ${value}`;
    const requiredKvs: string[] = [], optionalKvs: string[] = [];
    this.#depth++;
    try {
      for (const [name, sub] of Object.entries(props)) {
        const at = child(ptr, 'properties', name);
        const isRequired = required.includes(name);
        if (sub === false) {
          if (isRequired) fail(at, `required property ${JSON.stringify(name)} admits no value`);
          continue;
        }
        const rule = b.add(`${hint}-${name}-kv`, kv(name, this.#visit(sub, at, hint ? `${hint}-${name}` : name)));
        (isRequired ? requiredKvs : optionalKvs).push(rule);
      }
      // Extra keys come last, after every declared one (a subset of the valid orders).
      let tail: string | null = null;
      if (additional !== false) {
        const value = this.#visit(additional, child(ptr, 'additionalProperties'), `${hint}-additional`);
        const key = Object.keys(props).length === 0 ? jsonString(b) : keyExcluding(b, Object.keys(props), `${hint}-additional`);
        const extra = b.add(`${hint}-additional-kv`, `${key} ":" ${ws(b)} ${value}`);
        tail = b.add(`${hint}-additional`, `${extra} ( "," ${ws(b)} ${extra} )*`);
      }
      // rest(i): a non-empty, in-order choice among optional i.. and the extra keys.
      let rest = tail;
      for (let i = optionalKvs.length - 1; i >= 0; i--) {
        const own = optionalKvs[i]!;
        rest = rest === null ? own : b.add(`${hint}-rest-${i}`, `${own} ( "," ${ws(b)} ${rest} )? | ${rest}`);
      }
      let body = requiredKvs.join(` "," ${ws(b)} `);
      if (rest !== null) body = requiredKvs.length ? `${body} ( "," ${ws(b)} ${rest} )?` : `${rest}?`;
      return b.add(hint || 'root-object', `"{" ${ws(b)} ${body ? `${body} ` : ''}"}" ${ws(b)}`);
    } finally {
      this.#depth--;
    }
  }

  #array(schema: Schema, ptr: string, hint: string): string {
    const b = this.#b;
    const items = schema.items ?? true;
    if (Array.isArray(items)) fail(child(ptr, 'items'), 'items as an array (tuples) is not supported');
    const [min, maxItems] = this.#bounds(schema, ptr, 'minItems', 'maxItems');
    if (items === false && min > 0) fail(child(ptr, 'items'), 'items false admits no item but minItems asks for some');
    const max = items === false ? 0 : maxItems;
    const open = `"[" ${ws(b)}`, close = `"]" ${ws(b)}`;
    if (max === 0) return b.add(hint || 'root-array', `${open} ${close}`);
    this.#depth++;
    try {
      const item = this.#visit(items, child(ptr, 'items'), `${hint}-item`);
      const more = repeat(b, `( "," ${ws(b)} ${item} )`, Math.max(0, min - 1), max === null ? null : max - 1, `${hint}-items`);
      let list = more ? `${item} ${more}` : item;
      // `( list )?` would count every rule inside list against the parser's repetition limit.
      if (min === 0) list = `${b.add(`${hint}-list`, list)}?`;
      return b.add(hint || 'root-array', `${open} ${list} ${close}`);
    } finally {
      this.#depth--;
    }
  }
}

/** The value at a JSON pointer (RFC 6901) inside `doc`, or undefined. */
function resolvePointer(doc: unknown, pointer: string): unknown {
  if (pointer === '') return doc;
  let cur: unknown = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur) && /^(0|[1-9][0-9]*)$/.test(seg)) cur = cur[Number(seg)];
    else if (isRecord(cur) && Object.hasOwn(cur, seg)) cur = cur[seg];
    else return undefined;
  }
  return cur;
}

/** Compact JSON, the one spelling of a constant the grammar allows. */
function canonical(v: unknown): string {
  return JSON.stringify(v);
}

function hasType(v: unknown, t: JsonType): boolean {
  switch (t) {
    case 'null': return v === null;
    case 'boolean': return typeof v === 'boolean';
    case 'string': return typeof v === 'string';
    case 'number': return typeof v === 'number';
    case 'integer': return typeof v === 'number' && Number.isInteger(v);
    case 'object': return isRecord(v);
    case 'array': return Array.isArray(v);
  }
}
