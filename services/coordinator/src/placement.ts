// Placement, pure: every choice of a pipeline the coordinator makes. A request goes to the
// pipeline that holds its session, else to the one of its model where it costs least: the prompt
// tokens it would compute there (what that pipeline's prefix cache lacks) plus a price per request
// already running or waiting there, so that a hot prefix stays where it is cached until that
// pipeline is busier than computing it again elsewhere costs (then it spreads); without any cached
// prefix, requests of one prompt_cache_key go to one pipeline among the least loaded. A request whose
// pipeline went down is rebuilt on the least loaded healthy one of the same model; a session moves
// to the pipeline named or to the least loaded other one; a drain is refused when it would leave a
// model with no pipeline that takes work. A draining pipeline never takes new work, and ties go to
// the lowest pipeline id, so every choice is predictable.
//
// Roles (prefill/decode disaggregation): a pipeline of role `prefill` takes only the requests
// placement hands off — one choice whose prompt has at least `minPrompt` tokens that the pipeline
// it would decode on does not hold, while the cheapest prefill pipeline has fewer than
// `maxPrefillLoad` requests — and every other request goes to the pipelines of role `decode` or
// `both` (to all of them when a model has none: roles steer work, they never refuse it).
import type { Role } from './cluster.ts';

/** A pipeline as placement sees it. */
export interface Placeable {
  readonly id: string;
  readonly modelId: string;
  /** the model's fingerprint: pipelines of one fingerprint can trade sessions and requests */
  readonly fingerprint: string;
  /** takes no new request and no session */
  readonly draining: boolean;
  /** requests running or waiting on it */
  readonly load: number;
  /** prefill, decode or both (absent: both) */
  readonly role?: Role;
  /** positions one sequence may hold there (absent: no limit placement knows of) */
  readonly context?: number;
  /** whether the session's cells are there */
  holds(session: string): boolean;
  /** prompt tokens of `prompt` its prefix cache holds for `scope` (0 without a cache) */
  cachedPrefix?(scope: string, prompt: readonly number[]): number;
}

/** What placement knows of a request besides its model and session. */
export interface PlaceHint {
  /** prefix-cache scope */
  scope: string;
  prompt: readonly number[];
  /** OpenAI's prompt_cache_key ('' none) */
  cacheKey: string;
  /** what a request running or waiting on a pipeline costs, in prompt tokens to compute */
  loadTokens: number;
}

/** A stable pseudo-random score of a key on a pipeline (rendezvous hashing, FNV-1a). */
function affinity(key: string, id: string): number {
  let h = 0x811c9dc5;
  for (const ch of `${key}\u0000${id}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

/**
 * Among `open` pipelines, where a request of `hint` costs least: the prompt tokens it computes
 * there plus `loadTokens` per request there (ties: less load, then the lowest id). Without a
 * cached prefix anywhere, a prompt_cache_key picks among the least loaded (within one request).
 */
export function cheapest<P extends Placeable>(open: readonly P[], hint: PlaceHint): P {
  const cached = open.map((p) => p.cachedPrefix?.(hint.scope, hint.prompt) ?? 0);
  if (hint.cacheKey && cached.every((c) => c === 0)) {
    const least = Math.min(...open.map((p) => p.load));
    const near = open.filter((p) => p.load <= least + 1);
    return near.reduce((best, p) => (affinity(hint.cacheKey, p.id) > affinity(hint.cacheKey, best.id) ? p : best));
  }
  let best = 0;
  const cost = (i: number) => hint.prompt.length - cached[i]! + open[i]!.load * hint.loadTokens;
  for (let i = 1; i < open.length; i++) {
    const [a, b] = [open[i]!, open[best]!];
    if (cost(i) < cost(best) || (cost(i) === cost(best) && (a.load < b.load || (a.load === b.load && a.id < b.id)))) best = i;
  }
  return open[best]!;
}

/** A refusal: the code and message the caller answers with. */
export interface Refusal {
  code: string;
  message: string;
}

/** A choice of pipeline (`handOff`: prefill there, then move to a decode pipeline), or why there is none. */
export type Placement<P> = { to: P; handOff?: boolean } | { refused: Refusal };

/** When a request is prefilled on a prefill pipeline and decoded on another (disaggregation). */
export interface SplitHint {
  /** the request may be handed off: one choice, no embedding, not a resumed one */
  eligible: boolean;
  /** its prompt and prefix-cache scope */
  prompt: readonly number[];
  scope: string;
  /** prompt tokens the prefill pipeline does not hold, at least */
  minPrompt: number;
  /** requests running or waiting on the prefill pipeline, fewer than */
  maxPrefillLoad: number;
}

/** Pipelines that take requests to run whole: those not of role prefill, or all when every one is. */
function servers<P extends Placeable>(open: readonly P[]): readonly P[] {
  const decoders = open.filter((p) => p.role !== 'prefill');
  return decoders.length > 0 ? decoders : open;
}

/** The least loaded of `pipelines` (ties: the lowest id), or undefined when there is none. */
export function leastLoaded<P extends Placeable>(pipelines: readonly P[]): P | undefined {
  let best: P | undefined;
  for (const p of pipelines) if (!best || p.load < best.load || (p.load === best.load && p.id < best.id)) best = p;
  return best;
}

/**
 * Where a new request of `modelId` (of `session`, '' for none) goes: the pipeline that holds its
 * session, else the cheapest of its model for `hint` (the least loaded without one); refused when
 * no pipeline of the model takes work, or when its session is on one that drains (it is about to
 * move: the caller retries).
 */
export function placeRequest<P extends Placeable>(pipelines: readonly P[], modelId: string, session: string, hint?: PlaceHint, split?: SplitHint): Placement<P> {
  const all = pipelines.filter((p) => p.modelId === modelId);
  const open = all.filter((p) => !p.draining);
  if (open.length === 0) {
    return { refused: { code: 'no_pipeline', message: all.length > 0 ? `every pipeline of model '${modelId}' is draining: none takes a request` : `no pipeline serves model '${modelId}'` } };
  }
  if (session && all.some((p) => p.draining && p.holds(session))) {
    return { refused: { code: 'session_busy', message: `session ${session} is moving off a draining pipeline; retry in a moment` } };
  }
  const home = session ? open.find((p) => p.holds(session)) : undefined;
  if (home) return { to: home };
  const serve = servers(open);
  const whole = hint ? cheapest(serve, hint) : leastLoaded(serve)!;
  const prefill = open.filter((p) => p.role === 'prefill');
  if (split?.eligible && prefill.length > 0 && whole.role !== 'prefill') {
    // A long prefill where it decodes would stall that pipeline's decoding: prefilled apart,
    // where it costs least (a prompt a prefill pipeline holds costs there only the hand-off).
    const uncached = split.prompt.length - (whole.cachedPrefix?.(split.scope, split.prompt) ?? 0);
    const best = hint ? cheapest(prefill, hint) : leastLoaded(prefill)!;
    if (uncached >= split.minPrompt && best.load < split.maxPrefillLoad) return { to: best, handOff: true };
  }
  return { to: whole };
}

/** Where a request prefilled on `from` decodes: the other open pipelines of its model not of role prefill, least loaded first. */
export function decodeTargets<P extends Placeable>(pipelines: readonly P[], from: P): P[] {
  return pipelines.filter((p) => p !== from && p.fingerprint === from.fingerprint && !p.draining && p.role !== 'prefill')
    .sort((a, b) => a.load - b.load || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Where a request whose pipeline went down is rebuilt: the least loaded open pipeline of `fingerprint` (not of role prefill while another is open), or undefined. */
export function placeRebuild<P extends Placeable>(pipelines: readonly P[], fingerprint: string): P | undefined {
  return leastLoaded(servers(pipelines.filter((p) => p.fingerprint === fingerprint && !p.draining)));
}

/**
 * Where `session`, on `from`, moves: pipeline `to` when named (it must exist, be another one, not
 * drain and let one sequence hold the session's `positions`), else the least loaded other open
 * pipeline of the same model where it fits (not of role prefill while another is open). A
 * pipeline of one KV stream per sequence holds fewer positions a sequence than one of a shared
 * stream: a long session cannot go there.
 */
export function placeMove<P extends Placeable>(pipelines: readonly P[], session: string, from: P, to: string, positions = 0): Placement<P> {
  const fits = (p: P) => p.context === undefined || positions <= p.context;
  if (to) {
    const dst = pipelines.find((p) => p.id === to);
    if (!dst) return { refused: { code: 'no_pipeline', message: `no pipeline ${to}` } };
    if (dst === from) return { refused: { code: 'bad_request', message: `session ${session} is already on ${to}` } };
    if (dst.draining) return { refused: { code: 'pipeline_draining', message: `pipeline ${to} is draining: it takes no session` } };
    if (!fits(dst)) return { refused: { code: 'bad_request', message: `session ${session} holds ${positions} positions; a sequence of pipeline ${to} holds at most ${dst.context}` } };
    return { to: dst };
  }
  const others = pipelines.filter((p) => p !== from && p.fingerprint === from.fingerprint);
  const open = others.filter((p) => !p.draining);
  const dst = leastLoaded(servers(open.filter(fits)));
  if (!dst) {
    const why = open.length > 0 ? ` where its ${positions} positions fit (at most ${Math.max(...open.map((p) => p.context ?? 0))} a sequence)` : others.length > 0 ? ` (${others.length} other(s) draining)` : '';
    return { refused: { code: 'no_pipeline', message: `no other pipeline of ${from.modelId} takes work${why}` } };
  }
  return { to: dst };
}

/** A pipeline as a drain's admission sees it. */
export type DrainTarget = Pick<Placeable, 'id' | 'modelId' | 'fingerprint' | 'draining'>;

/**
 * Why draining `target` (for `worker`) must be refused unless forced, or null: its model would
 * be left with no pipeline that takes work, because every other pipeline of the model (same
 * fingerprint: where its sessions could go) is draining, or there is none. A pipeline already
 * draining is never refused: draining it again changes nothing.
 */
export function drainRefusal(worker: string, target: DrainTarget, pipelines: readonly DrainTarget[]): string | null {
  if (target.draining) return null;
  const others = pipelines.filter((p) => p.id !== target.id && p.fingerprint === target.fingerprint);
  if (others.some((p) => !p.draining)) return null;
  const why = others.length === 0 ? 'it is the only pipeline of the model' : `the other ${others.length} pipeline(s) of the model are draining`;
  return `draining worker ${worker} would leave model '${target.modelId}' with no pipeline that takes work: ${why} (pipeline ${target.id}). `
    + 'Undrain another pipeline first, or force the drain (strata drain --force, or {"force": true}) to take the model out of service';
}
