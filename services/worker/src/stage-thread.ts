// The stage thread of a worker: it owns the stage (weights, KV cache, samplers) and runs what the
// main thread sends, so the main thread never computes. Steps, sequence operations and imports
// change cells: they run one at a time, in arrival order. A step computes on this thread (never
// on a pool thread: see StepRunner.run), so what only reads (exports, positions, memory) is
// answered between steps; the coordinator keeps a step to its budget (--step-budget-ms).
// Work of an older fence (a deposed leader, a pipeline that was reset since) is dropped unrun.
import { parentPort, workerData } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { Vocab } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { decodeState, type DecodedState } from '@strata/kv-cache';
import { Stage, parseRange, readHParams } from '@strata/model';
import type { RingTokens } from '@strata/wire';
import { RingBook, fillChained, ringEntries, ringMessage, ringSamples } from './ring.ts';
import type { LinkStep } from './link-frames.ts';
import { StageLinks } from './stage-link.ts';
import { SamplerSet } from './samplers.ts';
import { StepRunner, stepErrorCode } from './step-runner.ts';
import {
  fenceOlder, newestFence, type Fence, type StageFailure, type StageMessage, type StageRequest, type StageSnapshot, type StageThreadOptions,
} from './stage-protocol.ts';

/**
 * How long a step that follows another waits for that step's samples before it drops the entries
 * that take them (the coordinator's step deadline resets a pipeline that stuck sooner).
 */
const RING_WAIT_MS = 30_000;

/** Work that changes cells: run in arrival order, one at a time. */
type Ordered =
  | Extract<StageRequest, { op: 'step' | 'seq' }>
  | { op: 'import'; id: number; state: DecodedState; seq: number };

function failure(err: unknown, code?: string): StageFailure {
  const e = err as { name?: string; code?: unknown; message?: string };
  return { name: e?.name ?? 'Error', code: code ?? (typeof e?.code === 'string' ? e.code : 'internal'), message: e?.message ?? String(err) };
}

/** The stage and everything that runs on it; one per thread. */
class StageActor {
  readonly #o: StageThreadOptions;
  readonly #stage: Stage;
  readonly #runner: StepRunner;
  readonly #samplers: SamplerSet | null;
  readonly #vocab: Vocab | null;
  readonly #post: (m: StageMessage, transfer?: ArrayBuffer[]) => void;
  readonly #queue: Ordered[] = [];
  #running = false;
  #pumping: Promise<void> = Promise.resolve();
  #lastStep: StageSnapshot['lastStep'] = null;
  /** the newest fence seen */
  #fence: Fence = { term: 0n, generation: 0n };
  /** samples of recent steps, for the steps that follow them (a first stage) */
  readonly #ring = new RingBook();
  /** close() began: a step waiting for samples stops waiting */
  #closed = false;
  /** same-host links to the next and first stages (null: none) */
  #links: StageLinks | null = null;
  /** ids of steps that came over a link: negative, apart from the main thread's */
  #linkedId = -1;

  constructor(o: StageThreadOptions, post: (m: StageMessage, transfer?: ArrayBuffer[]) => void) {
    this.#o = o;
    this.#post = post;
    const file = GgufFile.open(o.model);
    let stage: Stage | undefined;
    let vocab: Vocab | null = null;
    try {
      const hp = readHParams(file);
      const range = o.layers ? parseRange(o.layers) : { l0: 0, l1: hp.nLayer };
      stage = Stage.load(file, hp, {
        model: o.model, range, threads: o.threads, device: o.device, kvType: o.kvType, maxBatch: o.maxBatch,
        // one stream per sequence: a step computes as one graph whichever sequences it holds
        ...(o.kvStreams ? { ctxSize: o.ctxSize / o.nSeqMax, kvStreams: o.nSeqMax, groupStreams: true } : { ctxSize: o.ctxSize }),
        kvSwaFull: o.kvSwaFull, kvSwaSeqs: o.nSeqMax,
        // the step runner samples the logits at once
        reuseLogits: true,
        kvDebug: o.kvDebug ? (dump) => process.stderr.write(`${dump}\n`) : undefined,
      });
      if (stage.isLast) vocab = Vocab.load(o.model);
    } catch (err) {
      stage?.dispose();
      throw err;
    } finally {
      file.close();
    }
    this.#stage = stage;
    this.#vocab = vocab;
    this.#samplers = stage.isLast ? new SamplerSet(stage.hp.nVocab, vocab) : null;
    this.#runner = new StepRunner(stage, this.#samplers, { workerId: o.workerId, nSeqMax: o.nSeqMax, maxBatch: o.maxBatch });
  }

  /** Opens this stage's socket for same-host links (--stage-link-dir). */
  async openLinks(): Promise<void> {
    if (!this.#o.linkDir) return;
    this.#links = await StageLinks.open({
      dir: this.#o.linkDir, workerId: this.#o.workerId, token: this.#o.linkToken,
      // a whole micro-batch's activations, its header and trace context
      maxFrameBytes: this.#o.maxBatch * this.#stage.hp.nEmbd * 4 + (1 << 20),
    }, {
      step: (s, bytes) => this.#linkedStep(s, bytes),
      ring: (r) => this.#linkedRing(r),
      warn: (msg, fields) => this.#post({ type: 'warn', msg, fields }),
    });
  }

  /** A step from the stage before, over a link: the main thread hears of it, then it queues as any step. */
  #linkedStep(s: LinkStep, bytes: number): void {
    const id = this.#linkedId--;
    this.#post({ type: 'linked', id, header: s.header, trace: s.trace, bytes });
    this.onRequest({ op: 'step', id, header: s.header, hidden: s.hidden, trace: s.trace });
  }

  /** A last stage's samples, over a link, for a step that follows theirs here. */
  #linkedRing(r: RingTokens): void {
    this.onRequest({ op: 'ring', id: 0, stepId: r.stepId, samples: ringSamples(r.tokens, r.error !== undefined), fence: { term: r.term, generation: r.generation } });
  }

  /** Tells the main thread what it loaded. */
  ready(): void {
    const s = this.#stage, hp = s.hp;
    this.#post({
      type: 'ready', memory: s.memory(), snapshot: this.#snapshot(),
      description: {
        fingerprint: hp.fingerprint, nLayer: hp.nLayer, nVocab: hp.nVocab, nEmbd: hp.nEmbd, nCtxTrain: hp.nCtxTrain,
        l0: s.range.l0, l1: s.range.l1, kvCells: s.cache.size, kvStreams: s.cache.cells.streams, rowBytes: s.cache.storage.rowBytes,
        kvSwaCells: s.cache.groups.find((g) => g.windowed)?.cells.size ?? 0,
      },
    });
  }

  #snapshot(): StageSnapshot {
    const s = this.#stage;
    let sequences = 0;
    for (let q = 0; q < this.#o.nSeqMax; q++) if (s.cache.seqPosMax(q) >= 0) sequences++;
    return { used: s.cache.cells.used, sequences, counters: s.counters, queued: this.#queue.length, lastStep: this.#lastStep, links: this.#links ? { ...this.#links.counters } : null };
  }

  #ok(id: number, value: unknown, transfer: ArrayBuffer[] = []): void {
    this.#post({ type: 'reply', id, ok: true, value, snapshot: this.#snapshot() }, transfer);
  }

  #fail(id: number, f: StageFailure): void {
    this.#post({ type: 'reply', id, ok: false, failure: f, snapshot: this.#snapshot() });
  }

  /** Takes one request from the main thread. */
  onRequest(r: StageRequest): void {
    try {
      switch (r.op) {
        case 'step':
          this.#raise({ term: r.header.term, generation: r.header.generation });
          this.#queue.push(r);
          break;
        case 'ring':
          if (!fenceOlder(r.fence, this.#fence)) this.#ring.record(r.stepId, r.samples);
          return;
        case 'leader':
          // Work of an older leader's terms is stale from now on (steps over links too).
          this.#raise({ term: r.term, generation: 0n });
          return;
        case 'seq':
          this.#raise(r.fence);
          this.#queue.push(r);
          break;
        case 'import':
          // Checked (checksum, format) at once, applied in order.
          this.#queue.push({ op: 'import', id: r.id, state: decodeState(r.blob), seq: r.seq });
          break;
        case 'export': {
          const blob = this.#stage.cache.exportState(r.seq, { p0: r.p0, p1: r.p1, layers: { l0: r.l0, l1: r.l1 } });
          this.#ok(r.id, blob, [blob.buffer as ArrayBuffer]);
          break;
        }
        case 'posMax':
          this.#ok(r.id, this.#stage.cache.seqPosMax(r.seq));
          break;
        case 'memory':
          this.#ok(r.id, this.#stage.memory());
          break;
      }
    } catch (err) {
      this.#fail(r.id, failure(err));
    }
    void this.#pump();
  }

  #raise(f: Fence): void {
    const newest = newestFence(this.#fence, f);
    if (newest === this.#fence) return;
    this.#fence = newest;
    // A step waiting for samples of an older fence's step no longer waits.
    this.#ring.interrupt();
  }

  #pump(): Promise<void> {
    if (!this.#running) this.#pumping = this.#drain();
    return this.#pumping;
  }

  async #drain(): Promise<void> {
    this.#running = true;
    try {
      for (let t = this.#queue.shift(); t; t = this.#queue.shift()) await this.#run(t);
    } finally {
      this.#running = false;
    }
  }

  async #run(t: Ordered): Promise<void> {
    switch (t.op) {
      case 'step': return this.#step(t);
      case 'seq':
        if (fenceOlder(t.fence, this.#fence)) return this.#ok(t.id, { stale: true });
        try {
          this.#ok(t.id, { posMax: this.#runner.seqOps(t.ops) });
        } catch (err) {
          this.#fail(t.id, failure(err, (err as { code?: string }).code ?? 'bad_request'));
        }
        return;
      case 'import':
        try {
          // A push builds its sequence from parts of several sources, cut at other positions.
          const r = this.#stage.cache.importState(t.state, t.seq, { merge: true });
          this.#ok(t.id, { l0: r.layers.l0, l1: r.layers.l1, cells: r.cells });
        } catch (err) {
          this.#fail(t.id, failure(err));
        }
        return;
    }
  }

  async #step(t: Extract<Ordered, { op: 'step' }>): Promise<void> {
    const h = t.header;
    const fence = { term: h.term, generation: h.generation };
    const stale = () => this.#closed || fenceOlder(fence, this.#fence);
    if (stale()) return this.#ok(t.id, { stale: true });
    // A step that follows another takes that step's samples here, in its place in the order.
    let rewrite;
    if (h.follows !== 0n && this.#stage.isFirst) {
      const samples = await this.#ring.wait(h.follows, RING_WAIT_MS, stale);
      if (stale()) return this.#ok(t.id, { stale: true });
      rewrite = fillChained(h.entries, h.tokens, samples);
      h.entries = rewrite.entries;
      h.tokens = rewrite.tokens;
      if (h.entries.length === 0) return this.#ok(t.id, { output: { kind: 'empty' }, ms: 0, rewrite });
    }
    const tokens = h.entries.reduce((n, e) => n + e.nTokens, 0);
    // Where this step's output goes next, connected while it computes.
    const next = this.#stage.isLast ? undefined : h.route[h.hop + 1];
    const first = h.ring && h.hop > 0 ? h.route[0] : undefined;
    if (this.#links && next !== undefined) this.#links.warm(next);
    // (a middle stage sends the first stage samples only when a step fails: over NATS is enough)
    if (this.#links && first !== undefined && this.#stage.isLast) this.#links.warm(first);
    const t0 = performance.now();
    try {
      if (this.#o.testStepDelayMs > 0 && tokens >= this.#o.testStepDelayMinTokens) await sleep(this.#o.testStepDelayMs);
      const output = this.#runner.run(h, t.hidden);
      const ms = performance.now() - t0;
      this.#lastStep = { tokens: output.kind === 'tokens' ? output.evaluated : tokens, ms };
      // One stage is the whole ring: its samples stay here for the step that follows.
      if (h.ring && this.#stage.isFirst && output.kind === 'tokens') this.#ring.record(h.stepId, ringSamples(ringEntries(output.tokens, output.ends)));
      if (output.kind === 'hidden' && this.#links && next !== undefined) {
        const via = await this.#links.stepPath(next, fence);
        if (via !== 'nats') {
          const bytes = via === 'link' ? this.#links.sendStep(next, { ...h, hop: h.hop + 1, stageMs: [...h.stageMs, ms] }, t.trace, output.hidden) : 0;
          return this.#ok(t.id, { output: { kind: 'forwarded', bytes, dropped: via === 'drop' }, ms, rewrite });
        }
      }
      const ringed = output.kind === 'tokens' && first !== undefined && !!this.#links?.sendRing(first, ringMessage(h, ringEntries(output.tokens, output.ends), null));
      this.#ok(t.id, { output, ms, rewrite, ringed }, output.kind === 'hidden' ? [output.hidden.buffer as ArrayBuffer] : []);
    } catch (err) {
      if (h.ring && this.#stage.isFirst) this.#ring.record(h.stepId, ringSamples([], true));
      const f = failure(err, stepErrorCode(err));
      // A step that follows this one must not wait for samples that will not come.
      f.ringed = first !== undefined && !!this.#links?.sendRing(first, ringMessage(h, [], { code: f.code, message: f.message, workerId: this.#o.workerId }));
      this.#fail(t.id, f);
    }
  }

  /** Fails what waits, lets the computing step finish, then frees the stage. */
  async close(): Promise<void> {
    for (const t of this.#queue.splice(0)) this.#fail(t.id, { name: 'WorkerError', code: 'stopping', message: 'the worker is stopping' });
    this.#closed = true;
    this.#ring.interrupt();
    await this.#pumping;
    await this.#links?.close();
    this.#samplers?.dispose();
    this.#stage.dispose();
    this.#vocab?.dispose();
  }
}

const port = parentPort;
if (!port) throw new Error('stage-thread.ts runs as a worker thread');
const post = (m: StageMessage, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
let actor: StageActor | undefined;
try {
  actor = new StageActor(workerData as StageThreadOptions, post);
} catch (err) {
  post({ type: 'load_failed', failure: failure(err) });
  port.close();
}
if (actor) {
  const a = actor;
  a.openLinks().then(() => {
    port.on('message', (r: StageRequest | { op: 'dispose' }) => {
      if (r.op === 'dispose') {
        void a.close().finally(() => port.close());
        return;
      }
      a.onRequest(r);
    });
    a.ready();
  }, (err: unknown) => {
    post({ type: 'load_failed', failure: failure(err) });
    void a.close().finally(() => port.close());
  });
}
