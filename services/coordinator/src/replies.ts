// What the coordinator sends gateways and stages that is not a step: refusals, failure events and
// sequence operations.
import { FinishReason, GenerateEventSchema, encode, type GenerateReply, type GenerateRequest, type SeqOp, type SeqOpKind } from '@strata/wire';
import type { NatsConnection } from 'nats';
import { endRequest } from './telemetry.ts';

/** Ends choices of a request with an error event; `offset`: tokens the choice already sent. */
export function publishFailure(nc: NatsConnection, req: GenerateRequest, choices: { index: number; offset: number }[], code: string, message: string): void {
  for (const { index, offset } of choices) {
    nc.publish(req.eventsSubject, encode(GenerateEventSchema, {
      requestId: req.requestId, index, offset, finish: FinishReason.ERROR, error: { code, message }, promptTokens: req.prompt.length,
    }));
  }
  endRequest(req, { code, message });
}

/** One sequence operation (p0, p1 < 0: unbounded). */
export function seqOp(kind: SeqOpKind, seq: number, p0 = -1, p1 = -1): SeqOp {
  return { $typeName: 'strata.v1.SeqOp', kind, seq, dst: 0, p0, p1, delta: 0 };
}

/** A refusal as the coordinator answers it. */
export function refuse(code: string, message: string): GenerateReply {
  return { $typeName: 'strata.v1.GenerateReply', accepted: false, error: { $typeName: 'strata.v1.Error', code, message, workerId: '' }, cachedTokens: 0, pipelineId: '', coordinatorId: '', term: 0n };
}
