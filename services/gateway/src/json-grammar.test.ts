// JSON grammars checked by libllama itself: every grammar must parse in llama_sampler_init_grammar,
// and its grammar sampler must take exactly the documents the schema admits. Refusals must name
// the offending keyword. The digit and repetition arithmetic is also checked exhaustively by
// reading the (non-recursive) GBNF as a regular expression.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { LlamaError, Sampler, Vocab, vocabDir } from '@strata/ggml';
import { BYTE0, grammarVerdict } from './grammar-verdict.ts';
import { GbnfBuilder, repeat } from './json-grammar-gbnf.ts';
import { integerRange, MAX_WS } from './json-grammar-primitives.ts';
import { JsonSchemaError, jsonObjectGrammar, jsonSchemaGrammar } from './json-grammar.ts';

const vocab = Vocab.load(join(vocabDir(), 'ggml-vocab-llama-spm.gguf'));
after(() => vocab.dispose());

/** What libllama's grammar sampler makes of `text` (grammar-verdict.ts). */
const verdict = (grammar: string, text: string): string => grammarVerdict(vocab, grammar, text);

/** Where a text in `rejected` must be rejected: the byte offset of this mark, which is removed. */
const HERE = '‸';

/** Asserts the verdict on each text: `complete`, `incomplete`, or rejected at its HERE mark. */
function check(grammar: string, texts: { complete?: string[]; incomplete?: string[]; rejected?: string[] }): void {
  const cases: [string, string][] = [
    ...(texts.complete ?? []).map((t): [string, string] => [t, 'complete']),
    ...(texts.incomplete ?? []).map((t): [string, string] => [t, 'incomplete']),
    ...(texts.rejected ?? []).map((t): [string, string] => {
      const at = t.indexOf(HERE);
      assert.ok(at >= 0, `no ${HERE} in ${t}`);
      return [t.slice(0, at) + t.slice(at + 1), `rejected at ${Buffer.byteLength(t.slice(0, at))}`];
    }),
  ];
  for (const [text, want] of cases) assert.equal(verdict(grammar, text), want, `${JSON.stringify(text)} under\n${grammar}`);
}

/** Rule name → body of a rendered grammar. */
function rulesOf(grammar: string): Map<string, string> {
  return new Map(grammar.trim().split('\n').map((line) => {
    const [name, body] = line.split(' ::= ');
    return [name!, body!];
  }));
}

/** A non-recursive GBNF expression over plain literals and classes as an anchored RegExp. */
function toRegExp(expr: string, rules = new Map<string, string>()): RegExp {
  const convert = (e: string): string => e.replace(/"((?:[^"\\]|\\.)*)"|(\[[^\]]*\])|([a-z][a-z0-9-]*)|(\()|(\s+)/g, (m, lit?: string, cls?: string, name?: string, open?: string) => {
    if (lit !== undefined) return lit.replace(/\\(.)/g, '$1').replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');
    if (cls !== undefined) return cls;
    if (name !== undefined) return `(?:${convert(rules.get(name) ?? assert.fail(`no rule ${name}`))})`;
    if (open !== undefined) return '(?:';
    return m.trim();
  });
  return new RegExp(`^(?:${convert(expr)})$`);
}

describe('the libllama harness', () => {
  it('tells complete, incomplete and rejected apart, and libllama refuses a broken grammar', () => {
    assert.ok(vocab.eos < BYTE0);
    for (let b = 0; b < 256; b++) assert.deepEqual([...vocab.tokenBytes(BYTE0 + b)], [b], `byte token ${BYTE0 + b}`);
    check('root ::= "ab" [0-9]', { complete: ['ab7'], incomplete: ['ab'], rejected: ['a‸c', 'ab7‸7', '‸x'] });
    assert.throws(() => check('root ::= "ab"', { complete: ['ac'] }), /rejected at 1/);
    assert.throws(() => Sampler.create(vocab.size, { grammar: 'root ::= ( "a"' }, vocab), LlamaError);
  });
});

describe('jsonObjectGrammar', () => {
  const g = jsonObjectGrammar();

  it('takes any JSON object, escapes and all', () => {
    check(g, {
      complete: ['{"a": [1, 2.5e3, "x\\n", true, null]}', '{}', '{ "k\\"\\\\\\/\\u00e9\\t": {"n": -0.5E-7, "é€😀": []} }\n'],
      incomplete: ['{"a": 1', '{"a": "é'],
    });
  });

  it('refuses non-objects, raw controls, bad escapes and malformed JSON', () => {
    check(g, {
      rejected: ['‸[1]', '‸"x"', '{"a‸\nb": 1}', '{"a": "\\‸x"}', '{"a": 1,‸}', '{"a": 0‸1}', '{‸\'a\': 1}', '{"a": tru‸x}', '{"a": 1}‸{}'],
    });
  });

  it('bounds whitespace between tokens', () => {
    check(g, { complete: [`{${' '.repeat(MAX_WS)}}`, `{\n${' '.repeat(MAX_WS - 1)}}`], rejected: [`{${' '.repeat(MAX_WS)}‸ }`] });
  });
});

describe('jsonSchemaGrammar', () => {
  it('puts required properties first in declared order, then any in-order subset of the optional ones', () => {
    const g = jsonSchemaGrammar({
      type: 'object',
      properties: { id: { type: 'integer' }, note: { type: 'string' }, name: { type: 'string' }, tag: { type: 'boolean' } },
      required: ['name', 'id'],
    });
    check(g, {
      complete: ['{"id": 7, "name": "x"}', '{"id": 7, "name": "x", "note": "n", "tag": true}', '{"id":7,"name":"x","tag":false}'],
      rejected: [
        '{"id": 7‸}',
        '{"‸name": "x", "id": 7}',
        '{"id": 7, "name": "x", "tag": true‸, "note": "n"}',
        '{"id": 7, "name": "x", "‸other": 1}',
        '{"id": 7‸.5, "name": "x"}',
      ],
    });
  });

  it('takes only the canonical spelling of enum and const values of any type', () => {
    const g = jsonSchemaGrammar({ enum: ['red', 'gr"een', 3, null, [1, { a: true }]] });
    check(g, {
      complete: ['"red"', '"gr\\"een"', '3', 'null', '[1,{"a":true}]'],
      rejected: ['"‸blue"', '3‸.0', '[1,‸ {"a":true}]'],
    });
    check(jsonSchemaGrammar({ type: 'string', enum: ['a', 1], const: 'a' }), { complete: ['"a"'], rejected: ['‸1'] });
  });

  it('counts items of nested arrays within minItems and maxItems', () => {
    const g = jsonSchemaGrammar({ type: 'array', maxItems: 2, items: { type: 'array', items: { type: 'integer' }, minItems: 1, maxItems: 2 } });
    check(g, { complete: ['[]', '[[1], [2, 3]]'], rejected: ['[[‸]]', '[[1, 2‸, 3]]', '[[1], [2]‸, [3]]'] });
  });

  it('counts string characters, an escape as one', () => {
    const g = jsonSchemaGrammar({ type: 'string', minLength: 2, maxLength: 3 });
    check(g, { complete: ['"ab"', '"a\\"c"'], rejected: ['"a‸"', '"abc‸d"'] });
  });

  it('takes any branch of anyOf and oneOf, and type arrays', () => {
    const g = jsonSchemaGrammar({ anyOf: [{ type: 'string', maxLength: 2 }, { type: 'boolean' }] });
    check(g, { complete: ['"ab"', 'true'], rejected: ['"ab‸c"', '‸1'] });
    const nullable = jsonSchemaGrammar({ type: 'object', properties: { v: { type: ['integer', 'null'] } }, required: ['v'] });
    check(nullable, { complete: ['{"v": null}', '{"v": -12}'], rejected: ['{"v": ‸"x"}'] });
    check(jsonSchemaGrammar({ oneOf: [{ const: 1 }, { type: 'null' }] }), { complete: ['1', 'null'], rejected: ['‸2'] });
  });

  it('follows recursive $ref through $defs and definitions', () => {
    const g = jsonSchemaGrammar({
      $ref: '#/$defs/node',
      $defs: {
        node: {
          type: 'object',
          properties: { v: { $ref: '#/definitions/small' }, kids: { type: 'array', items: { $ref: '#/$defs/node' } } },
          required: ['v'],
        },
      },
      definitions: { small: { type: 'integer', minimum: 0, maximum: 9 } },
    });
    check(g, {
      complete: ['{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": [{"v": 4, "kids": []}]}]}'],
      rejected: ['{"v": 1, "kids": [{"v": 1‸0}]}', '{"v": 1, "kids": [‸3]}'],
    });
    const self = jsonSchemaGrammar({ type: 'object', properties: { up: { $ref: '#' } } });
    check(self, { complete: ['{"up": {"up": {}}}'], rejected: ['{"up": {"up": ‸1}}'] });
  });

  it('honours integer bounds, exclusive ones included', () => {
    const g = jsonSchemaGrammar({ type: 'integer', minimum: -5, exclusiveMaximum: 124 });
    check(g, { complete: ['-5', '0', '123', '99'], rejected: ['-‸6', '12‸4', '0‸07', '123‸0'] });
  });

  it('escapes odd property names and constants into GBNF literals', () => {
    const name = 'we"ird\\key\n\u0001é#[]';
    const g = jsonSchemaGrammar({ type: 'object', properties: { [name]: { const: 'x"y\\z' } }, required: [name] });
    check(g, { complete: [JSON.stringify({ [name]: 'x"y\\z' })] });
  });

  it('lets extra keys past the declared ones, never repeating a declared name', () => {
    const g = jsonSchemaGrammar({ type: 'object', properties: { a: { type: 'integer' }, ab: { type: 'null' } }, required: ['a'], additionalProperties: true });
    check(g, {
      complete: ['{"a": 1, "b": [2], "abc": {}, "": 0}', '{"a": 1, "ab": null, "x": 1}'],
      rejected: ['{"a": 1, "a‸": 2}', '{"a": 1, "‸\\u0061": 2}', '{"a": 1, "x": 1, "ab‸": null}'],
    });
    check(jsonSchemaGrammar({ type: 'object', additionalProperties: { type: 'integer' } }), { complete: ['{"x": 1, "y\\n": 2}'], rejected: ['{"x": ‸"s"}'] });
    check(jsonSchemaGrammar({ type: 'object', properties: {} }), { complete: ['{}'], rejected: ['{‸"a": 1}'] });
    check(jsonSchemaGrammar({}), { complete: ['[{"any": "thing"}, 1]'] });
  });

  it('enforces date, time, date-time, uuid and ipv4 formats and ignores email', () => {
    const g = jsonSchemaGrammar({
      type: 'array',
      items: { anyOf: ['date', 'time', 'date-time', 'uuid', 'ipv4'].map((format) => ({ type: 'string', format })) },
    });
    check(g, {
      complete: ['["2024-02-29", "23:59:59.123+05:30", "1999-12-31T00:00:00Z", "123e4567-e89b-12d3-a456-426614174000", "192.168.0.255"]'],
      rejected: [
        '["2024-1‸3-01"]',
        '["2024-01-01T2‸4:00:00Z"]',
        '["2024-02-29T12:00:00‸"]',
        '["23:59:‸60Z"]',
        '["192.168.0.25‸6"]',
        '["123e4567-e89b-12d3-a456-42661417400‸g"]',
        '[‸1]',
      ],
    });
    check(jsonSchemaGrammar({ type: 'string', format: 'email' }), { complete: ['"not an email"'] });
  });

  it('writes large bounds that libllama parses', () => {
    for (const schema of [{ type: 'string', minLength: 1500, maxLength: 250000 }, { type: 'array', items: { type: 'integer' }, maxItems: 5000 }, { type: 'integer', minimum: -1e20 }]) {
      assert.doesNotThrow(() => Sampler.create(vocab.size, { grammar: jsonSchemaGrammar(schema) }, vocab).dispose(), JSON.stringify(schema));
    }
  });

  it('refuses what it cannot enforce with the JSON pointer of the keyword', () => {
    const cases: [unknown, string][] = [
      [{ type: 'object', properties: { name: { type: 'string', pattern: '^a' } } }, '/properties/name/pattern'],
      [{ not: { type: 'null' } }, '/not'],
      [{ type: 'array', items: { if: {}, then: {} } }, '/items/if'],
      [{ type: 'string', format: 'regex' }, '/format'],
      [{ type: 'number', minimum: 0 }, '/minimum'],
      [{ type: 'array', uniqueItems: true }, '/uniqueItems'],
      [{ type: 'object', nullable: true }, '/nullable'],
      [{ $defs: { 'a/b': { anyOf: [{ $ref: '#/$defs/a~1b' }, { type: 'null' }] } }, $ref: '#/$defs/a~1b' }, '/$defs/a~1b/anyOf/0/$ref'],
      [{ $ref: 'https://example.com/s.json' }, '/$ref'],
      [{ $ref: '#/$defs/missing' }, '/$ref'],
      [{ type: 'object', properties: { a: {} }, required: ['a', 'toString'] }, '/required/1'],
      [{ type: 'string', enum: [1, 2] }, ''],
      [{ type: 'integer', minimum: 3, maximum: 2.5 }, ''],
      [{ anyOf: [{ type: 'string' }], type: 'string' }, '/type'],
      [{ allOf: [{}, {}] }, '/allOf'],
      [false, ''],
    ];
    for (const [schema, pointer] of cases) {
      assert.throws(() => jsonSchemaGrammar(schema), (err: unknown) => {
        assert.ok(err instanceof JsonSchemaError, String(err));
        assert.equal(err.code, 'unsupported_schema');
        assert.equal(err.pointer, pointer, err.message);
        return true;
      }, JSON.stringify(schema));
    }
  });
});

describe('GBNF arithmetic', () => {
  it('integer ranges hold exactly the integers between their bounds', () => {
    const bounds = [-1001, -100, -99, -10, -9, -1, 0, 1, 9, 10, 11, 19, 20, 99, 100, 101, 109, 190, 199, 200, 999, 1000, 1234];
    const probes = Array.from({ length: 2600 }, (_, i) => i - 1300);
    for (const lo of bounds) {
      for (const hi of bounds) {
        if (lo > hi) continue;
        const re = toRegExp(integerRange(BigInt(lo), BigInt(hi)));
        for (const n of probes) assert.equal(re.test(String(n)), n >= lo && n <= hi, `${n} in ${lo}..${hi}: ${re}`);
        assert.ok(!re.test('-0') && !re.test('00') && !re.test(`0${Math.max(lo, 1)}`), `leading zeros in ${lo}..${hi}`);
      }
    }
  });

  it('repetition past the parser limit keeps exact bounds', () => {
    for (const [min, max] of [[0, 2500], [1500, 2600], [1200, null], [0, 1001], [999, 3000], [2000, 2000], [0, 1_000_000]] as const) {
      const b = new GbnfBuilder();
      b.define(b.reserve('root'), repeat(b, '"a"', min, max, 'x'));
      const grammar = b.render();
      const re = toRegExp('root', rulesOf(grammar));
      const top = max ?? min + 3000;
      for (const n of new Set([0, 1, min - 1, min, min + 1, 999, 1000, 1001, 1999, 2000, 2001, top - 1, top, top + 1])) {
        if (n < 0) continue;
        assert.equal(re.test('a'.repeat(n)), n >= min && (max === null || n <= max), `${n} in ${min}..${max}: ${grammar}`);
      }
      for (const m of grammar.matchAll(/\{(\d+)(?:,(\d*))?\}/g)) assert.ok(Number(m[1]) <= 1000 && Number(m[2] || 0) <= 1000, m[0]);
    }
  });
});
