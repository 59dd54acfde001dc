// The events of this gateway's requests as the coordinator batches them: one message per step
// result (GenerateEvents) on the gateway's own subject, handed to each request's handler by its
// id. A request names the subject when it is submitted (GenerateRequest.batch_subject); without
// it, or from a coordinator that predates it, events come one per message on the request's own
// subject, which each request still subscribes to.
import { randomBytes } from 'node:crypto';
import type { Logger } from '@strata/log';
import { GenerateEventsSchema, decode, subjects, type GenerateEvent } from '@strata/wire';
import type { NatsConnection, Subscription } from 'nats';

/** One subscription for every request's batched events. */
export class EventRouter {
  /** strata.v1.gateway.events.batch-<random>: this gateway process's */
  readonly subject = subjects.gatewayBatch(randomBytes(9).toString('hex'));
  readonly #handlers = new Map<string, (ev: GenerateEvent) => void>();
  readonly #sub: Subscription;

  constructor(nc: NatsConnection, log: Logger) {
    this.#sub = nc.subscribe(this.subject, {
      callback: (err, m) => {
        if (err) return log.error('batched events subscription', { err });
        let batch;
        try {
          batch = decode(GenerateEventsSchema, m.data, m.subject);
        } catch (e) {
          // Whose events they were is unknown: each request sees the gap by its next event's
          // offset (or its idle timeout) and starts over from what its client has.
          return log.warn('dropped a batch of events that does not decode', { err: e });
        }
        for (const ev of batch.events) this.#handlers.get(ev.requestId)?.(ev);
      },
    });
  }

  /** Hands request `requestId`'s events to `handler` until the returned function is called. */
  add(requestId: string, handler: (ev: GenerateEvent) => void): () => void {
    this.#handlers.set(requestId, handler);
    return () => {
      if (this.#handlers.get(requestId) === handler) this.#handlers.delete(requestId);
    };
  }

  /** requests with a handler */
  get size(): number {
    return this.#handlers.size;
  }

  /** Stops the subscription. */
  close(): void {
    this.#sub.unsubscribe();
  }
}
