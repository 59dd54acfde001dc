// Simulated stages, to measure a coordinator at scale without computing: many stages in one
// process, each with its own NATS subscriptions, speaking the worker protocol — heartbeats with a
// StageInfo, steps forwarded hop by hop with activations of the modelled width, results from the
// last stage, samples on the ring to the first stage (a step that follows another takes them),
// sequence operations answered with the positions each sequence holds — and answering a step
// after a modelled delay instead of running layers. What a coordinator sees is what real workers
// send it; what they would compute is a sleep.
import {
  HeartbeatSchema, RingTokensSchema, SeqOpKind, SeqOpReplySchema, SeqOpRequestSchema, StageInputAssembler, StepResultSchema, decode, encode,
  encodeStageInput, subjects, type SampledToken, type StageInfo, type StepHeader,
} from '@strata/wire';
import type { Msg, NatsConnection } from 'nats';

/** What the simulated cluster is. */
export interface SimOptions {
  pipelines: number;
  /** stages per pipeline */
  stages: number;
  /** model shape the stages announce */
  nLayer: number;
  nEmbd: number;
  nVocab: number;
  kvCells: number;
  nSeqMax: number;
  maxBatch: number;
  modelId: string;
  /** milliseconds a stage takes for a micro-batch of `tokens` tokens */
  stepMs: (tokens: number) => number;
  heartbeatMs: number;
}

/** What the stages counted. */
export interface SimCounters {
  /** steps the last stages answered */
  steps: number;
  /** tokens sampled */
  samples: number;
  /** prompt and generated tokens the first stages took */
  tokens: number;
  seqOps: number;
}

/** One simulated stage: its place, its sequences' positions, its queue. */
interface Stage {
  info: StageInfo;
  /** pipeline index, stage index */
  p: number;
  s: number;
  /** seq -> highest position held */
  pos: Map<number, number>;
  assembler: StageInputAssembler;
  /** when the stage is free again (steps run one at a time), performance.now() ms */
  freeAt: number;
  /** first stage: samples of steps by id (from the ring or its own last stage), and steps waiting for them */
  samples: Map<bigint, Map<number, number>>;
  waiting: Map<bigint, (() => void)[]>;
}

/** Simulated stages on one NATS connection. stop() ends them. */
export class SimStages {
  readonly counters: SimCounters = { steps: 0, samples: 0, tokens: 0, seqOps: 0 };
  /**
   * per decoded token sent as an entry of its own (not chained on the stages): ms from the sample
   * before it leaving the last stage to the step with it reaching the first stage — the
   * coordinator's turnaround, NATS hops and queueing behind other steps included
   */
  readonly turnaround: number[] = [];
  readonly #nc: NatsConnection;
  readonly #o: SimOptions;
  readonly #stages: Stage[] = [];
  /** per pipeline: seq -> when its last sample left the last stage (performance.now() ms) */
  readonly #sampledAt: Map<number, number>[];
  readonly #timer: NodeJS.Timeout;

  constructor(nc: NatsConnection, o: SimOptions) {
    this.#nc = nc;
    this.#o = o;
    this.#sampledAt = Array.from({ length: o.pipelines }, () => new Map<number, number>());
    const per = Math.floor(o.nLayer / o.stages);
    const started = BigInt(Date.now());
    for (let p = 0; p < o.pipelines; p++) {
      for (let s = 0; s < o.stages; s++) {
        const info: StageInfo = {
          $typeName: 'strata.v1.StageInfo', workerId: `sim-p${p}-s${s}`, modelFingerprint: `sim-${o.nLayer}x${o.nEmbd}`, modelId: o.modelId,
          nLayer: o.nLayer, l0: s * per, l1: s === o.stages - 1 ? o.nLayer : (s + 1) * per, device: 'SIM', kvCells: o.kvCells, kvStreams: 1,
          nSeqMax: o.nSeqMax, maxBatch: o.maxBatch, nVocab: o.nVocab, nEmbd: o.nEmbd, nCtxTrain: o.kvCells, startedAtMs: started,
          grpcAddress: '127.0.0.1:1', kvType: 'f16', group: `p${p}`, role: 'both', kvSwaCells: 0,
        };
        const st: Stage = { info, p, s, pos: new Map(), assembler: new StageInputAssembler(), freeAt: 0, samples: new Map(), waiting: new Map() };
        this.#stages.push(st);
        const id = info.workerId;
        nc.subscribe(subjects.workerStep(id), { callback: (err, m) => !err && this.#onStep(st, m) });
        nc.subscribe(subjects.workerSeq(id), { callback: (err, m) => !err && this.#onSeq(st, m) });
        if (s === 0) nc.subscribe(subjects.workerRing(id), { callback: (err, m) => !err && this.#onRing(st, m) });
      }
    }
    this.#heartbeat();
    this.#timer = setInterval(() => this.#heartbeat(), o.heartbeatMs);
  }

  #heartbeat(): void {
    for (const st of this.#stages) {
      let used = 0;
      for (const v of st.pos.values()) used += v + 1;
      this.#nc.publish(subjects.workerHeartbeat(), encode(HeartbeatSchema, { stage: st.info, kvCellsUsed: used, sequences: st.pos.size, sentAtMs: BigInt(Date.now()) }));
    }
  }

  #stage(p: number, s: number): Stage {
    return this.#stages[p * this.#o.stages + s]!;
  }

  #onStep(st: Stage, m: Msg): void {
    const whole = st.assembler.add(m.data);
    if (!whole) return;
    const h = whole.header;
    if (st.s === 0) {
      const sampled = this.#sampledAt[st.p]!, now = performance.now();
      for (const e of h.entries) {
        const at = sampled.get(e.seq);
        if (at === undefined) continue;
        sampled.delete(e.seq);
        if (!e.chained && e.nTokens === 1) this.turnaround.push(now - at);
      }
      if (h.follows !== 0n && !st.samples.has(h.follows)) {
        // a step planned while the one it follows computes: it waits for that step's samples
        const list = st.waiting.get(h.follows) ?? [];
        list.push(() => this.#compute(st, h));
        st.waiting.set(h.follows, list);
        return;
      }
    }
    this.#compute(st, h);
  }

  /** Runs a step after the stage is free and the modelled time passed. */
  #compute(st: Stage, h: StepHeader): void {
    if (st.s === 0 && h.follows !== 0n) {
      // chained entries take the sample the step they follow drew for their seq
      const samples = st.samples.get(h.follows)!;
      st.samples.delete(h.follows);
      let at = 0;
      for (const e of h.entries) {
        if (e.chained) h.tokens[at] = samples.get(e.seq) ?? 1;
        at += e.nTokens;
      }
    }
    const n = h.entries.reduce((a, e) => a + e.nTokens, 0);
    if (st.s === 0) this.counters.tokens += n;
    const now = performance.now();
    const start = Math.max(now, st.freeAt);
    const ms = this.#o.stepMs(n);
    st.freeAt = start + ms;
    setTimeout(() => this.#done(st, h, n, ms), st.freeAt - now);
  }

  #done(st: Stage, h: StepHeader, n: number, ms: number): void {
    for (const e of h.entries) st.pos.set(e.seq, e.pos0 + e.nTokens - 1);
    h.stageMs.push(ms);
    if (st.s < this.#o.stages - 1) {
      h.hop++;
      const next = this.#stage(st.p, st.s + 1).info.workerId;
      for (const chunk of encodeStageInput(h, new Float32Array(n * this.#o.nEmbd), this.#nc.info?.max_payload ?? 1 << 20)) this.#nc.publish(subjects.workerStep(next), chunk);
      return;
    }
    const tokens: SampledToken[] = [];
    for (const e of h.entries) {
      if (!e.output) continue;
      tokens.push({ $typeName: 'strata.v1.SampledToken', seq: e.seq, token: 1 + ((e.pos0 + e.nTokens) % 97), eog: false, logprob: 0, top: [], embedding: [] });
    }
    this.counters.steps++;
    this.counters.samples += tokens.length;
    const first = this.#stage(st.p, 0);
    if (h.ring) {
      const bySeq = new Map(tokens.map((t) => [t.seq, t.token]));
      if (first === st) this.#ringIn(first, h.stepId, bySeq);
      else this.#nc.publish(subjects.workerRing(first.info.workerId), encode(RingTokensSchema, { stepId: h.stepId, pipelineId: h.pipelineId, tokens: tokens.map((t) => ({ seq: t.seq, token: t.token, ends: false })), term: h.term, generation: h.generation, fenceProof: h.fenceProof }));
    }
    const now = performance.now(), sampled = this.#sampledAt[st.p]!;
    for (const t of tokens) sampled.set(t.seq, now);
    this.#nc.publish(h.replySubject, encode(StepResultSchema, { stepId: h.stepId, pipelineId: h.pipelineId, tokens, stageMs: h.stageMs }));
  }

  #onRing(st: Stage, m: Msg): void {
    const r = decode(RingTokensSchema, m.data, m.subject);
    this.#ringIn(st, r.stepId, new Map(r.tokens.map((t) => [t.seq, t.token])));
  }

  #ringIn(st: Stage, stepId: bigint, samples: Map<number, number>): void {
    st.samples.set(stepId, samples);
    for (const run of st.waiting.get(stepId) ?? []) run();
    st.waiting.delete(stepId);
    // samples no step follows are forgotten after a while
    if (st.samples.size > 64) st.samples.delete(st.samples.keys().next().value!);
  }

  #onSeq(st: Stage, m: Msg): void {
    const req = decode(SeqOpRequestSchema, m.data, m.subject);
    this.counters.seqOps += req.ops.length;
    const posMax = req.ops.map((op) => {
      const max = st.pos.get(op.seq) ?? -1;
      switch (op.kind) {
        case SeqOpKind.REMOVE:
          if (op.p0 <= 0 && op.p1 < 0) st.pos.delete(op.seq);
          else if (op.p1 < 0 && max >= op.p0) st.pos.set(op.seq, op.p0 - 1);
          break;
        case SeqOpKind.COPY: {
          const top = op.p1 < 0 ? max : Math.min(max, op.p1 - 1);
          if (top >= 0) st.pos.set(op.dst, top);
          break;
        }
        case SeqOpKind.KEEP:
          for (const k of [...st.pos.keys()]) if (k !== op.seq) st.pos.delete(k);
          break;
        case SeqOpKind.ADD:
          if (max >= 0) st.pos.set(op.seq, max + op.delta);
          break;
        case SeqOpKind.DIVIDE:
          if (max >= 0 && op.delta > 0) st.pos.set(op.seq, Math.floor(max / op.delta));
          break;
        default:
          // SAVE, LOAD, FORGET: no tiers here (a SAVE answers -1: nothing saved)
          return -1;
      }
      return st.pos.get(op.seq) ?? -1;
    });
    let used = 0;
    for (const v of st.pos.values()) used += v + 1;
    m.respond(encode(SeqOpReplySchema, { kvCellsUsed: used, posMax, stale: false }));
  }

  /** Stops heartbeating (the subscriptions end with the connection). */
  stop(): void {
    clearInterval(this.#timer);
  }
}
