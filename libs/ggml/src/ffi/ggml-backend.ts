// ggml-backend.h, 1:1: devices, backends, buffers, tensor I/O, graph compute and the scheduler.
import type { LibraryHandle } from 'koffi';
import type {
  BackendPtr, BufferPtr, BufferTypePtr, Bytes, DevicePtr, GraphPtr, RawPtr, RegPtr, SchedPtr, TensorPtr,
} from './types.ts';

/** enum ggml_backend_dev_type */
export const GGML_BACKEND_DEVICE_TYPE = { CPU: 0, GPU: 1, IGPU: 2, ACCEL: 3, META: 4 } as const;

/** Binds ggml-backend.h (spread over libggml-base and libggml). */
export function bindGgmlBackend(base: LibraryHandle, ggml: LibraryHandle) {
  const b = (proto: string) => base.func(proto);
  const g = (proto: string) => ggml.func(proto);
  return {
    ggml_backend_buft_name: b('const char * ggml_backend_buft_name(ggml_backend_buffer_type_t buft)') as (t: BufferTypePtr) => string,
    ggml_backend_buft_alloc_buffer: b('ggml_backend_buffer_t ggml_backend_buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size)') as (t: BufferTypePtr, size: number) => BufferPtr | null,
    ggml_backend_buft_is_host: b('bool ggml_backend_buft_is_host(ggml_backend_buffer_type_t buft)') as (t: BufferTypePtr) => boolean,
    ggml_backend_buffer_name: b('const char * ggml_backend_buffer_name(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => string,
    ggml_backend_buffer_free: b('void ggml_backend_buffer_free(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => void,
    ggml_backend_dev_buffer_from_host_ptr: b('ggml_backend_buffer_t ggml_backend_dev_buffer_from_host_ptr(ggml_backend_dev_t device, void * ptr, size_t size, size_t max_tensor_size)') as (d: DevicePtr, ptr: RawPtr, size: number, maxTensorSize: number) => BufferPtr | null,
    ggml_backend_tensor_alloc: b('int ggml_backend_tensor_alloc(ggml_backend_buffer_t buffer, ggml_tensor * tensor, void * addr)') as (buf: BufferPtr, t: TensorPtr, addr: RawPtr) => number,
    ggml_backend_buffer_get_base: b('void * ggml_backend_buffer_get_base(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => RawPtr,
    ggml_backend_buffer_get_size: b('size_t ggml_backend_buffer_get_size(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => number,
    ggml_backend_buffer_clear: b('void ggml_backend_buffer_clear(ggml_backend_buffer_t buffer, uint8_t value)') as (buf: BufferPtr, value: number) => void,
    ggml_backend_buffer_is_host: b('bool ggml_backend_buffer_is_host(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => boolean,
    ggml_backend_buffer_set_usage: b('void ggml_backend_buffer_set_usage(ggml_backend_buffer_t buffer, int usage)') as (buf: BufferPtr, usage: number) => void,
    ggml_backend_buffer_get_type: b('ggml_backend_buffer_type_t ggml_backend_buffer_get_type(ggml_backend_buffer_t buffer)') as (buf: BufferPtr) => BufferTypePtr,
    ggml_backend_name: b('const char * ggml_backend_name(ggml_backend_t backend)') as (be: BackendPtr) => string,
    ggml_backend_free: b('void ggml_backend_free(ggml_backend_t backend)') as (be: BackendPtr) => void,
    ggml_backend_get_default_buffer_type: b('ggml_backend_buffer_type_t ggml_backend_get_default_buffer_type(ggml_backend_t backend)') as (be: BackendPtr) => BufferTypePtr,
    ggml_backend_tensor_set: b('void ggml_backend_tensor_set(ggml_tensor * tensor, const void * data, size_t offset, size_t size)') as (t: TensorPtr, data: Bytes, offset: number, size: number) => void,
    ggml_backend_tensor_get: b('void ggml_backend_tensor_get(const ggml_tensor * tensor, void * data, size_t offset, size_t size)') as (t: TensorPtr, data: Bytes, offset: number, size: number) => void,
    ggml_backend_tensor_memset: b('void ggml_backend_tensor_memset(ggml_tensor * tensor, uint8_t value, size_t offset, size_t size)') as (t: TensorPtr, value: number, offset: number, size: number) => void,
    ggml_backend_synchronize: b('void ggml_backend_synchronize(ggml_backend_t backend)') as (be: BackendPtr) => void,
    ggml_backend_graph_compute: b('int ggml_backend_graph_compute(ggml_backend_t backend, ggml_cgraph * cgraph)') as (be: BackendPtr, g: GraphPtr) => number,
    ggml_backend_get_device: b('ggml_backend_dev_t ggml_backend_get_device(ggml_backend_t backend)') as (be: BackendPtr) => DevicePtr,
    ggml_backend_dev_name: b('const char * ggml_backend_dev_name(ggml_backend_dev_t device)') as (d: DevicePtr) => string,
    ggml_backend_dev_description: b('const char * ggml_backend_dev_description(ggml_backend_dev_t device)') as (d: DevicePtr) => string,
    ggml_backend_dev_memory: b('void ggml_backend_dev_memory(ggml_backend_dev_t device, _Out_ size_t * free, _Out_ size_t * total)') as (d: DevicePtr, free: number[], total: number[]) => void,
    ggml_backend_dev_type: b('int ggml_backend_dev_type(ggml_backend_dev_t device)') as (d: DevicePtr) => number,
    ggml_backend_dev_backend_reg: b('ggml_backend_reg_t ggml_backend_dev_backend_reg(ggml_backend_dev_t device)') as (d: DevicePtr) => RegPtr,
    ggml_backend_dev_init: b('ggml_backend_t ggml_backend_dev_init(ggml_backend_dev_t device, const char * params)') as (d: DevicePtr, params: string | null) => BackendPtr | null,
    ggml_backend_dev_buffer_type: b('ggml_backend_buffer_type_t ggml_backend_dev_buffer_type(ggml_backend_dev_t device)') as (d: DevicePtr) => BufferTypePtr,
    ggml_backend_dev_host_buffer_type: b('ggml_backend_buffer_type_t ggml_backend_dev_host_buffer_type(ggml_backend_dev_t device)') as (d: DevicePtr) => BufferTypePtr | null,
    ggml_backend_dev_supports_op: b('bool ggml_backend_dev_supports_op(ggml_backend_dev_t device, const ggml_tensor * op)') as (d: DevicePtr, op: TensorPtr) => boolean,
    ggml_backend_reg_name: b('const char * ggml_backend_reg_name(ggml_backend_reg_t reg)') as (r: RegPtr) => string,
    ggml_backend_reg_get_proc_address: b('void * ggml_backend_reg_get_proc_address(ggml_backend_reg_t reg, const char * name)') as (r: RegPtr, name: string) => RawPtr | null,
    ggml_backend_sched_new: b('ggml_backend_sched_t ggml_backend_sched_new(ggml_backend_t * backends, ggml_backend_buffer_type_t * bufts, int n_backends, size_t graph_size, bool parallel, bool op_offload)') as (backends: BigUint64Array, bufts: BigUint64Array | null, n: number, graphSize: number, parallel: boolean, opOffload: boolean) => SchedPtr | null,
    ggml_backend_sched_free: b('void ggml_backend_sched_free(ggml_backend_sched_t sched)') as (s: SchedPtr) => void,
    ggml_backend_sched_reserve: b('bool ggml_backend_sched_reserve(ggml_backend_sched_t sched, ggml_cgraph * measure_graph)') as (s: SchedPtr, g: GraphPtr) => boolean,
    ggml_backend_sched_get_n_splits: b('int ggml_backend_sched_get_n_splits(ggml_backend_sched_t sched)') as (s: SchedPtr) => number,
    ggml_backend_sched_get_buffer_size: b('size_t ggml_backend_sched_get_buffer_size(ggml_backend_sched_t sched, ggml_backend_t backend)') as (s: SchedPtr, be: BackendPtr) => number,
    ggml_backend_sched_alloc_graph: b('bool ggml_backend_sched_alloc_graph(ggml_backend_sched_t sched, ggml_cgraph * graph)') as (s: SchedPtr, g: GraphPtr) => boolean,
    ggml_backend_sched_graph_compute: b('int ggml_backend_sched_graph_compute(ggml_backend_sched_t sched, ggml_cgraph * graph)') as (s: SchedPtr, g: GraphPtr) => number,
    ggml_backend_sched_synchronize: b('void ggml_backend_sched_synchronize(ggml_backend_sched_t sched)') as (s: SchedPtr) => void,
    ggml_backend_sched_reset: b('void ggml_backend_sched_reset(ggml_backend_sched_t sched)') as (s: SchedPtr) => void,
    ggml_backend_sched_set_tensor_backend: b('void ggml_backend_sched_set_tensor_backend(ggml_backend_sched_t sched, ggml_tensor * node, ggml_backend_t backend)') as (s: SchedPtr, t: TensorPtr, be: BackendPtr) => void,
    ggml_backend_cpu_buffer_type: b('ggml_backend_buffer_type_t ggml_backend_cpu_buffer_type(void)') as () => BufferTypePtr,
    // registry (libggml)
    ggml_backend_load_all_from_path: g('void ggml_backend_load_all_from_path(const char * dir_path)') as (dir: string) => void,
    ggml_backend_reg_count: g('size_t ggml_backend_reg_count(void)') as () => number,
    ggml_backend_reg_get: g('ggml_backend_reg_t ggml_backend_reg_get(size_t index)') as (i: number) => RegPtr,
    ggml_backend_dev_count: g('size_t ggml_backend_dev_count(void)') as () => number,
    ggml_backend_dev_get: g('ggml_backend_dev_t ggml_backend_dev_get(size_t index)') as (i: number) => DevicePtr,
    ggml_backend_dev_by_type: g('ggml_backend_dev_t ggml_backend_dev_by_type(int type)') as (type: number) => DevicePtr | null,
  };
}

/** The bound ggml-backend.h functions. */
export type GgmlBackendApi = ReturnType<typeof bindGgmlBackend>;
