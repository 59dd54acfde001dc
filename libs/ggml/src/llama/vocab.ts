// The vocabulary of a GGUF through libllama (vocab_only): tokenize, detokenize, chat templates.
import { DisposedError, LlamaError } from '../errors.ts';
import type { LlamaModelPtr, LlamaVocabPtr } from '../ffi/types.ts';
import { native } from '../runtime.ts';

/** A chat message for {@link Vocab.applyChatTemplate}. */
export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * libllama's built-in chat template for architectures whose family has one fixed turn format,
 * used when a GGUF carries no `tokenizer.chat_template` (Gemma GGUFs are often shipped without).
 */
const FAMILY_TEMPLATES: Record<string, string> = { gemma: 'gemma', gemma2: 'gemma', gemma3: 'gemma', exaone4: 'exaone4' };

/** A GGUF's tokenizer, loaded without weights. dispose() is idempotent. */
export class Vocab {
  #model: LlamaModelPtr | null;
  readonly ptr: LlamaVocabPtr;
  /** tokens in the vocabulary */
  readonly size: number;
  readonly bos: number;
  readonly eos: number;
  readonly addBos: boolean;
  #pieceBuf = Buffer.alloc(256);

  private constructor(model: LlamaModelPtr) {
    const { llama: l } = native();
    this.#model = model;
    this.ptr = l.llama_model_get_vocab(model);
    this.size = l.llama_vocab_n_tokens(this.ptr);
    this.bos = l.llama_vocab_bos(this.ptr);
    this.eos = l.llama_vocab_eos(this.ptr);
    this.addBos = l.llama_vocab_get_add_bos(this.ptr);
  }

  /** Loads the vocabulary of a GGUF file. */
  static load(path: string): Vocab {
    const { llama: l } = native();
    const params = l.llama_model_default_params();
    params.vocab_only = true;
    const model = l.llama_model_load_from_file(path, params);
    if (!model) throw new LlamaError(`libllama could not load the vocabulary of ${path}`);
    return new Vocab(model);
  }

  #alive(): void {
    if (this.#model === null) throw new DisposedError('Vocab');
  }

  get #modelPtr(): LlamaModelPtr {
    if (this.#model === null) throw new DisposedError('Vocab');
    return this.#model;
  }

  /** Text to token ids; `addSpecial` adds BOS where the model wants it. */
  tokenize(text: string, addSpecial = true, parseSpecial = true): Int32Array {
    this.#alive();
    const { llama: l } = native();
    const bytes = Buffer.from(text, 'utf8');
    let out = new Int32Array(bytes.length + 8);
    let n = l.llama_tokenize(this.ptr, bytes, bytes.length, out, out.length, addSpecial, parseSpecial);
    if (n < 0) {
      out = new Int32Array(-n);
      n = l.llama_tokenize(this.ptr, bytes, bytes.length, out, out.length, addSpecial, parseSpecial);
    }
    if (n < 0) throw new LlamaError(`tokenization of ${bytes.length} bytes failed`);
    return out.subarray(0, n);
  }

  /** The bytes of one token (a piece may be part of a UTF-8 character). */
  tokenBytes(token: number, special = false): Buffer {
    this.#alive();
    const { llama: l } = native();
    let n = l.llama_token_to_piece(this.ptr, token, this.#pieceBuf, this.#pieceBuf.length, 0, special);
    if (n < 0) {
      this.#pieceBuf = Buffer.alloc(-n);
      n = l.llama_token_to_piece(this.ptr, token, this.#pieceBuf, this.#pieceBuf.length, 0, special);
    }
    return Buffer.from(this.#pieceBuf.subarray(0, Math.max(0, n)));
  }

  /** Token ids to text. */
  detokenize(tokens: ArrayLike<number>, removeSpecial = false, unparseSpecial = false): string {
    this.#alive();
    const { llama: l } = native();
    const ids = Int32Array.from(tokens);
    let buf = Buffer.alloc(ids.length * 8 + 16);
    let n = l.llama_detokenize(this.ptr, ids, ids.length, buf, buf.length, removeSpecial, unparseSpecial);
    if (n < 0) {
      buf = Buffer.alloc(-n);
      n = l.llama_detokenize(this.ptr, ids, ids.length, buf, buf.length, removeSpecial, unparseSpecial);
    }
    return buf.toString('utf8', 0, Math.max(0, n));
  }

  /** Whether a token ends generation (EOS, EOT, ...). */
  isEog(token: number): boolean {
    return native().llama.llama_vocab_is_eog(this.ptr, token);
  }

  /** The model's chat template (`tokenizer.chat_template`), or null. */
  chatTemplate(): string | null {
    return native().llama.llama_model_chat_template(this.#modelPtr, null);
  }

  /** A metadata value of the GGUF as a string, or null when the key is absent. */
  meta(key: string): string | null {
    const { llama: l } = native();
    let buf = Buffer.alloc(256);
    let n = l.llama_model_meta_val_str(this.#modelPtr, key, buf, buf.length);
    if (n >= buf.length) {
      buf = Buffer.alloc(n + 1);
      n = l.llama_model_meta_val_str(this.#modelPtr, key, buf, buf.length);
    }
    return n < 0 ? null : buf.toString('utf8', 0, n);
  }

  /**
   * The template messages are formatted with: the model's own, else the libllama built-in
   * template of the model's family where its architecture names one (a GGUF of the gemma family
   * without a template: 'gemma'), else 'chatml' (libllama's server default).
   */
  defaultChatTemplate(): string {
    const own = this.chatTemplate();
    if (own) return own;
    const arch = this.meta('general.architecture') ?? '';
    return FAMILY_TEMPLATES[arch] ?? 'chatml';
  }

  /** Formats messages with {@link defaultChatTemplate} (or `template`, a name such as 'chatml'). */
  applyChatTemplate(messages: ChatMessage[], addAssistant = true, template?: string): string {
    const { llama: l } = native();
    const tmpl = template ?? this.defaultChatTemplate();
    const total = messages.reduce((n, m) => n + Buffer.byteLength(m.content) + Buffer.byteLength(m.role), 0);
    let buf = Buffer.alloc(total * 2 + 256);
    let n = l.llama_chat_apply_template(tmpl, messages, messages.length, addAssistant, buf, buf.length);
    if (n > buf.length) {
      buf = Buffer.alloc(n);
      n = l.llama_chat_apply_template(tmpl, messages, messages.length, addAssistant, buf, buf.length);
    }
    if (n < 0) throw new LlamaError(`chat template ${tmpl.slice(0, 40)} is not supported by libllama`);
    return buf.toString('utf8', 0, n);
  }

  /** Frees the vocabulary. Idempotent. */
  dispose(): void {
    if (this.#model === null) return;
    native().llama.llama_model_free(this.#model);
    this.#model = null;
  }
}
