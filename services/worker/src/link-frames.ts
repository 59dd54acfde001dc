// The frames of a same-host stage link (stage-link.ts): [u32 LE length of what follows][u8
// kind][body]. A hello (JSON) answered by a welcome or a refusal, then steps and samples.
import type { Socket } from 'node:net';
import { StepHeaderSchema, decode, encode, type StepHeader } from '@strata/wire';
import { WorkerError } from './errors.ts';

/** Frame kinds: [u32 LE length of what follows][u8 kind][body]. */
export const FrameKind = { hello: 1, welcome: 2, refuse: 3, step: 4, ring: 5 } as const;
type Kind = (typeof FrameKind)[keyof typeof FrameKind];
const KINDS = new Set<number>(Object.values(FrameKind));

/** One frame as read. */
export interface Frame {
  kind: Kind;
  body: Buffer;
}

/** The parts to write for a frame of `kind` whose body is `parts` one after another. */
export function frame(kind: Kind, ...parts: Uint8Array[]): Uint8Array[] {
  const head = Buffer.allocUnsafe(5);
  head.writeUInt32LE(1 + parts.reduce((n, p) => n + p.length, 0), 0);
  head.writeUInt8(kind, 4);
  return [head, ...parts];
}

/** Writes a frame of `kind` whose body is `parts` to `s` in one go (corked); returns its bytes. */
export function writeFrame(s: Pick<Socket, 'cork' | 'uncork' | 'write'>, kind: Kind, ...parts: Uint8Array[]): number {
  const all = frame(kind, ...parts);
  s.cork();
  for (const p of all) s.write(p);
  s.uncork();
  return all.reduce((n, p) => n + p.length, 0);
}

/** Cuts a byte stream into frames; a frame over `maxBytes` or of an unknown kind throws. */
export class FrameReader {
  #parts: Buffer[] = [];
  #have = 0;
  /** bytes the frame being read needs in all (its length prefix included); 0: not known yet */
  #need = 0;
  maxBytes: number;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  /** Adds bytes; returns the frames they complete. */
  push(chunk: Buffer): Frame[] {
    this.#parts.push(chunk);
    this.#have += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.#need === 0) {
        if (this.#have < 5) break;
        const head = this.#parts[0]!.length >= 5 ? this.#parts[0]! : this.#join();
        const length = head.readUInt32LE(0);
        const kind = head.readUInt8(4);
        if (length < 1 || length > this.maxBytes) throw new WorkerError('bad_link_frame', `a frame of ${length} bytes; at most ${this.maxBytes}`);
        if (!KINDS.has(kind)) throw new WorkerError('bad_link_frame', `a frame of kind ${kind}`);
        this.#need = 4 + length;
      }
      if (this.#have < this.#need) break;
      const all = this.#join();
      out.push({ kind: all.readUInt8(4) as Kind, body: all.subarray(5, this.#need) });
      const rest = all.subarray(this.#need);
      this.#parts = rest.length > 0 ? [rest] : [];
      this.#have = rest.length;
      this.#need = 0;
    }
    return out;
  }

  #join(): Buffer {
    if (this.#parts.length > 1) this.#parts = [Buffer.concat(this.#parts, this.#have)];
    return this.#parts[0]!;
  }
}

/** A step as a link carries it: header, trace context (W3C fields) and activations. */
export interface LinkStep {
  header: StepHeader;
  trace: Record<string, string>;
  /** [n_tokens * n_embd], its own aligned buffer */
  hidden: Float32Array;
}

/** The body of a step frame: [u32 header bytes][StepHeader][u32 trace bytes][trace JSON][float32 activations]. */
export function stepBody(header: StepHeader, trace: Record<string, string>, hidden: Float32Array): Uint8Array[] {
  const h = encode(StepHeaderSchema, header);
  const t = Buffer.from(JSON.stringify(trace));
  const lens = Buffer.allocUnsafe(8);
  lens.writeUInt32LE(h.length, 0);
  lens.writeUInt32LE(t.length, 4);
  // Float32 on the wire is little-endian, as every platform Strata builds for.
  return [lens.subarray(0, 4), h, lens.subarray(4, 8), t, new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength)];
}

/** Reads a step frame's body; anything that does not fit the layout throws. */
export function readStep(body: Buffer): LinkStep {
  const bad = (why: string) => new WorkerError('bad_link_frame', `a step frame ${why}`);
  let at = 0;
  const take = (what: string): Buffer => {
    if (body.length < at + 4) throw bad(`ends inside its ${what}'s length`);
    const n = body.readUInt32LE(at);
    if (body.length < at + 4 + n) throw bad(`ends inside its ${what} (${n} bytes)`);
    at += 4 + n;
    return body.subarray(at - n, at);
  };
  const header = decode(StepHeaderSchema, take('header'));
  let trace: unknown;
  try {
    trace = JSON.parse(take('trace context').toString('utf8'));
  } catch (err) {
    if (err instanceof WorkerError) throw err;
    throw bad('has a trace context that is not JSON');
  }
  if (typeof trace !== 'object' || trace === null || Array.isArray(trace) || Object.values(trace).some((v) => typeof v !== 'string')) throw bad('has a trace context that is not an object of strings');
  const data = body.subarray(at);
  if (data.length % 4 !== 0) throw bad(`carries ${data.length} bytes of activations, not float32`);
  const hidden = new Float32Array(data.length / 4);
  new Uint8Array(hidden.buffer).set(data);
  return { header, trace: trace as Record<string, string>, hidden };
}
