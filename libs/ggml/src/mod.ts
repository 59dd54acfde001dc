// @strata/ggml: the native layer. The only module in Strata that imports koffi.
export { Backend, listDevices, type BackendOptions, type DeviceInfo } from './backend.ts';
export { BackendBuffer, BufferUsage, checkStatus } from './buffer.ts';
export { GgmlContext, getTensor, hostView, setTensor, tensorInfo, type ContextOptions, type RopeParams, type TensorInfo } from './context.ts';
export { ComputeError, DisposedError, GgmlError, LlamaError, NativeLibraryError } from './errors.ts';
export type { BufferTypePtr, GraphPtr, TensorPtr } from './ffi/types.ts';
export { LlamaReference, type RefToken, type ReferenceOptions } from './llama/reference.ts';
export { Sampler, type SamplingOptions } from './llama/sampler.ts';
export { Vocab, type ChatMessage } from './llama/vocab.ts';
export { llamaPackageDir, locateNativeLibs, strataCacheDir, type LocateOptions, type NativeLibs } from './native-libs.ts';
export { ensureLlamaServer, vocabDir, VOCAB_FILES } from './native-build.ts';
export { Scheduler, type SchedulerOptions } from './scheduler.ts';
export { LogLevel, loadNative, loadOptionsFromEnv, native, type LoadOptions, type Native } from './runtime.ts';
export { decodeToF32, encodeF32, f16ToF32 } from './quantize.ts';
export { F16_NEG_INF, F16_ZERO, GgmlPrec, GgmlType, RopeType } from './types.ts';
export { bufferTypeName, cpuExtraBufferTypes, matMulWeightBufferType, supportsMatMulWeight } from './weight-bufts.ts';
export { BufferSet, groupByBufferType } from './buffer-set.ts';
export { FileMapping } from './file-mapping.ts';
