// llama.h, 1:1, for what Strata uses libllama for: the vocabulary, chat templates, the sampler
// chain on a bare token-data array, and the reference model (decode, memory, state) that parity
// tests and benchmarks compare against.
import koffi, { type LibraryHandle } from 'koffi';
import type {
  Bytes, LlamaContextPtr, LlamaMemoryPtr, LlamaModelPtr, LlamaSamplerPtr, LlamaVocabPtr, RawPtr,
} from './types.ts';

/** enum llama_flash_attn_type */
export const LLAMA_FLASH_ATTN_TYPE = { AUTO: -1, DISABLED: 0, ENABLED: 1 } as const;

/** struct llama_model_params (by value). */
export interface LlamaModelParams {
  devices: bigint | null;
  tensor_buft_overrides: bigint | null;
  n_gpu_layers: number;
  split_mode: number;
  load_mode: number;
  lazy_mode: number;
  main_gpu: number;
  tensor_split: bigint | null;
  progress_callback: bigint | null;
  progress_callback_user_data: bigint | null;
  kv_overrides: bigint | null;
  vocab_only: boolean;
  check_tensors: boolean;
  use_extra_bufts: boolean;
  no_host: boolean;
  no_alloc: boolean;
  load_mtp: boolean;
}

/** struct llama_context_params (by value). */
export interface LlamaContextParams {
  n_ctx: number; n_batch: number; n_ubatch: number; n_seq_max: number; n_rs_seq: number;
  n_outputs_max: number; n_outputs_max_per_seq: number; n_threads: number; n_threads_batch: number;
  ctx_type: number; rope_scaling_type: number; pooling_type: number; attention_type: number; flash_attn_type: number;
  rope_freq_base: number; rope_freq_scale: number; yarn_ext_factor: number; yarn_attn_factor: number;
  yarn_beta_fast: number; yarn_beta_slow: number; yarn_orig_ctx: number; defrag_thold: number;
  cb_eval: bigint | null; cb_eval_user_data: bigint | null; type_k: number; type_v: number;
  abort_callback: bigint | null; abort_callback_data: bigint | null;
  embeddings: boolean; offload_kqv: boolean; no_perf: boolean; op_offload: boolean; swa_full: boolean; kv_unified: boolean;
  samplers: bigint | null; n_samplers: number; ctx_other: bigint | null;
}

/** struct llama_batch (by value): pointers into memory that llama_batch_init allocated. */
export interface LlamaBatch {
  n_tokens: number;
  token: RawPtr | null;
  embd: RawPtr | null;
  pos: RawPtr | null;
  n_seq_id: RawPtr | null;
  seq_id: RawPtr | null;
  logits: RawPtr | null;
}

/** struct llama_token_data_array (by pointer). */
export interface LlamaTokenDataArray {
  data: RawPtr;
  size: number;
  selected: number;
  sorted: boolean;
}

let structs: ReturnType<typeof declareLlamaStructs> | null = null;

function declareLlamaStructs() {
  return {
    modelParams: koffi.struct('llama_model_params', {
      devices: 'void *', tensor_buft_overrides: 'void *', n_gpu_layers: 'int32_t', split_mode: 'int',
      load_mode: 'int', lazy_mode: 'int', main_gpu: 'int32_t', tensor_split: 'void *', progress_callback: 'void *',
      progress_callback_user_data: 'void *', kv_overrides: 'void *', vocab_only: 'bool', check_tensors: 'bool',
      use_extra_bufts: 'bool', no_host: 'bool', no_alloc: 'bool', load_mtp: 'bool',
    }),
    contextParams: koffi.struct('llama_context_params', {
      n_ctx: 'uint32_t', n_batch: 'uint32_t', n_ubatch: 'uint32_t', n_seq_max: 'uint32_t', n_rs_seq: 'uint32_t',
      n_outputs_max: 'uint32_t', n_outputs_max_per_seq: 'uint32_t', n_threads: 'int32_t', n_threads_batch: 'int32_t',
      ctx_type: 'int', rope_scaling_type: 'int', pooling_type: 'int', attention_type: 'int', flash_attn_type: 'int',
      rope_freq_base: 'float', rope_freq_scale: 'float', yarn_ext_factor: 'float', yarn_attn_factor: 'float',
      yarn_beta_fast: 'float', yarn_beta_slow: 'float', yarn_orig_ctx: 'uint32_t', defrag_thold: 'float',
      cb_eval: 'void *', cb_eval_user_data: 'void *', type_k: 'int', type_v: 'int',
      abort_callback: 'void *', abort_callback_data: 'void *',
      embeddings: 'bool', offload_kqv: 'bool', no_perf: 'bool', op_offload: 'bool', swa_full: 'bool', kv_unified: 'bool',
      samplers: 'void *', n_samplers: 'size_t', ctx_other: 'void *',
    }),
    batch: koffi.struct('llama_batch', {
      n_tokens: 'int32_t', token: 'void *', embd: 'void *', pos: 'void *', n_seq_id: 'void *', seq_id: 'void *', logits: 'void *',
    }),
    tokenData: koffi.struct('llama_token_data', { id: 'int32_t', logit: 'float', p: 'float' }),
    tokenDataArray: koffi.struct('llama_token_data_array', { data: 'void *', size: 'size_t', selected: 'int64_t', sorted: 'bool' }),
    chainParams: koffi.struct('llama_sampler_chain_params', { no_perf: 'bool' }),
    chatMessage: koffi.struct('llama_chat_message', { role: 'const char *', content: 'const char *' }),
  };
}

/** Binds llama.h from libllama. */
export function bindLlama(lib: LibraryHandle) {
  structs ??= declareLlamaStructs();
  const f = (proto: string) => lib.func(proto);
  return {
    llama_backend_init: f('void llama_backend_init(void)') as () => void,
    llama_log_set: f('void llama_log_set(ggml_log_callback * log_callback, void * user_data)') as (cb: unknown, user: null) => void,
    llama_model_default_params: f('llama_model_params llama_model_default_params(void)') as () => LlamaModelParams,
    llama_context_default_params: f('llama_context_params llama_context_default_params(void)') as () => LlamaContextParams,
    llama_sampler_chain_default_params: f('llama_sampler_chain_params llama_sampler_chain_default_params(void)') as () => { no_perf: boolean },
    llama_model_load_from_file: f('llama_model * llama_model_load_from_file(const char * path_model, llama_model_params params)') as (path: string, p: LlamaModelParams) => LlamaModelPtr | null,
    llama_model_free: f('void llama_model_free(llama_model * model)') as (m: LlamaModelPtr) => void,
    llama_init_from_model: f('llama_context * llama_init_from_model(llama_model * model, llama_context_params params)') as (m: LlamaModelPtr, p: LlamaContextParams) => LlamaContextPtr | null,
    llama_free: f('void llama_free(llama_context * ctx)') as (c: LlamaContextPtr) => void,
    llama_model_get_vocab: f('const llama_vocab * llama_model_get_vocab(const llama_model * model)') as (m: LlamaModelPtr) => LlamaVocabPtr,
    llama_model_n_embd: f('int32_t llama_model_n_embd(const llama_model * model)') as (m: LlamaModelPtr) => number,
    llama_model_n_layer: f('int32_t llama_model_n_layer(const llama_model * model)') as (m: LlamaModelPtr) => number,
    llama_model_chat_template: f('const char * llama_model_chat_template(const llama_model * model, const char * name)') as (m: LlamaModelPtr, name: string | null) => string | null,
    llama_model_meta_val_str: f('int32_t llama_model_meta_val_str(const llama_model * model, const char * key, _Out_ char * buf, size_t buf_size)') as (m: LlamaModelPtr, key: string, buf: Buffer, size: number) => number,
    llama_model_n_params: f('uint64_t llama_model_n_params(const llama_model * model)') as (m: LlamaModelPtr) => number,
    llama_vocab_n_tokens: f('int32_t llama_vocab_n_tokens(const llama_vocab * vocab)') as (v: LlamaVocabPtr) => number,
    llama_vocab_bos: f('llama_token llama_vocab_bos(const llama_vocab * vocab)') as (v: LlamaVocabPtr) => number,
    llama_vocab_eos: f('llama_token llama_vocab_eos(const llama_vocab * vocab)') as (v: LlamaVocabPtr) => number,
    llama_vocab_is_eog: f('bool llama_vocab_is_eog(const llama_vocab * vocab, llama_token token)') as (v: LlamaVocabPtr, t: number) => boolean,
    llama_vocab_get_add_bos: f('bool llama_vocab_get_add_bos(const llama_vocab * vocab)') as (v: LlamaVocabPtr) => boolean,
    llama_tokenize: f('int32_t llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len, _Out_ llama_token * tokens, int32_t n_tokens_max, bool add_special, bool parse_special)') as (v: LlamaVocabPtr, text: Buffer, len: number, tokens: Int32Array, max: number, addSpecial: boolean, parseSpecial: boolean) => number,
    llama_token_to_piece: f('int32_t llama_token_to_piece(const llama_vocab * vocab, llama_token token, _Out_ char * buf, int32_t length, int32_t lstrip, bool special)') as (v: LlamaVocabPtr, t: number, buf: Buffer, len: number, lstrip: number, special: boolean) => number,
    llama_detokenize: f('int32_t llama_detokenize(const llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens, _Out_ char * text, int32_t text_len_max, bool remove_special, bool unparse_special)') as (v: LlamaVocabPtr, tokens: Int32Array, n: number, text: Buffer, max: number, removeSpecial: boolean, unparseSpecial: boolean) => number,
    llama_chat_apply_template: f('int32_t llama_chat_apply_template(const char * tmpl, const llama_chat_message * chat, size_t n_msg, bool add_ass, _Out_ char * buf, int32_t length)') as (tmpl: string, chat: { role: string; content: string }[], n: number, addAss: boolean, buf: Buffer, len: number) => number,
    llama_batch_init: f('llama_batch llama_batch_init(int32_t n_tokens, int32_t embd, int32_t n_seq_max)') as (n: number, embd: number, nSeqMax: number) => LlamaBatch,
    llama_batch_free: f('void llama_batch_free(llama_batch batch)') as (b: LlamaBatch) => void,
    llama_decode: f('int32_t llama_decode(llama_context * ctx, llama_batch batch)') as (c: LlamaContextPtr, b: LlamaBatch) => number,
    llama_set_n_threads: f('void llama_set_n_threads(llama_context * ctx, int32_t n_threads, int32_t n_threads_batch)') as (c: LlamaContextPtr, n: number, nBatch: number) => void,
    llama_synchronize: f('void llama_synchronize(llama_context * ctx)') as (c: LlamaContextPtr) => void,
    llama_get_logits_ith: f('float * llama_get_logits_ith(llama_context * ctx, int32_t i)') as (c: LlamaContextPtr, i: number) => RawPtr | null,
    llama_get_embeddings_seq: f('float * llama_get_embeddings_seq(llama_context * ctx, int32_t seq_id)') as (c: LlamaContextPtr, seq: number) => RawPtr | null,
    llama_get_memory: f('llama_memory_t llama_get_memory(const llama_context * ctx)') as (c: LlamaContextPtr) => LlamaMemoryPtr,
    llama_memory_clear: f('void llama_memory_clear(llama_memory_t mem, bool data)') as (m: LlamaMemoryPtr, data: boolean) => void,
    llama_memory_seq_rm: f('bool llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1)') as (m: LlamaMemoryPtr, seq: number, p0: number, p1: number) => boolean,
    llama_memory_seq_cp: f('void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1)') as (m: LlamaMemoryPtr, src: number, dst: number, p0: number, p1: number) => void,
    llama_memory_seq_keep: f('void llama_memory_seq_keep(llama_memory_t mem, llama_seq_id seq_id)') as (m: LlamaMemoryPtr, seq: number) => void,
    llama_memory_seq_add: f('void llama_memory_seq_add(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos delta)') as (m: LlamaMemoryPtr, seq: number, p0: number, p1: number, delta: number) => void,
    llama_memory_seq_div: f('void llama_memory_seq_div(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d)') as (m: LlamaMemoryPtr, seq: number, p0: number, p1: number, d: number) => void,
    llama_memory_seq_pos_min: f('llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id)') as (m: LlamaMemoryPtr, seq: number) => number,
    llama_memory_seq_pos_max: f('llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id)') as (m: LlamaMemoryPtr, seq: number) => number,
    llama_state_seq_get_size: f('size_t llama_state_seq_get_size(llama_context * ctx, llama_seq_id seq_id)') as (c: LlamaContextPtr, seq: number) => number,
    llama_state_seq_get_data: f('size_t llama_state_seq_get_data(llama_context * ctx, _Out_ uint8_t * dst, size_t size, llama_seq_id seq_id)') as (c: LlamaContextPtr, dst: Bytes, size: number, seq: number) => number,
    llama_state_seq_set_data: f('size_t llama_state_seq_set_data(llama_context * ctx, const uint8_t * src, size_t size, llama_seq_id dest_seq_id)') as (c: LlamaContextPtr, src: Bytes, size: number, seq: number) => number,
    llama_sampler_chain_init: f('llama_sampler * llama_sampler_chain_init(llama_sampler_chain_params params)') as (p: { no_perf: boolean }) => LlamaSamplerPtr,
    llama_sampler_chain_add: f('void llama_sampler_chain_add(llama_sampler * chain, llama_sampler * smpl)') as (chain: LlamaSamplerPtr, s: LlamaSamplerPtr) => void,
    llama_sampler_accept: f('void llama_sampler_accept(llama_sampler * smpl, llama_token token)') as (s: LlamaSamplerPtr, t: number) => void,
    llama_sampler_apply: f('void llama_sampler_apply(llama_sampler * smpl, _Inout_ llama_token_data_array * cur_p)') as (s: LlamaSamplerPtr, cur: LlamaTokenDataArray) => void,
    llama_sampler_reset: f('void llama_sampler_reset(llama_sampler * smpl)') as (s: LlamaSamplerPtr) => void,
    llama_sampler_clone: f('llama_sampler * llama_sampler_clone(const llama_sampler * smpl)') as (s: LlamaSamplerPtr) => LlamaSamplerPtr,
    llama_sampler_free: f('void llama_sampler_free(llama_sampler * smpl)') as (s: LlamaSamplerPtr) => void,
    llama_sampler_init_greedy: f('llama_sampler * llama_sampler_init_greedy(void)') as () => LlamaSamplerPtr,
    llama_sampler_init_dist: f('llama_sampler * llama_sampler_init_dist(uint32_t seed)') as (seed: number) => LlamaSamplerPtr,
    llama_sampler_init_top_k: f('llama_sampler * llama_sampler_init_top_k(int32_t k)') as (k: number) => LlamaSamplerPtr,
    llama_sampler_init_top_p: f('llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep)') as (p: number, minKeep: number) => LlamaSamplerPtr,
    llama_sampler_init_min_p: f('llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep)') as (p: number, minKeep: number) => LlamaSamplerPtr,
    llama_sampler_init_temp: f('llama_sampler * llama_sampler_init_temp(float t)') as (t: number) => LlamaSamplerPtr,
    llama_sampler_init_penalties: f('llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n, float penalty_repeat, float penalty_freq, float penalty_present)') as (nVocab: number, lastN: number, repeat: number, freq: number, present: number) => LlamaSamplerPtr,
    llama_sampler_init_grammar: f('llama_sampler * llama_sampler_init_grammar(const llama_vocab * vocab, const char * grammar_str, const char * grammar_root)') as (v: LlamaVocabPtr, grammar: string, root: string) => LlamaSamplerPtr | null,
    llama_sampler_init_logit_bias: f('llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias, const void * logit_bias)') as (nVocab: number, n: number, bias: Bytes | null) => LlamaSamplerPtr,
  };
}

/** The bound llama.h functions. */
export type LlamaApi = ReturnType<typeof bindLlama>;
