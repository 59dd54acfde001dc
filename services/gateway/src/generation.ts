// One request's life on the cluster, seen from the gateway: send it to the coordinator, turn the
// token events of each choice into text (stop strings, whole characters), cancel on a stop string
// or when the caller goes away, and report usage at the end.
import { randomBytes } from 'node:crypto';
import type { Vocab } from '@strata/ggml';
import {
  CancelRequestSchema, FinishReason, GenerateEventSchema, GenerateReplySchema, GenerateRequestSchema, decode, encode, request, subjects,
  type SampledToken,
} from '@strata/wire';
import type { NatsConnection } from 'nats';
import { ApiError, fromClusterError } from './errors.ts';
import type { GenerationSpec } from './openai-request.ts';
import { TextStream } from './text-stream.ts';

/** A generated token as responses show it. */
export interface TokenOut {
  token: number;
  text: string;
  bytes: number[];
  logprob: number;
  top: { token: number; text: string; bytes: number[]; logprob: number }[];
}

/** Why a choice ended, in OpenAI's words. */
export type FinishText = 'stop' | 'length';

/** Receives a request's output as it comes. */
export interface GenerationSink {
  /** new text of a choice, with the tokens that made it */
  delta(index: number, text: string, tokens: TokenOut[]): void;
  /** a choice ended */
  end(index: number, finish: FinishText): void;
}

/** Token counts of a finished request. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
}

/** What a generation needs from the gateway. */
export interface GenerationDeps {
  nc: NatsConnection;
  vocab: Vocab;
  /** the coordinator must accept within this long, and events must not stop for longer (milliseconds) */
  timeoutMs: number;
}

interface Choice {
  /** tokens received for the choice, whatever became of them */
  seen: number;
  text: TextStream;
  ended: boolean;
  finished: boolean;
  completion: number;
}

function tokenOut(vocab: Vocab, t: SampledToken, withLogprobs: boolean): TokenOut {
  const bytes = t.eog ? new Uint8Array(0) : vocab.tokenBytes(t.token);
  const piece = (tok: number) => {
    const b = vocab.tokenBytes(tok);
    return { token: tok, text: b.toString('utf8'), bytes: [...b] };
  };
  return {
    token: t.token, text: Buffer.from(bytes).toString('utf8'), bytes: [...bytes],
    logprob: withLogprobs ? t.logprob : 0,
    top: withLogprobs ? t.top.map((x) => ({ ...piece(x.token), logprob: x.logprob })) : [],
  };
}

/** Runs `spec` on the cluster; resolves with usage when every choice ended. */
export async function runGeneration(d: GenerationDeps, spec: GenerationSpec, prompt: number[], grammar: string, sink: GenerationSink, signal: AbortSignal): Promise<Usage> {
  const requestId = randomBytes(12).toString('hex');
  const eventsSubject = subjects.gatewayEvents(requestId);
  const n = spec.n;
  const choices: Choice[] = Array.from({ length: n }, () => ({ seen: 0, text: new TextStream(spec.stop), ended: false, finished: false, completion: 0 }));
  let usage: Usage = { promptTokens: prompt.length, completionTokens: 0, cachedTokens: 0 };
  const cancel = (indices: number[] = []) => d.nc.publish(subjects.coordinatorCancel(), encode(CancelRequestSchema, { requestId, indices }));

  let settle!: { resolve: (u: Usage) => void; reject: (e: unknown) => void };
  const done = new Promise<Usage>((resolve, reject) => (settle = { resolve, reject }));
  let idle: NodeJS.Timeout | undefined;
  const armIdle = () => {
    clearTimeout(idle);
    idle = setTimeout(() => {
      cancel();
      settle.reject(new ApiError(504, 'timeout', `the cluster sent nothing for ${d.timeoutMs} ms`));
    }, d.timeoutMs);
  };
  const endChoice = (i: number, c: Choice, finish: FinishText) => {
    if (c.ended) return;
    c.ended = true;
    const rest = c.text.end();
    if (rest) sink.delta(i, rest, []);
    sink.end(i, finish);
  };
  const sub = d.nc.subscribe(eventsSubject, {
    callback: (err, m) => {
      if (err) return settle.reject(err);
      armIdle();
      let ev;
      try {
        ev = decode(GenerateEventSchema, m.data, m.subject);
      } catch (e) {
        return settle.reject(e);
      }
      const c = choices[ev.index];
      if (!c) return;
      // Events carry how many tokens came before them: a gap (events lost while NATS
      // reconnected) fails the request rather than hand the client a stream with a hole.
      if (ev.offset !== c.seen) {
        cancel();
        return settle.reject(new ApiError(503, 'events_lost', `tokens ${c.seen}..${ev.offset} of choice ${ev.index} were lost on the way (retry the request)`));
      }
      c.seen += ev.tokens.length;
      for (const t of ev.tokens) {
        if (c.ended) break;
        c.completion++;
        const out = tokenOut(d.vocab, t, spec.logprobs !== null);
        const text = t.eog ? '' : c.text.push(Uint8Array.from(out.bytes));
        sink.delta(ev.index, text, [out]);
        if (c.text.stopped) {
          cancel([ev.index]);
          endChoice(ev.index, c, 'stop');
        }
      }
      if (ev.finish !== FinishReason.UNSPECIFIED) {
        c.finished = true;
        usage = { promptTokens: ev.promptTokens, cachedTokens: ev.cachedTokens, completionTokens: 0 };
        if (ev.finish === FinishReason.ERROR && !c.ended) {
          cancel();
          return settle.reject(fromClusterError(ev.error?.code ?? 'internal', ev.error?.message ?? 'the cluster failed the request'));
        }
        endChoice(ev.index, c, ev.finish === FinishReason.LENGTH ? 'length' : 'stop');
        if (choices.every((x) => x.finished)) settle.resolve({ ...usage, completionTokens: choices.reduce((s, x) => s + x.completion, 0) });
      }
    },
  });
  const onAbort = () => {
    cancel();
    settle.reject(new ApiError(499, 'client_closed', 'the client went away'));
  };
  signal.addEventListener('abort', onAbort);
  try {
    let reply;
    try {
      reply = await request(d.nc, subjects.coordinatorGenerate(), GenerateRequestSchema, {
        requestId, sessionId: spec.sessionId, modelId: spec.model, prompt, maxTokens: spec.maxTokens, n, eventsSubject,
        sampling: {
          temperature: spec.temperature, topK: spec.topK, topP: spec.topP, minP: spec.minP, repeatPenalty: spec.repeatPenalty,
          frequencyPenalty: spec.frequencyPenalty, presencePenalty: spec.presencePenalty,
          seed: spec.seed ?? randomBytes(4).readUInt32LE(0), grammar, logprobs: spec.logprobs !== null, topLogprobs: spec.logprobs ?? 0,
        },
      }, GenerateReplySchema, d.timeoutMs);
    } catch (err) {
      throw err instanceof ApiError ? err : new ApiError(503, 'coordinator_unavailable', `no coordinator answered: ${(err as Error).message} (retry the request)`);
    }
    if (!reply.accepted) throw fromClusterError(reply.error?.code ?? '', reply.error?.message ?? 'refused');
    armIdle();
    return await done;
  } finally {
    clearTimeout(idle);
    signal.removeEventListener('abort', onAbort);
    sub.unsubscribe();
  }
}
