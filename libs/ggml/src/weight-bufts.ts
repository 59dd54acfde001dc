// Where weights should live on a device: the CPU backend offers "extra" buffer types that repack
// matrices into layouts its fastest kernels read (as llama.cpp uses by default); a weight goes to
// the first buffer type whose device supports the op it feeds.
import koffi, { type TypeObject } from 'koffi';
import type { Backend } from './backend.ts';
import { GgmlContext, tensorInfo } from './context.ts';
import type { BufferTypePtr, DevicePtr, RawPtr, TensorPtr } from './ffi/types.ts';
import { GGML_BACKEND_DEVICE_TYPE } from './ffi/ggml-backend.ts';
import { native } from './runtime.ts';
import { GgmlType } from './types.ts';

let extraProto: TypeObject | null = null;

/**
 * The CPU device's extra (repacking) buffer types, in ggml's order of preference. The AMX type is
 * left out unless the libraries are a native build that found AMX usable: some virtual machines
 * advertise AMX without enabling it, and its kernels then die with SIGILL.
 */
export function cpuExtraBufferTypes(): BufferTypePtr[] {
  const { backend: b } = native();
  const dev = b.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE.CPU);
  if (!dev) return [];
  const fn = b.ggml_backend_reg_get_proc_address(b.ggml_backend_dev_backend_reg(dev), 'ggml_backend_dev_get_extra_bufts');
  if (!fn) return [];
  extraProto ??= koffi.proto('void * ggml_backend_dev_get_extra_bufts_t(ggml_backend_dev_t device)');
  const list = koffi.call(fn, extraProto, dev) as RawPtr | null;
  if (!list) return [];
  const out: BufferTypePtr[] = [];
  for (let i = 0; i < 16; i++) {
    const p = new BigUint64Array(koffi.view(list + BigInt(i * 8), 8))[0]!;
    if (p === 0n) break;
    if (b.ggml_backend_buft_name(p as BufferTypePtr).toUpperCase().includes('AMX') && !native().libs.amx) continue;
    out.push(p as BufferTypePtr);
  }
  return out;
}

/**
 * Whether `dev` can run a mat-mul whose weight `w` (not yet allocated) lives in `buft`: the same
 * probe llama.cpp makes, with a zero-size buffer standing in for the weight's memory. `expertsUsed`
 * > 0: `w` holds experts and feeds ggml_mul_mat_id with that many picked per token.
 */
export function supportsMatMulWeight(dev: DevicePtr, buft: BufferTypePtr, w: TensorPtr, expertsUsed = 0): boolean {
  const { backend: b } = native();
  const info = tensorInfo(w);
  if (info.hasBuffer) throw new Error('invariant: probing a weight that is already allocated');
  const ctx = GgmlContext.create({ maxTensors: 8 });
  const dummy = b.ggml_backend_buft_alloc_buffer(buft, 0);
  if (!dummy) {
    ctx.dispose();
    return false;
  }
  const field = new BigUint64Array(koffi.view(w, 16)); // [0]: type + padding, [1]: buffer
  try {
    const op = expertsUsed > 0
      ? ctx.mulMatId(w, ctx.tensor(GgmlType.F32, [info.ne[0], expertsUsed, 512]), ctx.tensor(GgmlType.I32, [expertsUsed, 512]))
      : ctx.mulMat(w, ctx.tensor(GgmlType.F32, [info.ne[0], 512, info.ne[2], info.ne[3]]));
    field[1] = dummy;
    return b.ggml_backend_dev_supports_op(dev, op);
  } finally {
    field[1] = 0n;
    b.ggml_backend_buffer_free(dummy);
    ctx.dispose();
  }
}

/**
 * The buffer type a mat-mul weight should go to on `backend` (extra types first when `repack`);
 * `expertsUsed` > 0 for experts, as {@link supportsMatMulWeight}.
 */
export function matMulWeightBufferType(backend: Backend, w: TensorPtr, repack: boolean, expertsUsed = 0): BufferTypePtr {
  if (repack && backend.isCpu) {
    for (const buft of cpuExtraBufferTypes()) if (supportsMatMulWeight(backend.device, buft, w, expertsUsed)) return buft;
  }
  return backend.bufferType();
}

/** Name of a buffer type ('CPU', 'CPU_REPACK', 'CUDA0', ...). */
export function bufferTypeName(buft: BufferTypePtr): string {
  return native().backend.ggml_backend_buft_name(buft);
}
