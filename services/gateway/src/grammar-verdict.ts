// For tests of grammars: what libllama's grammar sampler makes of a text, byte by byte.
import { Sampler, type Vocab } from '@strata/ggml';

// The SentencePiece vocabulary (ggml-vocab-llama-spm.gguf) has a byte token for each of the 256
// bytes (ids 3..258), after unk, bos and eos. The sampler sees only those 259 tokens, so every
// text is spelled byte by byte (rejections are exact to the byte) and a grammar step costs
// microseconds, not a 32000-token scan.
/** The token of byte 0 in that vocabulary. */
export const BYTE0 = 3;
const N_TOKENS = BYTE0 + 256;

/**
 * What libllama's grammar sampler makes of `text` under the SentencePiece test vocabulary:
 * 'complete' (every byte taken, then EOS allowed), 'incomplete' (every byte taken, EOS masked)
 * or 'rejected at <byte offset>'. Each step gives one token the only high logit; the grammar
 * masks it to -inf when it cannot follow, and greedy sampling then picks another, allowed token.
 * Never accept() an unsampled token: libllama aborts on one the grammar rejects.
 */
export function grammarVerdict(vocab: Vocab, grammar: string, text: string): string {
  const s = Sampler.create(N_TOKENS, { grammar }, vocab);
  try {
    const logits = new Float32Array(N_TOKENS);
    const pick = (token: number): boolean => {
      logits.fill(0);
      logits[token] = 10;
      return s.sample(logits) === token;
    };
    const bytes = Buffer.from(text, 'utf8');
    for (let at = 0; at < bytes.length; at++) if (!pick(BYTE0 + bytes[at]!)) return `rejected at ${at}`;
    return pick(vocab.eos) ? 'complete' : 'incomplete';
  } finally {
    s.dispose();
  }
}
