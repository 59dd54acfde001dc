// One request's life on the cluster, seen from the gateway: send it to the coordinator, turn the
// token events of each choice into text (stop strings, whole characters), cancel on a stop string
// or when the caller goes away, and report usage at the end.
import { randomBytes } from 'node:crypto';
import type { Vocab } from '@strata/ggml';
import {
  CancelRequestSchema, FinishReason, GenerateEventSchema, GenerateReplySchema, GenerateRequestSchema, decode, encode, request, subjects,
  type ChoiceProgress, type GenerateEvent, type SampledToken,
} from '@strata/wire';
import type { Msg, NatsConnection, Subscription } from 'nats';
import { ApiError, fromClusterError } from './errors.ts';
import type { EventRouter } from './event-router.ts';
import type { LeaderWatch } from './leader-watch.ts';
import type { Logger } from '@strata/log';
import type { GenerationSpec } from './openai-request.ts';
import { TextStream } from './text-stream.ts';
import { context } from '@opentelemetry/api';
import { natsHeaders } from '@strata/telemetry';

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
  /** an embedding request's answer, unit length // [n_embd] */
  embedding?(index: number, values: number[]): void;
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
  /** where batched events arrive (null: every event on the request's own subject) */
  events: EventRouter | null;
  vocab: Vocab;
  /** the coordinator must accept within this long, and events must not stop for longer (milliseconds) */
  timeoutMs: number;
  leader: LeaderWatch;
  log: Logger;
  /** special tokens shown as their text (the markers of tool calls) */
  shown: ReadonlySet<number>;
}

interface Choice {
  /** token ids received for the choice, whatever became of them */
  tokens: number[];
  text: TextStream;
  /** the client has had its end */
  ended: boolean;
  /** the cluster said it is over */
  finished: boolean;
  completion: number;
  /** its last token ended the generation */
  eog: boolean;
}

function tokenOut(vocab: Vocab, t: SampledToken, withLogprobs: boolean, shown: ReadonlySet<number>): TokenOut {
  const bytes = t.eog ? new Uint8Array(0) : vocab.tokenBytes(t.token, shown.has(t.token));
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

/**
 * A submission unanswered for this long is sent again (to the leader known by then): the
 * coordinator takes a request id once, so a slow answer followed by a retry does no harm.
 */
const SUBMIT_TRY_MS = 2000;

/** Event gaps a request recovers from (by starting over from what its client has) before it fails. */
const MAX_GAPS = 3;

/** The answer when no coordinator has held the lease for the leader watch's lapse. */
function noCoordinator(leader: LeaderWatch): ApiError {
  const e = new ApiError(503, 'no_coordinator', `no coordinator has led the cluster for ${leader.lapseMs} ms (the leader stopped and no standby took over); retry the request`);
  e.retryAfter = 1;
  return e;
}

/** Whether a submission failed because no coordinator was there to answer (yet). */
function unanswered(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === '503' || code === 'TIMEOUT' || code === 'REQUEST_TIMEOUT' || /no responders|timeout/i.test((err as Error).message);
}

/**
 * Runs `spec` on the cluster; resolves with usage when every choice ended. When a new coordinator
 * leader announces itself, the request moves to it with what each choice has streamed so far
 * (a new request id, so nothing of the old leader reaches the client after that).
 */
export async function runGeneration(d: GenerationDeps, spec: GenerationSpec, prompt: number[], grammar: string, sink: GenerationSink, signal: AbortSignal): Promise<Usage> {
  // The HTTP request's span: every (re)submission to a coordinator carries it.
  const traced = context.active();
  const n = spec.n;
  const choices: Choice[] = Array.from({ length: n }, () => ({ tokens: [], text: new TextStream(spec.stop), ended: false, finished: false, completion: 0, eog: false }));
  let usage: Usage = { promptTokens: prompt.length, completionTokens: 0, cachedTokens: 0 };
  const seed = spec.seed ?? randomBytes(4).readUInt32LE(0);
  /** the attempt now running: its request id, events subscription (and batched events' handler) and the term that accepted it */
  let current = null as { requestId: string; sub: Subscription; off: () => void; term: bigint } | null;
  let settled = false;
  /** event gaps recovered from so far */
  let gaps = 0;
  /** attempts this request moved away from (cancelled): told again while their session is busy */
  const earlier: string[] = [];
  const cancelId = (requestId: string, indices: number[] = []) => d.nc.publish(subjects.coordinatorCancel(), encode(CancelRequestSchema, { requestId, indices }));
  const cancel = (indices: number[] = []) => {
    if (current) cancelId(current.requestId, indices);
  };

  let settle!: { resolve: (u: Usage) => void; reject: (e: unknown) => void };
  const done = new Promise<Usage>((resolve, reject) => (settle = {
    resolve: (u) => { settled = true; resolve(u); },
    reject: (e) => { settled = true; reject(e); },
  }));
  let idle: NodeJS.Timeout | undefined;
  /** when the cluster last said something of this request (an event, an acceptance) */
  let heardMs = Date.now();
  /**
   * Fails the request once the cluster is silent for too long: `timeoutMs`, or the leader watch's
   * lapse while no coordinator holds the lease (a dead leader without a standby sends nothing more).
   */
  const arm = () => {
    clearTimeout(idle);
    const limit = () => (d.leader.lapsed ? d.leader.lapseMs : d.timeoutMs);
    idle = setTimeout(() => {
      if (settled) return;
      // (A lease that came back meanwhile gives the request its full timeout again.)
      if (Date.now() - heardMs < limit()) return arm();
      cancel();
      settle.reject(d.leader.lapsed ? noCoordinator(d.leader) : new ApiError(504, 'timeout', `the cluster sent nothing for ${d.timeoutMs} ms`));
    }, Math.max(0, limit() - (Date.now() - heardMs)));
  };
  const armIdle = () => {
    heardMs = Date.now();
    arm();
  };
  const endChoice = (i: number, c: Choice, finish: FinishText) => {
    if (c.ended) return;
    c.ended = true;
    const rest = c.text.end();
    if (rest) sink.delta(i, rest, []);
    sink.end(i, finish);
  };
  const finishAll = () => {
    if (choices.every((x) => x.finished)) settle.resolve({ ...usage, completionTokens: choices.reduce((s, x) => s + x.completion, 0) });
  };
  const onMessage = (m: Msg) => {
    let ev;
    try {
      ev = decode(GenerateEventSchema, m.data, m.subject);
    } catch (e) {
      return settle.reject(e);
    }
    onEvent(ev);
  };
  const onEvent = (ev: GenerateEvent) => {
    armIdle();
    const c = choices[ev.index];
    if (!c) return;
    // Events carry how many tokens came before them. A gap (events lost while NATS reconnected)
    // never reaches the client: the request starts over under a new id from what the client
    // has, as when a new leader takes over; a few times at most, then it fails retriably.
    if (ev.offset !== c.tokens.length) {
      if (ev.offset < c.tokens.length) return; // one already had
      cancel();
      if (++gaps > MAX_GAPS) return settle.reject(new ApiError(503, 'events_lost', `tokens ${c.tokens.length}..${ev.offset} of choice ${ev.index} were lost on the way (retry the request)`));
      d.log.warn('events were lost on the way: the request starts over from what its client has', { choice: ev.index, had: c.tokens.length, offset: ev.offset });
      return move();
    }
    for (const t of ev.tokens) {
      c.tokens.push(t.token);
      c.eog ||= t.eog;
      if (c.ended) continue;
      c.completion++;
      if (t.embedding.length > 0) sink.embedding?.(ev.index, t.embedding);
      // An end of generation is no content: no delta, no logprob entry.
      if (t.eog) continue;
      const out = tokenOut(d.vocab, t, spec.logprobs !== null, d.shown);
      sink.delta(ev.index, c.text.push(Uint8Array.from(out.bytes)), [out]);
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
      finishAll();
    }
  };

  /** Sends the request (again, with `resume`), retrying while no coordinator answers; its term. */
  const submit = async (resume: ChoiceProgress[]): Promise<void> => {
    const requestId = randomBytes(12).toString('hex');
    const eventsSubject = subjects.gatewayEvents(requestId);
    const sub = d.nc.subscribe(eventsSubject, { callback: (err, m) => (err ? settle.reject(err) : onMessage(m)) });
    const off = d.events?.add(requestId, onEvent) ?? (() => {});
    current?.sub.unsubscribe();
    current?.off();
    if (current) earlier.push(current.requestId);
    current = { requestId, sub, off, term: 0n };
    const deadline = Date.now() + d.timeoutMs;
    for (;;) {
      let reply;
      try {
        // To the leader by id once it is known: a leader paused past its lease still sits in the
        // queue group, and NATS would keep handing it requests.
        const leader = d.leader.leader?.id;
        reply = await request(d.nc, leader ? subjects.coordinatorGenerateAt(leader) : subjects.coordinatorGenerate(), GenerateRequestSchema, {
          requestId, sessionId: spec.sessionId, modelId: spec.model, prompt, maxTokens: spec.maxTokens, n, eventsSubject, batchSubject: d.events?.subject ?? '', resume,
          cacheScope: spec.cacheScope, promptCacheKey: spec.promptCacheKey,
          sampling: {
            temperature: spec.temperature, topK: spec.topK, topP: spec.topP, minP: spec.minP, repeatPenalty: spec.repeatPenalty,
            frequencyPenalty: spec.frequencyPenalty, presencePenalty: spec.presencePenalty,
            seed, grammar, logprobs: spec.logprobs !== null, topLogprobs: spec.logprobs ?? 0, ignoreEos: spec.ignoreEos,
            logitBias: Object.fromEntries(spec.logitBias), embed: spec.embed,
          },
        }, GenerateReplySchema, Math.max(1, Math.min(SUBMIT_TRY_MS, deadline - Date.now())), natsHeaders(traced));
      } catch (err) {
        // Between leaders (a failover, a coordinator restarting) nobody answers for a moment;
        // past the lapse nobody holds the lease, and nobody will answer soon.
        if (unanswered(err) && d.leader.lapsed) throw noCoordinator(d.leader);
        if (unanswered(err) && Date.now() < deadline && !signal.aborted && !settled) {
          await d.leader.next(Math.min(1000, deadline - Date.now()));
          continue;
        }
        throw err instanceof ApiError ? err : new ApiError(503, 'coordinator_unavailable', `no coordinator answered: ${(err as Error).message} (retry the request)`);
      }
      // A new leader that has not heard every worker yet knows no pipeline for the model; a
      // session whose cancelled attempt has a step in flight is busy for a moment.
      if (!reply.accepted && (reply.error?.code === 'no_pipeline' || reply.error?.code === 'session_busy') && resume.length > 0 && Date.now() < deadline && !settled) {
        // The cancel of the earlier attempt may have been lost (sent while the coordinator's own
        // connection was away): without it, that attempt decodes to its end and holds the session.
        if (reply.error.code === 'session_busy') for (const id of earlier) cancelId(id);
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      if (!reply.accepted) throw fromClusterError(reply.error?.code ?? '', reply.error?.message ?? 'refused');
      if (current?.requestId === requestId) current.term = reply.term;
      // A successor announced itself while the answer was on its way: move now.
      const now = d.leader.leader?.term ?? 0n;
      if (now > reply.term) queueMicrotask(() => onLeader(now));
      return;
    }
  };

  /** A new leader: the request moves to it. */
  const onLeader = (term: bigint) => {
    if (settled || !current || current.term === 0n || term <= current.term) return;
    d.log.info('a new leader: the request moves to it', { term });
    move();
  };
  /** Sends the request again, under a new id, with each choice's progress. */
  const move = () => {
    choices.forEach((c, i) => {
      // A choice whose end the client has, or whose last token ended it, needs nothing more.
      if (!c.ended && (c.eog || (spec.maxTokens > 0 && c.tokens.length >= spec.maxTokens))) endChoice(i, c, c.eog ? 'stop' : 'length');
      if (c.ended) c.finished = true;
    });
    finishAll();
    if (settled) return;
    const resume = choices.map((c, index) => ({ $typeName: 'strata.v1.ChoiceProgress' as const, index, tokens: c.tokens, ended: c.finished }));
    armIdle();
    submit(resume).catch((err: unknown) => settle.reject(err));
  };
  const stopWatching = d.leader.watch(onLeader);
  // No coordinator leads: a request silent for the lapse already fails now.
  const stopLapse = d.leader.onLapse(() => {
    if (!settled) arm();
  });
  // Events published while NATS was away may be lost, the last one of a choice included (no later
  // event would show the gap): after a reconnect the request starts over from what the client has.
  const stopReconnect = d.leader.onReconnect(() => {
    if (settled || !current || current.term === 0n) return;
    cancel();
    move();
  });
  const onAbort = () => {
    cancel();
    settle.reject(new ApiError(499, 'client_closed', 'the client went away'));
  };
  signal.addEventListener('abort', onAbort);
  try {
    await Promise.race([submit([]), done]);
    armIdle();
    return await done;
  } finally {
    clearTimeout(idle);
    stopWatching();
    stopLapse();
    stopReconnect();
    signal.removeEventListener('abort', onAbort);
    current?.sub.unsubscribe();
    current?.off();
  }
}
