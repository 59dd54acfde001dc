// Handle types shared by the ffi modules: opaque C pointers as branded bigints (koffi 3 passes
// pointers as bigint), so a tensor can never be passed where a context is expected.
import koffi from 'koffi';

/** An opaque C pointer of one struct type. */
export type Ptr<B extends string> = bigint & { readonly __brand: B };

export type ContextPtr = Ptr<'ggml_context'>;
export type TensorPtr = Ptr<'ggml_tensor'>;
export type GraphPtr = Ptr<'ggml_cgraph'>;
export type BackendPtr = Ptr<'ggml_backend'>;
export type BufferPtr = Ptr<'ggml_backend_buffer'>;
export type BufferTypePtr = Ptr<'ggml_backend_buffer_type'>;
export type DevicePtr = Ptr<'ggml_backend_device'>;
export type RegPtr = Ptr<'ggml_backend_reg'>;
export type SchedPtr = Ptr<'ggml_backend_sched'>;
export type GallocrPtr = Ptr<'ggml_gallocr'>;
export type GgufContextPtr = Ptr<'gguf_context'>;
export type LlamaModelPtr = Ptr<'llama_model'>;
export type LlamaContextPtr = Ptr<'llama_context'>;
export type LlamaVocabPtr = Ptr<'llama_vocab'>;
export type LlamaMemoryPtr = Ptr<'llama_memory'>;
export type LlamaSamplerPtr = Ptr<'llama_sampler'>;
/** Memory that C owns, or that koffi.alloc returned. */
export type RawPtr = Ptr<'void'>;

/** Bytes or numbers handed to a `const void *` / `void *` parameter. */
export type Bytes = ArrayBufferView | ArrayBuffer;

let declared = false;

/** Registers the named C types with koffi once per process. */
export function declareTypes(): void {
  if (declared) return;
  declared = true;
  for (const name of [
    'ggml_context', 'ggml_tensor', 'ggml_cgraph', 'ggml_backend', 'ggml_backend_buffer',
    'ggml_backend_buffer_type', 'ggml_backend_device', 'ggml_backend_reg', 'ggml_backend_sched',
    'ggml_gallocr', 'gguf_context', 'llama_model', 'llama_context', 'llama_vocab', 'llama_memory_i',
    'llama_sampler', 'llama_adapter_lora', 'FILE',
  ]) {
    koffi.opaque(name);
  }
  koffi.alias('ggml_backend_t', 'ggml_backend *');
  koffi.alias('ggml_backend_buffer_t', 'ggml_backend_buffer *');
  koffi.alias('ggml_backend_buffer_type_t', 'ggml_backend_buffer_type *');
  koffi.alias('ggml_backend_dev_t', 'ggml_backend_device *');
  koffi.alias('ggml_backend_reg_t', 'ggml_backend_reg *');
  koffi.alias('ggml_backend_sched_t', 'ggml_backend_sched *');
  koffi.alias('ggml_gallocr_t', 'ggml_gallocr *');
  koffi.alias('llama_memory_t', 'llama_memory_i *');
  koffi.alias('llama_token', 'int32_t');
  koffi.alias('llama_pos', 'int32_t');
  koffi.alias('llama_seq_id', 'int32_t');
  koffi.struct('ggml_init_params', { mem_size: 'size_t', mem_buffer: 'void *', no_alloc: 'bool' });
  koffi.proto('void ggml_log_callback(int level, const char * text, void * user_data)');
}
