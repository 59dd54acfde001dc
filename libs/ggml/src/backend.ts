// Devices and backends: a Backend is one initialized ggml device with its own thread count.
import koffi, { type TypeObject } from 'koffi';
import { DisposedError, GgmlError } from './errors.ts';
import { GGML_BACKEND_DEVICE_TYPE } from './ffi/ggml-backend.ts';
import type { BackendPtr, BufferTypePtr, DevicePtr } from './ffi/types.ts';
import { native } from './runtime.ts';

/** A device ggml can run on. */
export interface DeviceInfo {
  index: number;
  name: string;
  description: string;
  type: 'cpu' | 'gpu' | 'igpu' | 'accel' | 'meta';
  /** bytes */
  memoryFree: number;
  /** bytes */
  memoryTotal: number;
}

const TYPE_NAMES = ['cpu', 'gpu', 'igpu', 'accel', 'meta'] as const;

/** Lists every registered device. */
export function listDevices(): DeviceInfo[] {
  const { backend: b } = native();
  const out: DeviceInfo[] = [];
  for (let i = 0; i < b.ggml_backend_dev_count(); i++) {
    const dev = b.ggml_backend_dev_get(i);
    const free = [0], total = [0];
    b.ggml_backend_dev_memory(dev, free, total);
    out.push({
      index: i,
      name: b.ggml_backend_dev_name(dev),
      description: b.ggml_backend_dev_description(dev),
      type: TYPE_NAMES[b.ggml_backend_dev_type(dev)] ?? 'cpu',
      memoryFree: Number(free[0]),
      memoryTotal: Number(total[0]),
    });
  }
  return out;
}

/** Options for {@link Backend.open}. */
export interface BackendOptions {
  /** device name as ggml reports it ('CPU', 'CUDA0'); default: the CPU */
  device?: string;
  /** CPU threads (the CPU backend, and the CPU side of a GPU backend) */
  threads?: number;
}

type SetThreads = (backend: BackendPtr, n: number) => void;
let setThreadsProto: TypeObject | null = null;

/** One initialized ggml backend. dispose() frees it; it is idempotent. */
export class Backend {
  readonly device: DevicePtr;
  readonly deviceName: string;
  readonly isCpu: boolean;
  #ptr: BackendPtr | null;
  #setThreads: SetThreads | null;
  #threads = 0;

  private constructor(device: DevicePtr, ptr: BackendPtr) {
    const { backend: b } = native();
    this.device = device;
    this.#ptr = ptr;
    this.deviceName = b.ggml_backend_dev_name(device);
    this.isCpu = b.ggml_backend_dev_type(device) === GGML_BACKEND_DEVICE_TYPE.CPU;
    const reg = b.ggml_backend_dev_backend_reg(device);
    const fn = b.ggml_backend_reg_get_proc_address(reg, 'ggml_backend_set_n_threads');
    setThreadsProto ??= koffi.proto('void ggml_backend_set_n_threads_t(ggml_backend_t backend, int n_threads)');
    const proto = setThreadsProto;
    this.#setThreads = fn ? (be, n) => koffi.call(fn, proto, be, n) : null;
  }

  /** Initializes the named device (default: the CPU). */
  static open(options: BackendOptions = {}): Backend {
    const { backend: b } = native();
    let dev: DevicePtr | null = null;
    if (options.device) {
      for (let i = 0; i < b.ggml_backend_dev_count(); i++) {
        const d = b.ggml_backend_dev_get(i);
        if (b.ggml_backend_dev_name(d).toLowerCase() === options.device.toLowerCase()) dev = d;
      }
      if (!dev) {
        const names = listDevices().map((d) => d.name).join(', ');
        throw new GgmlError('no_device', `no ggml device named ${options.device} (have: ${names})`);
      }
    } else {
      dev = b.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE.CPU);
      if (!dev) throw new GgmlError('no_device', 'no CPU device registered');
    }
    const ptr = b.ggml_backend_dev_init(dev, null);
    if (!ptr) throw new GgmlError('no_device', `cannot initialize device ${b.ggml_backend_dev_name(dev)}`);
    const backend = new Backend(dev, ptr);
    if (options.threads) backend.setThreads(options.threads);
    return backend;
  }

  /** The raw handle; throws after dispose(). */
  get ptr(): BackendPtr {
    if (this.#ptr === null) throw new DisposedError('Backend');
    return this.#ptr;
  }

  /** CPU threads this backend computes with (0: ggml's default). */
  get threads(): number {
    return this.#threads;
  }

  /** Sets the CPU thread count, where the device has one. */
  setThreads(n: number): void {
    if (!Number.isInteger(n) || n < 1) throw new GgmlError('bad_threads', `thread count must be a positive integer, got ${n}`);
    this.#setThreads?.(this.ptr, n);
    this.#threads = n;
  }

  /** The device's default buffer type (device memory). */
  bufferType(): BufferTypePtr {
    return native().backend.ggml_backend_dev_buffer_type(this.device);
  }

  /** Frees the backend. Idempotent. */
  dispose(): void {
    if (this.#ptr === null) return;
    native().backend.ggml_backend_free(this.#ptr);
    this.#ptr = null;
  }
}
