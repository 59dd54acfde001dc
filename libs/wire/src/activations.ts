// Activations between stages: one micro-batch's header and float32 hidden states, cut into
// StageInput messages that each fit NATS's max payload, and put back together on arrival.
import { WireError } from './errors.ts';
import { decode, encode } from './codec.ts';
import { StageInputSchema, StepHeaderSchema, type StepHeader } from './gen/strata/v1/worker_pb.ts';

/** bytes kept free in each message for the StageInput framing around the data */
const FRAMING = 64;

/** A micro-batch as a stage receives it. */
export interface StageMessage {
  header: StepHeader;
  /** hidden states [n_tokens * n_embd] (empty at the first stage) */
  hidden: Float32Array;
}

/** Encodes a micro-batch as StageInput messages of at most `maxPayload` bytes each. */
export function encodeStageInput(header: StepHeader, hidden: Float32Array, maxPayload: number): Uint8Array[] {
  const headerBytes = encode(StepHeaderSchema, header).length;
  const first = maxPayload - headerBytes - FRAMING;
  const rest = maxPayload - FRAMING;
  if (first < 4096) throw new WireError('too_large', `a step header of ${headerBytes} bytes leaves no room under a max payload of ${maxPayload}`);
  // Float32 on the wire is little-endian; so is every platform Strata builds for (x86-64, arm64).
  const data = new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength);
  const chunks = data.length <= first ? 1 : 1 + Math.ceil((data.length - first) / rest);
  const out: Uint8Array[] = [];
  let off = 0;
  for (let c = 0; c < chunks; c++) {
    const n = Math.min(c === 0 ? first : rest, data.length - off);
    out.push(encode(StageInputSchema, {
      header: c === 0 ? header : undefined,
      chunk: c,
      chunks,
      stepId: header.stepId,
      data: data.subarray(off, off + n),
    }));
    off += n;
  }
  return out;
}

/** A micro-batch whose chunks are still arriving. */
interface PartialStep {
  header: StepHeader;
  parts: Uint8Array[];
  chunks: number;
  started: number;
}

/** Puts StageInput chunks back together; chunks of one step arrive in order (one NATS publisher). */
export class StageInputAssembler {
  readonly #open = new Map<bigint, PartialStep>();

  /** Adds one message; returns the whole micro-batch when its last chunk arrived, else null. */
  add(bytes: Uint8Array, now = Date.now()): StageMessage | null {
    const m = decode(StageInputSchema, bytes);
    if (m.chunks < 1 || m.chunk >= m.chunks) throw new WireError('bad_chunk', `chunk ${m.chunk} of ${m.chunks}`);
    let p = this.#open.get(m.stepId);
    if (m.chunk === 0) {
      if (!m.header) throw new WireError('bad_chunk', `step ${m.stepId}: first chunk without a header`);
      if (m.header.stepId !== m.stepId) throw new WireError('bad_chunk', `step ${m.stepId}: header names step ${m.header.stepId}`);
      if (p) throw new WireError('bad_chunk', `step ${m.stepId} started twice`);
      p = { header: m.header, parts: [], chunks: m.chunks, started: now };
      this.#open.set(m.stepId, p);
    } else if (!p) {
      throw new WireError('bad_chunk', `step ${m.stepId}: chunk ${m.chunk} without its first chunk`);
    } else if (m.chunk !== p.parts.length || m.chunks !== p.chunks) {
      this.#open.delete(m.stepId);
      throw new WireError('bad_chunk', `step ${m.stepId}: chunk ${m.chunk}/${m.chunks} after ${p.parts.length}/${p.chunks}`);
    }
    p.parts.push(m.data);
    if (p.parts.length < p.chunks) return null;
    this.#open.delete(m.stepId);
    const total = p.parts.reduce((s, d) => s + d.length, 0);
    if (total % 4 !== 0) throw new WireError('bad_chunk', `step ${m.stepId}: ${total} bytes of activations is not float32`);
    // A fresh, aligned buffer: the parts are views into NATS's receive buffers.
    const hidden = new Float32Array(total / 4);
    const bytesOut = new Uint8Array(hidden.buffer);
    let off = 0;
    for (const d of p.parts) {
      bytesOut.set(d, off);
      off += d.length;
    }
    return { header: p.header, hidden };
  }

  /** Drops steps whose chunks stopped coming `maxAgeMs` ago; returns their ids. */
  prune(maxAgeMs: number, now = Date.now()): bigint[] {
    const dropped: bigint[] = [];
    for (const [id, p] of this.#open) {
      if (now - p.started > maxAgeMs) {
        this.#open.delete(id);
        dropped.push(id);
      }
    }
    return dropped;
  }

  /** steps partly received */
  get pending(): number {
    return this.#open.size;
  }
}
