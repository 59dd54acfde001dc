// The main thread's side of a worker's stage thread: it starts the thread, sends it work and
// turns its answers into promises. It never computes; what it knows of the stage without asking
// (cells in use, the step computing) comes with every answer, so heartbeats and stats never wait.
import { Worker as Thread } from 'node:worker_threads';
import { KvStateError } from '@strata/kv-cache';
import type { StageMemory } from '@strata/model';
import { SeqOpKind, type SeqOp, type StepHeader } from '@strata/wire';
import { WorkerError } from './errors.ts';
import type {
  BusyStep, Fence, RingSamples, StageDescription, StageFailure, StageMessage, StageRequest, StageSnapshot, StageThreadOptions, StageValues,
} from './stage-protocol.ts';

type Op = Exclude<StageRequest['op'], 'ring' | 'leader'>;
type Body<K extends Op> = Omit<Extract<StageRequest, { op: K }>, 'op' | 'id'>;

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

/** The error of a failure on the stage thread, as the class that was thrown there. */
function rethrow(f: StageFailure): Error {
  if (f.name === 'KvStateError') return new KvStateError(f.code, f.message);
  return Object.assign(new WorkerError(f.code, f.message), f.ringed ? { ringed: true } : {});
}

/** Whether a step's failure already went to its first stage over a same-host link. */
export function ringedFailure(err: unknown): boolean {
  return (err as { ringed?: unknown } | null)?.ringed === true;
}

/** The answer to a step: what it produced and how long it computed, or stale (dropped unrun). */
export type StepAnswer = StageValues['step'];

/** A worker's stage on its own thread. */
export class StageHost {
  readonly description: StageDescription;
  /** bytes per buffer type, as loaded */
  memoryAtLoad: StageMemory;
  readonly #thread: Thread;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #snapshot: StageSnapshot;
  #exited: Error | null = null;
  /** steps sent and not yet answered, oldest first */
  readonly #steps: { stepId: bigint; tokens: number; attention: number; postedMs: number }[] = [];
  #lastStepDoneMs = 0;
  #closing: Promise<void> | null = null;
  /** called once if the thread dies on its own (a native crash, an uncaught error) */
  onFatal: (err: Error) => void = () => {};
  /** a step that came to the thread over a same-host link, and its answer to come */
  onLinked: (header: StepHeader, trace: Record<string, string>, bytes: number, answer: Promise<StepAnswer>) => void = () => {};
  /** a line the thread asks the worker to log at warn */
  onWarn: (msg: string, fields: Record<string, unknown>) => void = () => {};

  private constructor(thread: Thread, ready: Extract<StageMessage, { type: 'ready' }>) {
    this.#thread = thread;
    this.description = ready.description;
    this.memoryAtLoad = ready.memory;
    this.#snapshot = ready.snapshot;
    thread.on('message', (m: StageMessage) => this.#onMessage(m));
    thread.on('error', (err) => this.#die(err));
    thread.on('exit', (code) => this.#die(new WorkerError('stage_failed', `the stage thread exited (code ${code})`)));
  }

  /** Starts the thread and waits until it has loaded the stage (or failed to). */
  static start(options: StageThreadOptions): Promise<StageHost> {
    const thread = new Thread(new URL('./stage-thread.mjs', import.meta.url), { workerData: options });
    return new Promise((resolve, reject) => {
      // (Only our own listeners go: a Worker's internal ones keep its port working.)
      const off = () => {
        thread.off('message', onMessage);
        thread.off('error', fail);
        thread.off('exit', onExit);
      };
      const fail = (err: Error) => {
        off();
        thread.on('error', () => {}); // what it says while ending changes nothing
        void thread.terminate();
        reject(err);
      };
      const onExit = (code: number) => fail(new Error(`the stage thread exited (code ${code}) while loading`));
      const onMessage = (m: StageMessage) => {
        off();
        if (m.type === 'ready') resolve(new StageHost(thread, m));
        else if (m.type === 'load_failed') fail(Object.assign(new Error(m.failure.message), { name: m.failure.name, code: m.failure.code }));
        else fail(new Error(`the stage thread said ${m.type} before it was ready`));
      };
      thread.on('message', onMessage);
      thread.on('error', fail);
      thread.on('exit', onExit);
    });
  }

  /** What the stage held and did at its last answer: never waits for the thread. */
  get snapshot(): StageSnapshot {
    return this.#snapshot;
  }

  #onMessage(m: StageMessage): void {
    if (m.type === 'linked') {
      const answer = new Promise<StepAnswer>((resolve, reject) => this.#pending.set(m.id, { resolve: resolve as (v: unknown) => void, reject }));
      return this.onLinked(m.header, m.trace, m.bytes, this.#track(m.header, answer));
    }
    if (m.type === 'warn') return this.onWarn(m.msg, m.fields);
    if (m.type !== 'reply') return;
    this.#snapshot = m.snapshot;
    const p = this.#pending.get(m.id);
    if (!p) return;
    this.#pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(rethrow(m.failure));
  }

  #die(err: Error): void {
    if (this.#exited) return;
    this.#exited = err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
    if (!this.#closing) this.onFatal(err);
  }

  #call<K extends Op>(op: K, body: Body<K>, transfer: ArrayBuffer[] = []): Promise<StageValues[K]> {
    if (this.#exited) return Promise.reject(this.#exited);
    if (this.#closing) return Promise.reject(new WorkerError('stopping', 'the worker is stopping'));
    const id = this.#nextId++;
    return new Promise<StageValues[K]>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#thread.postMessage({ op, id, ...body }, transfer);
    });
  }

  /**
   * Runs one micro-batch (queued behind the stage's earlier work); `hidden` moves to the thread.
   * `trace`: the step's span context, for the next stage if the step goes there over a link.
   */
  step(header: StepHeader, hidden: Float32Array, trace: Record<string, string>): Promise<StepAnswer> {
    const transfer = hidden.byteLength > 0 && hidden.byteOffset === 0 && hidden.byteLength === hidden.buffer.byteLength ? [hidden.buffer as ArrayBuffer] : [];
    return this.#track(header, this.#call('step', { header, hidden, trace }, transfer));
  }

  /** Counts a step as the stage's (busy) until `answer` comes. */
  #track(header: StepHeader, answer: Promise<StepAnswer>): Promise<StepAnswer> {
    const step = {
      stepId: header.stepId, postedMs: Date.now(),
      tokens: header.entries.reduce((n, e) => n + e.nTokens, 0),
      attention: header.entries.reduce((n, e) => n + e.nTokens * (e.pos0 + e.nTokens), 0),
    };
    this.#steps.push(step);
    return answer.finally(() => {
      this.#steps.splice(this.#steps.indexOf(step), 1);
      this.#lastStepDoneMs = Date.now();
    });
  }

  /**
   * The step the stage runs now: the oldest unanswered one (the thread runs them in order), since
   * it was sent or the step before it was answered, whichever came later. Reckoned here, so that
   * knowing it costs the thread no message.
   */
  get busy(): BusyStep | null {
    const h = this.#steps[0];
    return h ? { stepId: h.stepId, tokens: h.tokens, attention: h.attention, sinceMs: Math.max(h.postedMs, this.#lastStepDoneMs) } : null;
  }

  /** Hands the stage the samples of step `stepId` (from the last stage) for a step that follows it; no answer. */
  ring(stepId: bigint, samples: RingSamples, fence: Fence): void {
    if (this.#exited || this.#closing) return;
    const r: StageRequest = { op: 'ring', id: 0, stepId, samples, fence };
    this.#thread.postMessage(r);
  }

  /** Tells the thread of a newer leader's term: its work of older terms is stale. */
  leader(term: bigint): void {
    if (this.#exited || this.#closing) return;
    const r: StageRequest = { op: 'leader', id: 0, term };
    this.#thread.postMessage(r);
  }

  /** Applies sequence operations in order, queued behind earlier work. */
  seqOps(ops: SeqOp[], fence: Fence): Promise<StageValues['seq']> {
    return this.#call('seq', { ops, fence });
  }

  /** Exports a sequence's cells in [p0, p1) for layers [l0, l1), between steps (not behind the queued ones). */
  exportState(seq: number, p0: number, p1: number, l0: number, l1: number): Promise<Uint8Array> {
    return this.#call('export', { seq, p0, p1, l0, l1 });
  }

  /** The sequence's highest position (-1: none), between steps (not behind the queued ones). */
  seqPosMax(seq: number): Promise<number> {
    return this.#call('posMax', { seq });
  }

  /**
   * Checks a state blob at once and imports it into `seq` in order with the stage's other work.
   * `give`: the caller hands over `blob`'s whole buffer, which then moves to the stage thread
   * uncopied (as it does anyway when the blob is its whole buffer).
   */
  importState(blob: Uint8Array, seq: number, give = false): Promise<StageValues['import']> {
    const whole = give || (blob.byteOffset === 0 && blob.byteLength === blob.buffer.byteLength);
    return this.#call('import', { blob, seq }, whole ? [blob.buffer as ArrayBuffer] : []);
  }

  /** Empties a sequence (after a failed push): an unfenced removal, in order with the stage's other work. */
  async dropSeq(seq: number): Promise<void> {
    const remove: SeqOp = { $typeName: 'strata.v1.SeqOp', kind: SeqOpKind.REMOVE, seq, dst: 0, p0: -1, p1: -1, delta: 0, key: '' };
    await this.seqOps([remove], { term: 0n, generation: 0n });
  }

  /** Bytes per use and buffer type, now. */
  memory(): Promise<StageMemory> {
    return this.#call('memory', {});
  }

  /** Lets the thread finish its step, fails what waits, frees the stage and ends the thread. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (this.#exited) return;
      const exited = new Promise<void>((resolve) => this.#thread.once('exit', () => resolve()));
      this.#thread.postMessage({ op: 'dispose' });
      // A thread stuck in native code for this long is cut off.
      const timer = setTimeout(() => void this.#thread.terminate(), 30_000);
      await exited;
      clearTimeout(timer);
    })();
    return this.#closing;
  }
}
