// Grammar costs (npm run bench -- --only grammar): what the gateway pays to measure a grammar
// against its limits and to have libllama compile it, and what the last stage pays per token to
// sample under it (libllama's grammar sampler over the default model's vocabulary), for grammars
// inside the default limits and past them.
import { Sampler, Vocab } from '@strata/ggml';
import { ensureDefaultModel } from '@strata/model';
import { checkGrammar, GrammarError, type GrammarLimits } from '../../services/gateway/src/gbnf-limits.ts';
import { jsonObjectGrammar, jsonSchemaGrammar } from '../../services/gateway/src/json-grammar.ts';

const LIMITS: GrammarLimits = { maxBytes: 32768, maxRules: 4096, maxAlternatives: 2048, maxNesting: 32, maxFanout: 256 };
const NONE: GrammarLimits = { maxBytes: 1 << 30, maxRules: 1 << 30, maxAlternatives: 1 << 30, maxNesting: 1 << 30, maxFanout: 1 << 30 };

/** One grammar's costs, in milliseconds. */
export interface GrammarCost {
  name: string;
  bytes: number;
  /** the default limits' verdict: 'ok' or the code */
  verdict: string;
  /** the gateway's measure with the default limits (stops at the first passed) */
  limitedMs: number;
  /** the whole measure, no limits */
  measureMs: number;
  /** libllama's compile (llama_sampler_init_grammar) */
  compileMs: number;
  /** one sample under the grammar, averaged */
  tokenMs: number;
}

function ms(f: () => void, reps = 1): number {
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) f();
  return (performance.now() - t0) / reps;
}

/** Prints the grammar benchmark; returns its figures. */
export function runGrammarBench(): GrammarCost[] {
  const vocab = Vocab.load(ensureDefaultModel());
  const words = (n: number) => `root ::= ${Array.from({ length: n }, (_, i) => `"w${i}"`).join(' | ')}\n`;
  const chain = (k: number) => `root ::= r0\n${Array.from({ length: k }, (_, i) => `r${i} ::= r${i + 1} | r${i + 1} "x"`).join('\n')}\nr${k} ::= "y"\n`;
  const grammars: [string, string][] = [
    ['json_object', jsonObjectGrammar()],
    ['a JSON schema of 3 fields', jsonSchemaGrammar({ type: 'object', properties: { name: { type: 'string', maxLength: 40 }, n: { type: 'integer' }, tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 8 } }, required: ['name', 'n'] })],
    ['yes/no and two digits', 'root ::= ("yes" | "no") " " [0-9] [0-9]\n'],
    ['64 alternatives', words(64)],
    ['256 alternatives', words(256)],
    ['2,048 alternatives', words(2048)],
    ['8 rules of 2, nested (fan-out 256)', chain(8)],
    ['30,000 alternatives', words(30_000)],
  ];
  const row = Float32Array.from({ length: vocab.size }, (_, i) => 12 * Math.sin(i * 12.9898) * Math.cos(i * 78.233));
  const out: GrammarCost[] = [];
  console.log(`\ngrammars: the gateway's measure and libllama's compile, and one sample under the grammar over ${vocab.size} tokens (the last stage's work per sequence per step):`);
  console.log(`${'grammar'.padEnd(36)} ${'bytes'.padStart(7)}  ${'default limits'.padEnd(18)} ${'measure'.padStart(9)} ${'(all)'.padStart(9)} ${'compile'.padStart(10)} ${'per token'.padStart(10)}`);
  for (const [name, g] of grammars) {
    let verdict = 'ok';
    const limitedMs = ms(() => {
      try {
        checkGrammar(g, LIMITS);
      } catch (err) {
        if (!(err instanceof GrammarError)) throw err;
        verdict = err.code;
      }
    });
    const measureMs = ms(() => checkGrammar(g, NONE));
    const compileMs = ms(() => Sampler.checkGrammar(vocab, g));
    const s = Sampler.create(vocab.size, { grammar: g, temperature: 0.8, seed: 1 }, vocab);
    let n = 0;
    const t0 = performance.now();
    // At most 8 tokens or 20 s: the costly ones take seconds a token.
    for (; n < 8 && (n === 0 || performance.now() - t0 < 20_000); n++) s.sample(row);
    const tokenMs = (performance.now() - t0) / n;
    s.dispose();
    out.push({ name, bytes: Buffer.byteLength(g), verdict, limitedMs, measureMs, compileMs, tokenMs });
    console.log(`${name.padEnd(36)} ${String(Buffer.byteLength(g)).padStart(7)}  ${verdict.padEnd(18)} ${limitedMs.toFixed(2).padStart(6)} ms ${measureMs.toFixed(2).padStart(6)} ms ${compileMs.toFixed(1).padStart(7)} ms ${tokenMs.toFixed(2).padStart(7)} ms`);
  }
  const plain = Sampler.create(vocab.size, { temperature: 0.8, seed: 1 }, vocab);
  const noGrammar = ms(() => plain.sample(row), 50);
  plain.dispose();
  console.log(`${'no grammar'.padEnd(36)} ${''.padStart(7)}  ${''.padEnd(18)} ${''.padStart(9)} ${''.padStart(9)} ${''.padStart(10)} ${noGrammar.toFixed(2).padStart(7)} ms`);
  vocab.dispose();
  return out;
}
