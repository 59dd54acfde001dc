// What the coordinator tells gateways and stages besides steps, as values: the answer to a
// generate request, the events a request's choices stream, sequence operations. Pure: the
// runtime publishes them.
import { FinishReason, GenerateEventSchema, GenerateEventsSchema, encode, type GenerateReply, type GenerateRequest, type SampledToken, type SeqOp, type SeqOpKind } from '@strata/wire';

/** An event of one choice of a request, for its gateway. */
export interface ClientEvent {
  requestId: string;
  /** choice index */
  index: number;
  /** tokens sampled since the last event */
  tokens: SampledToken[];
  /** UNSPECIFIED while the choice goes on */
  finish: FinishReason;
  error?: { code: string; message: string };
  /** tokens of the choice sent before this event (a gateway sees a gap by it) */
  offset: number;
  /** set on the last event */
  promptTokens: number;
  cachedTokens: number;
}

/** An event as it goes on the wire. */
export function encodeEvent(e: ClientEvent): Uint8Array {
  return encode(GenerateEventSchema, e);
}

/** Events of several requests of one gateway in one message (GenerateEvents), in order. */
export function encodeEvents(events: readonly ClientEvent[]): Uint8Array {
  return encode(GenerateEventsSchema, { events: [...events] });
}

/**
 * Where `req`'s events go: batched per step to its gateway's subject when it named one, else one
 * message each to the request's own subject.
 */
export function eventsTo(req: GenerateRequest): { subject: string; batched: boolean } {
  return req.batchSubject ? { subject: req.batchSubject, batched: true } : { subject: req.eventsSubject, batched: false };
}

/** The last events of choices of `req` that fail; `offset`: tokens the choice already sent. */
export function failureEvents(req: GenerateRequest, choices: readonly { index: number; offset: number }[], code: string, message: string): ClientEvent[] {
  return choices.map(({ index, offset }) => ({
    requestId: req.requestId, index, offset, tokens: [], finish: FinishReason.ERROR, error: { code, message }, promptTokens: req.prompt.length, cachedTokens: 0,
  }));
}

/** One sequence operation (p0, p1 < 0: unbounded). */
export function seqOp(kind: SeqOpKind, seq: number, p0 = -1, p1 = -1, dst = 0): SeqOp {
  return { $typeName: 'strata.v1.SeqOp', kind, seq, dst, p0, p1, delta: 0, key: '' };
}

/** A refusal as the coordinator answers it. */
export function refuse(code: string, message: string): GenerateReply {
  return { $typeName: 'strata.v1.GenerateReply', accepted: false, error: { $typeName: 'strata.v1.Error', code, message, workerId: '' }, cachedTokens: 0, pipelineId: '', coordinatorId: '', term: 0n };
}

/** An acceptance by pipeline `pipelineId` (the coordinator adds its id and term). */
export function accept(pipelineId: string): GenerateReply {
  return { $typeName: 'strata.v1.GenerateReply', accepted: true, cachedTokens: 0, pipelineId, coordinatorId: '', term: 0n };
}
