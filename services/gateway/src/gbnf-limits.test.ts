// The gateway's GBNF measure: what it counts, what it refuses and why, and that it reads grammars
// as libllama does (llama.cpp's sample grammars, this gateway's JSON grammars, and mutations of
// them: whatever one accepts the other accepts).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { LlamaError, Sampler, Vocab, llamaPackageDir, vocabDir } from '@strata/ggml';
import { checkGrammar, GrammarError, type GrammarLimits } from './gbnf-limits.ts';
import { jsonObjectGrammar, jsonSchemaGrammar } from './json-grammar.ts';

const LIMITS: GrammarLimits = { maxBytes: 32768, maxRules: 4096, maxAlternatives: 2048, maxNesting: 32, maxFanout: 256 };
const NONE: GrammarLimits = { maxBytes: 1 << 30, maxRules: 1 << 30, maxAlternatives: 1 << 30, maxNesting: 1 << 30, maxFanout: 1 << 30 };

const vocab = Vocab.load(join(vocabDir(), 'ggml-vocab-llama-spm.gguf'));
after(() => vocab.dispose());

/** Whether libllama compiles the grammar (it prints why not on stderr). */
function libllamaTakes(grammar: string): boolean {
  try {
    Sampler.checkGrammar(vocab, grammar);
    return true;
  } catch (err) {
    if (err instanceof LlamaError) return false;
    throw err;
  }
}

/** The code checkGrammar throws, or 'ok'. */
function verdict(grammar: string, limits = LIMITS, isToken?: (piece: string) => boolean): string {
  try {
    checkGrammar(grammar, limits, isToken);
    return 'ok';
  } catch (err) {
    if (err instanceof GrammarError) return `${err.code}: ${err.message}`;
    throw err;
  }
}

const samples = join(llamaPackageDir(), 'llama', 'grammars');

describe('GBNF limits', () => {
  it('measures rules, alternatives, nesting and fan-out as libllama builds them', () => {
    assert.deepEqual(checkGrammar('root ::= ("yes" | "no") " " [0-9] [0-9]\n', LIMITS), { bytes: 40, rules: 2, alternatives: 3, nesting: 1, fanout: 2 });
    // x{2,4}: two copies then two optional rules; x*: one rule; the group and 'item' are rules too.
    const shape = checkGrammar('root ::= item{2,4} ("," item)*\nitem ::= [a-z] | [0-9] | "-"', LIMITS);
    assert.equal(shape.rules, 2 + 2 + 1 + 1);
    assert.equal(shape.alternatives, 1 + 1 + 3);
    // root opens item's three alternatives; nothing opens more.
    assert.equal(shape.fanout, 3);
    // An optional leading element lets the next one open too: 1 ("a") + 3 (item).
    assert.equal(checkGrammar('root ::= "a"? item\nitem ::= "x" | "y" | "z"', LIMITS).fanout, 4);
  });

  it('refuses what passes a limit, saying which', () => {
    const words = Array.from({ length: 30_000 }, (_, i) => `"w${i}"`);
    assert.match(verdict(`root ::= ${words.join(' | ')}\n`), /^grammar_too_large: the grammar is \d+ bytes; at most 32768/);
    assert.match(verdict(`root ::= ${words.slice(0, 3000).join(' | ')}\n`, { ...LIMITS, maxBytes: 1 << 20 }), /^grammar_too_large: the grammar has more than 2048 alternatives/);
    // 600 alternatives are within the alternatives' limit, not the fan-out's.
    assert.match(verdict(`root ::= ${words.slice(0, 600).join(' | ')}\n`), /^grammar_too_large: one rule of the grammar opens more than 256 alternatives/);
    // Twelve rules of two alternatives each, every one through the next: 4096 stacks at once.
    const chain = Array.from({ length: 12 }, (_, i) => `r${i} ::= r${i + 1} | r${i + 1} "x"`).join('\n');
    assert.match(verdict(`root ::= r0\n${chain}\nr12 ::= "y"\n`), /^grammar_too_large: one rule .* opens more than 256/);
    assert.match(verdict(`root ::= ${'('.repeat(40)}"a"${')'.repeat(40)}\n`), /^grammar_too_large: the grammar nests groups more than 32 deep/);
    assert.match(verdict('root ::= "a"{0,1500} "b"{0,1500} "c"{0,1500}\n'), /^grammar_too_large: the grammar expands to more than 4096 rules/);
    // 700 bytes that libllama would write out as 1.1 million elements.
    assert.match(verdict(`root ::= ${Array(14).fill(`"${'a'.repeat(40)}"{1999}`).join(' ')}\n`), /^grammar_too_large: the grammar expands to more than 1048576 elements/);
    // Every limit met exactly is still taken.
    const fits = `root ::= ${words.slice(0, 256).join(' | ')}\n`;
    const shape = checkGrammar(fits, LIMITS);
    assert.deepEqual(checkGrammar(fits, { maxBytes: shape.bytes, maxRules: shape.rules, maxAlternatives: shape.alternatives, maxNesting: 1, maxFanout: shape.fanout }), shape);
  });

  it('refuses what is not GBNF with the reason and where', () => {
    const cases: [string, RegExp][] = [
      ['root ::= (', /expecting '\)' at line 1, column 11 \(the end\)/],
      ['root ::= "abc', /unexpected end of input/],
      ['root := "a"', /expecting '::=' at line 1, column 6/],
      ['root ::= "a"\nfoo ::= bar', /rule 'bar' is used but never defined/],
      ['item ::= "a"', /there is no 'root' rule/],
      ['root ::= "\\q"', /unknown escape at line 1, column 11/],
      ['root ::= "\\x4"', /expecting 2 hex digits/],
      ['root ::= * "a"', /expecting something to repeat/],
      ['root ::= "a"{2001}', /a repetition of more than 2000/],
      ['root ::= ("a" | ("b")){1000}', /expands into 2000 rules or more/],
      ['root ::= root "a" | "b"', /left recursion through rule 'root'/],
      ['root ::= x* root\nx ::= "a"', /left recursion/],
      ['root ::= "a" )', /expecting a newline or the end at line 1, column 14/],
    ];
    for (const [g, want] of cases) {
      const v = verdict(g);
      assert.match(v, /^invalid_grammar: invalid grammar: /, g);
      assert.match(v, want, g);
      assert.equal(libllamaTakes(g), false, `libllama refuses ${JSON.stringify(g)} too`);
    }
    // What libllama would get wrong: a NUL ends its C string early (it would take 'root ::= "a"'),
    // a maximum below the minimum makes it build rules without end.
    assert.match(verdict('root ::= "a"\0 | ('), /^invalid_grammar: .*NUL character/);
    assert.match(verdict('root ::= "a"{3,1}'), /^invalid_grammar: .*maximum is below its minimum/);
    // Left recursion through a repetition that may match nothing: libllama misses it and grows
    // without end until the process runs out of memory.
    assert.match(verdict('root ::= ws root "a" | "b"\nws ::= [ ]*'), /^invalid_grammar: .*left recursion through rule 'root'/);
    assert.match(verdict(''), /^invalid_grammar: .*there is no 'root' rule/);
  });

  it('asks the vocabulary whether a <piece> is one token, as libllama will', () => {
    const isToken = (piece: string) => vocab.tokenize(piece, false, true).length === 1;
    assert.equal(verdict('root ::= <s> "x" <[42]> !<[7]>', LIMITS, isToken), 'ok');
    assert.ok(libllamaTakes('root ::= <s> "x" <[42]> !<[7]>'));
    assert.match(verdict('root ::= "a" <nope-nope>', LIMITS, isToken), /^invalid_grammar: invalid grammar: <nope-nope> is not one token of the vocabulary at line 1, column 14/);
    assert.equal(libllamaTakes('root ::= "a" <nope-nope>'), false);
  });

  it("reads llama.cpp's sample grammars and the gateway's JSON grammars, and mutations of them, as libllama does", () => {
    const corpus = readdirSync(samples).filter((f) => f.endsWith('.gbnf')).map((f) => readFileSync(join(samples, f), 'utf8'));
    assert.ok(corpus.length >= 5, `sample grammars in ${samples}`);
    corpus.push(jsonObjectGrammar(), jsonSchemaGrammar({ type: 'object', properties: { name: { type: 'string', maxLength: 40 }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 5 } }, required: ['name'] }));
    for (const g of corpus) {
      assert.equal(verdict(g, NONE), 'ok', g);
      assert.ok(libllamaTakes(g));
    }
    // Deterministic mutations: drop, double or swap a character of each grammar.
    let seed = 20261130;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    let agree = 0, taken = 0;
    for (let i = 0; i < 200; i++) {
      const g = corpus[i % corpus.length]!;
      const at = rand(g.length);
      const kind = rand(3);
      const m = kind === 0 ? g.slice(0, at) + g.slice(at + 1) : kind === 1 ? g.slice(0, at) + g[at] + g.slice(at) : g.slice(0, at) + '()|*"[]{}\n'[rand(10)] + g.slice(at + 1);
      const ours = verdict(m, NONE) === 'ok';
      // What libllama would never return from (see above): refused here, not asked there.
      if (/maximum is below its minimum|left recursion/.test(verdict(m, NONE))) continue;
      assert.equal(ours, libllamaTakes(m), `${ours ? 'taken here, refused by libllama' : 'refused here, taken by libllama'}: ${verdict(m, NONE)}\n${m}`);
      agree++;
      if (ours) taken++;
    }
    console.log(`${agree} of 200 mutations compared (the rest never reach libllama), ${taken} valid; every verdict equal to libllama's`);
  });
});
