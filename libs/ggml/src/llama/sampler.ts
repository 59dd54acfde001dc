// Sampling with libllama's sampler chain over a bare token-data array (no llama_context):
// the same samplers llama.cpp uses, with the vocabulary-sized work done in C.
import koffi from 'koffi';
import { DisposedError, LlamaError } from '../errors.ts';
import type { LlamaSamplerPtr, RawPtr } from '../ffi/types.ts';
import type { LlamaTokenDataArray } from '../ffi/llama.ts';
import { native } from '../runtime.ts';
import type { Vocab } from './vocab.ts';

/** Sampling settings of one sequence. */
export interface SamplingOptions {
  /** <= 0: greedy */
  temperature?: number;
  /** 0: off */
  topK?: number;
  /** 1: off */
  topP?: number;
  /** 0: off */
  minP?: number;
  /** 1: off */
  repeatPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** tokens looked back for penalties (default 64) */
  repeatLastN?: number;
  /** seed of the final random draw */
  seed?: number;
  /** GBNF grammar the output must follow (root rule 'root') */
  grammar?: string;
  /** added to a token's logit before every other step (OpenAI's logit_bias) */
  logitBias?: ReadonlyMap<number, number>;
}

/** A sampler chain for one sequence. dispose() is idempotent. */
export class Sampler {
  #chain: LlamaSamplerPtr | null;
  readonly nVocab: number;
  readonly #data: RawPtr;
  readonly #ids: Int32Array;
  readonly #vals: Float32Array;
  readonly #cur: LlamaTokenDataArray;
  /** the token array as a fresh sample starts it: ids 0..n-1, p = 0 (logits written over it) */
  readonly #template: Uint8Array;
  readonly #bytes: Uint8Array;
  /** the chain is plain greedy: argmax in JS, no native call */
  readonly #greedyOnly: boolean;

  private constructor(chain: LlamaSamplerPtr, nVocab: number, greedyOnly: boolean) {
    this.#chain = chain;
    this.nVocab = nVocab;
    this.#greedyOnly = greedyOnly;
    // llama_token_data is {int32 id; float logit; float p}: 12 bytes, interleaved.
    this.#data = koffi.alloc('llama_token_data', nVocab) as RawPtr;
    const ab = koffi.view(this.#data, nVocab * 12);
    this.#ids = new Int32Array(ab);
    this.#vals = new Float32Array(ab);
    this.#bytes = new Uint8Array(ab);
    this.#template = new Uint8Array(nVocab * 12);
    const ids = new Int32Array(this.#template.buffer);
    for (let i = 0; i < nVocab; i++) ids[i * 3] = i;
    this.#cur = { data: this.#data, size: nVocab, selected: -1, sorted: false };
  }

  /** Builds the chain: grammar, penalties, top-k, top-p, min-p, temperature, seeded draw (or greedy). */
  static create(nVocab: number, options: SamplingOptions = {}, vocab?: Vocab): Sampler {
    const { llama: l } = native();
    const chain = l.llama_sampler_chain_init({ no_perf: true });
    const add = (s: LlamaSamplerPtr | null, what: string) => {
      if (!s) {
        l.llama_sampler_free(chain);
        throw new LlamaError(`invalid ${what}`);
      }
      l.llama_sampler_chain_add(chain, s);
    };
    const bias = options.logitBias;
    if (bias && bias.size > 0) {
      // llama_logit_bias is {int32 token; float bias}: 8 bytes each.
      const raw = new ArrayBuffer(bias.size * 8);
      const ids = new Int32Array(raw), vals = new Float32Array(raw);
      let i = 0;
      for (const [token, b] of bias) {
        if (!Number.isInteger(token) || token < 0 || token >= nVocab) {
          l.llama_sampler_free(chain);
          throw new LlamaError(`logit bias for token ${token}, outside the vocabulary of ${nVocab}`);
        }
        ids[i * 2] = token;
        vals[i * 2 + 1] = b;
        i++;
      }
      add(l.llama_sampler_init_logit_bias(nVocab, bias.size, new Uint8Array(raw)), 'logit bias');
    }
    if (options.grammar) {
      if (!vocab) throw new LlamaError('a grammar needs the vocabulary');
      add(l.llama_sampler_init_grammar(vocab.ptr, options.grammar, 'root'), 'grammar');
    }
    const rp = options.repeatPenalty ?? 1, fp = options.frequencyPenalty ?? 0, pp = options.presencePenalty ?? 0;
    if (rp !== 1 || fp !== 0 || pp !== 0) add(l.llama_sampler_init_penalties(nVocab, options.repeatLastN ?? 64, rp, fp, pp), 'penalties');
    const temp = options.temperature ?? 0;
    if (temp <= 0) {
      add(l.llama_sampler_init_greedy(), 'greedy sampler');
    } else {
      if (options.topK && options.topK > 0) add(l.llama_sampler_init_top_k(options.topK), 'top_k');
      if (options.topP !== undefined && options.topP < 1) add(l.llama_sampler_init_top_p(options.topP, 1), 'top_p');
      if (options.minP && options.minP > 0) add(l.llama_sampler_init_min_p(options.minP, 1), 'min_p');
      add(l.llama_sampler_init_temp(temp), 'temperature');
      add(l.llama_sampler_init_dist((options.seed ?? 0xffffffff) >>> 0), 'dist sampler');
    }
    const greedyOnly = temp <= 0 && !options.grammar && rp === 1 && fp === 0 && pp === 0 && !(bias && bias.size > 0);
    return new Sampler(chain, nVocab, greedyOnly);
  }

  /**
   * Compiles a GBNF grammar (root rule 'root') as a grammar sampler would, and frees it; throws
   * LlamaError when libllama refuses it (libllama prints its reason on stderr).
   */
  static checkGrammar(vocab: Vocab, grammar: string): void {
    const { llama: l } = native();
    const s = l.llama_sampler_init_grammar(vocab.ptr, grammar, 'root');
    if (!s) throw new LlamaError('invalid grammar');
    l.llama_sampler_free(s);
  }

  get #ptr(): LlamaSamplerPtr {
    if (this.#chain === null) throw new DisposedError('Sampler');
    return this.#chain;
  }

  /** Picks the next token from one row of logits (length nVocab) and accepts it. */
  sample(logits: Float32Array): number {
    const chain = this.#ptr;
    const n = this.nVocab;
    if (logits.length < n) throw new LlamaError(`a row of ${logits.length} logits for a vocabulary of ${n}`);
    if (this.#greedyOnly) {
      // libllama's greedy sampler is an argmax keeping the first maximum; so is this.
      let best = 0, bestV = logits[0]!;
      for (let i = 1; i < n; i++) {
        const v = logits[i]!;
        if (v > bestV) {
          bestV = v;
          best = i;
        }
      }
      return best;
    }
    const ids = this.#ids, vals = this.#vals;
    const cur = this.#freshRow();
    for (let i = 0, j = 1; i < n; i++, j += 3) vals[j] = logits[i]!;
    const { llama: l } = native();
    l.llama_sampler_apply(chain, cur);
    const sel = Number(cur.selected);
    if (sel < 0 || sel >= Number(cur.size)) throw new LlamaError('the sampler chain selected no token');
    const token = cur.data === this.#data
      ? ids[sel * 3]!
      : new Int32Array(koffi.view(cur.data, Number(cur.size) * 12))[sel * 3]!;
    l.llama_sampler_accept(chain, token);
    return token;
  }

  /**
   * Brings a fresh chain to where a chain with the same settings stands after sampling `tokens`:
   * each is drawn once over a flat row (the seeded draw consumes one random number per sample
   * whatever the row) and then accepted (penalties, grammar). A session that moves to another
   * worker continues with exactly the samples it would have drawn unmoved.
   */
  replay(tokens: ArrayLike<number>): void {
    if (this.#greedyOnly) return;
    const { llama: l } = native();
    const chain = this.#ptr;
    for (let t = 0; t < tokens.length; t++) {
      l.llama_sampler_apply(chain, this.#freshRow());
      l.llama_sampler_accept(chain, tokens[t]!);
    }
  }

  /** The token array reset to ids 0..n-1 with flat logits, ready for the chain. */
  #freshRow(): LlamaTokenDataArray {
    this.#bytes.set(this.#template);
    const cur = this.#cur;
    cur.data = this.#data;
    cur.size = this.nVocab;
    cur.selected = -1;
    cur.sorted = false;
    return cur;
  }

  /** Feeds a token that was not sampled (prompt tokens, for penalties and grammar). */
  accept(token: number): void {
    native().llama.llama_sampler_accept(this.#ptr, token);
  }

  /** Frees the chain and its token array. Idempotent. */
  dispose(): void {
    if (this.#chain === null) return;
    native().llama.llama_sampler_free(this.#chain);
    koffi.free(this.#data);
    this.#chain = null;
  }
}
