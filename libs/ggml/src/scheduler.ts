// The backend scheduler: places a graph's nodes on the backends, allocates its intermediate
// tensors and computes it (ggml_backend_sched, as llama.cpp uses it).
import { DisposedError, GgmlError } from './errors.ts';
import type { GraphPtr, SchedPtr } from './ffi/types.ts';
import type { Backend } from './backend.ts';
import { checkStatus } from './buffer.ts';
import { native } from './runtime.ts';

/** Options for {@link Scheduler.create}. */
export interface SchedulerOptions {
  /** backends in priority order; the CPU backend must be last */
  backends: Backend[];
  /** largest graph (nodes) it will see */
  graphSize: number;
}

/** A ggml_backend_sched over one or more backends. dispose() frees it; idempotent. */
export class Scheduler {
  #ptr: SchedPtr | null;
  readonly backends: Backend[];

  private constructor(ptr: SchedPtr, backends: Backend[]) {
    this.#ptr = ptr;
    this.backends = backends;
  }

  /** Creates a scheduler over `backends`. */
  static create(options: SchedulerOptions): Scheduler {
    const { backend: b } = native();
    const list = new BigUint64Array(options.backends.map((be) => be.ptr));
    const ptr = b.ggml_backend_sched_new(list, null, list.length, options.graphSize, false, true);
    if (!ptr) throw new GgmlError('sched_new', 'ggml_backend_sched_new failed');
    return new Scheduler(ptr, options.backends);
  }

  /** The raw handle; throws after dispose(). */
  get ptr(): SchedPtr {
    if (this.#ptr === null) throw new DisposedError('Scheduler');
    return this.#ptr;
  }

  /** Reserves compute buffers for a worst-case graph. */
  reserve(graph: GraphPtr): void {
    if (!native().backend.ggml_backend_sched_reserve(this.ptr, graph)) {
      throw new GgmlError('sched_reserve', 'cannot reserve compute buffers for the graph');
    }
  }

  /** Allocates and computes a graph (synchronously). */
  compute(graph: GraphPtr): void {
    const { backend: b } = native();
    const s = this.ptr;
    b.ggml_backend_sched_reset(s);
    if (!b.ggml_backend_sched_alloc_graph(s, graph)) throw new GgmlError('sched_alloc', 'cannot allocate the graph');
    checkStatus(b.ggml_backend_sched_graph_compute(s, graph), 'graph compute');
  }

  /** Allocates a graph without computing it, so that inputs can be set first. */
  alloc(graph: GraphPtr): void {
    const { backend: b } = native();
    b.ggml_backend_sched_reset(this.ptr);
    if (!b.ggml_backend_sched_alloc_graph(this.ptr, graph)) throw new GgmlError('sched_alloc', 'cannot allocate the graph');
  }

  /** Computes a graph that alloc() placed. */
  run(graph: GraphPtr): void {
    checkStatus(native().backend.ggml_backend_sched_graph_compute(this.ptr, graph), 'graph compute');
  }

  /** Bytes of compute buffer held for one backend. */
  bufferSize(backend: Backend): number {
    return native().backend.ggml_backend_sched_get_buffer_size(this.ptr, backend.ptr);
  }

  /** Number of backend splits of the last graph. */
  splits(): number {
    return native().backend.ggml_backend_sched_get_n_splits(this.ptr);
  }

  /** Frees the scheduler. Idempotent. */
  dispose(): void {
    if (this.#ptr === null) return;
    native().backend.ggml_backend_sched_free(this.#ptr);
    this.#ptr = null;
  }
}
