// Room on a pipeline: its sequence ids and KV cells. Sessions keep their cells between turns
// (residents), and the prefix cache (prefix-tree.ts) keeps the prompts of requests that ended;
// new work may evict idle sessions and cache sequences, least recently used first. Plan, then
// apply: plan() says what new work would get (or null, with nothing changed), and only apply()
// changes the room. Pure bookkeeping: the pipeline's core turns a grant into sequence operations.
//
// Cells are reserved, not counted on the stages: every running job's to its end (less what it
// shares with the prefix cache), every resident session's without a running job (less the same),
// the prefix cache's, sessions moving in, and sequences not yet emptied or trimmed (or whose
// emptying failed). A stage never holds more, so no later admission, eviction or migration can
// starve a running job.
import { PrefixTree, type PrefixNode, type PrefixTreeOptions } from './prefix-tree.ts';

/** A cache sequence's trim: it keeps positions [0, keepTo), and the cells it drops count as held until it is done. */
interface Trim {
  keepTo: number;
  cells: number;
}

/** A session whose cells stay on a pipeline between its turns. */
export interface Resident {
  seq: number;
  /** tokens its sequence holds, positions 0.. */
  tokens: number[];
  lastUsedMs: number;
  /** answering a request, or held by a migration: never evicted */
  busy: boolean;
  /** ownership epoch in Redis */
  epoch: number;
  /** the prefix-cache node its sequence shares positions with (prefix-tree.ts) */
  prefix?: PrefixNode | null;
}

/** Positions a prefix-cache node's path covers: what a sequence attached to it shares. */
export function sharedBy(node: PrefixNode | null | undefined): number {
  return node ? node.start + node.tokens.length : 0;
}

/** Cells a resident session holds that no one else does. */
function ownOf(r: Resident): number {
  return r.tokens.length - sharedBy(r.prefix);
}

/** What new work asks for. */
export interface RoomAsk {
  /** sequence ids wanted */
  seqs: number;
  /** cells wanted */
  cells: number;
  /** a session never to evict ('' for none) */
  keep: string;
  /** cells about to be freed for this work besides the room (the part of its own session's cells it removes) */
  extra: number;
  /** a prefix-cache node the work will share: neither it nor any node above it is evicted */
  protect?: PrefixNode | null;
}

/** Cells running jobs reserve, and their sessions (whose resident cells those include). */
export interface Running {
  cells: number;
  sessions: ReadonlySet<string>;
}

/** A sequence evicted and not handed out: emptied in the background, then freed. */
export interface RoomDrop {
  seq: number;
  /** what it may still hold (counted as held if its emptying fails) */
  cells: number;
}

/** What new work gets: apply() carries it out. */
export interface RoomGrant {
  /** sequence ids handed out, one per sequence asked */
  seqs: number[];
  /** sessions evicted, least recently used first */
  evicted: string[];
  /** prefix-cache sequences evicted, and how: emptied ('drop'), or trimmed to their parent's path ('trim') */
  prefixes: { node: PrefixNode; action: 'drop' | 'trim' }[];
  /** evicted sequences among `seqs`: to empty on every stage before their first step */
  emptyFirst: number[];
  /** evicted sequences not handed out */
  drops: RoomDrop[];
}

/** Something new work may evict: an idle session, or a cache sequence of the prefix cache. */
interface Evictable {
  seq: number;
  /** cells it frees */
  cells: number;
  /** its sequence id is freed */
  freesSeq: boolean;
  lastUsedMs: number;
  session?: string;
  prefix?: { node: PrefixNode; action: 'drop' | 'trim' };
}

/** What may be evicted for `ask`, least recently used first (a cache sequence's effect is known in order: evictions). */
function candidates(residents: ReadonlyMap<string, Resident>, prefixes: PrefixTree, ask: RoomAsk): Evictable[] {
  const out: Evictable[] = [];
  // A session attached at or below the node the work shares may be what holds that node.
  const under = (n: PrefixNode | null | undefined) => {
    for (; n && ask.protect; n = n.parent) if (n === ask.protect) return true;
    return false;
  };
  for (const [id, r] of residents) {
    if (!r.busy && id !== ask.keep && !under(r.prefix)) out.push({ seq: r.seq, cells: ownOf(r), freesSeq: true, lastUsedMs: r.lastUsedMs, session: id });
  }
  const protect = new Set<PrefixNode>();
  for (let n = ask.protect ?? null; n; n = n.parent) protect.add(n);
  for (const node of prefixes.evictable()) {
    if (!protect.has(node)) out.push({ seq: node.seq, cells: 0, freesSeq: false, lastUsedMs: node.lastUsedMs, prefix: { node, action: 'drop' } });
  }
  return out.sort((x, y) => x.lastUsedMs - y.lastUsedMs);
}

/**
 * What to evict for `ask`, least recently used first, or null when even all of it would not do.
 * A cache sequence's eviction is judged after those planned before it (a sibling gone, its parent
 * may keep the sequence).
 */
function evictions(free: number, room: number, idle: Evictable[], ask: RoomAsk, prefixes: PrefixTree): Evictable[] | null {
  const evict: Evictable[] = [];
  const gone = new Set<PrefixNode>();
  for (const e of idle) {
    if (free >= ask.seqs && room >= ask.cells) break;
    if (e.prefix) {
      const x = prefixes.evictionOf(e.prefix.node, gone);
      e.cells = x.cells;
      e.freesSeq = x.action === 'drop';
      e.prefix.action = x.action;
      gone.add(e.prefix.node);
    }
    evict.push(e);
    if (e.freesSeq) free++;
    room += e.cells;
  }
  return free >= ask.seqs && room >= ask.cells ? evict : null;
}

/** A pipeline's sequence ids and cells. */
export class SeqRoom {
  /** cells every stage can hold */
  readonly capacity: number;
  readonly nSeqMax: number;
  /** sessions whose cells stay here, by session */
  readonly residents = new Map<string, Resident>();
  /** prompts of requests that ended, with what they generated, for later ones to share */
  readonly prefixes: PrefixTree;
  /** free ids, the next one last (the lowest id is handed out first) */
  readonly #free: number[];
  /** sequences reserved for sessions moving in -> their cells */
  readonly #incoming = new Map<number, number>();
  /** sequences being emptied on the stages -> the cells they still hold meanwhile */
  readonly #releasing = new Map<number, number>();
  /** evicted sequences being emptied whose cells new work has already (not counted) -> their cells */
  readonly #given = new Map<number, number>();
  /** sequences whose emptying failed: out of use, their cells counted as held until an emptying succeeds or the pipeline resets */
  readonly #stranded = new Map<number, number>();
  /** cache sequences being trimmed to a shorter path -> where they are to end, and the cells they drop meanwhile */
  readonly #trimming = new Map<number, Trim>();
  /** cache sequences whose trim failed -> the same: counted as held until the trim, asked again, or their emptying succeeds */
  readonly #trimFailed = new Map<number, Trim>();

  constructor(nSeqMax: number, capacity: number, tree: PrefixTreeOptions = {}) {
    this.nSeqMax = nSeqMax;
    this.capacity = capacity;
    this.prefixes = new PrefixTree(tree);
    this.#free = Array.from({ length: nSeqMax }, (_, i) => nSeqMax - 1 - i);
  }

  /** every sequence id, for emptying them all */
  allSeqs(): number[] {
    return [...this.#free];
  }

  /** sequence ids in use */
  get seqsUsed(): number {
    return this.nSeqMax - this.#free.length;
  }

  /** sequences whose cells come back by themselves: being emptied, or reserved for a session moving in */
  get settling(): number {
    return this.#releasing.size + this.#incoming.size;
  }

  /** sequences whose emptying failed, out of use until it succeeds */
  get strandedSeqs(): number {
    return this.#stranded.size;
  }

  /** cells held by sequences whose emptying (or trimming) failed */
  get strandedCells(): number {
    let n = 0;
    for (const c of this.#stranded.values()) n += c;
    for (const t of this.#trimFailed.values()) n += t.cells;
    return n;
  }

  /** Cells reserved now, with what `running` jobs reserve. */
  reserved(running: Running): number {
    let n = running.cells + this.prefixes.cells();
    for (const [id, r] of this.residents) if (!running.sessions.has(id)) n += ownOf(r);
    for (const cells of [this.#incoming, this.#releasing, this.#stranded]) for (const c of cells.values()) n += c;
    for (const trims of [this.#trimming, this.#trimFailed]) for (const t of trims.values()) n += t.cells;
    return n;
  }

  /**
   * What `ask` would get: sequence ids (evicted ones first, the most recently used of them first;
   * then free ids, the lowest first) and the idle sessions to evict for them, least recently used
   * first; null when even evicting every idle session would not do. Changes nothing.
   */
  plan(ask: RoomAsk, running: Running): RoomGrant | null {
    const idle = candidates(this.residents, this.prefixes, ask);
    const evict = evictions(this.#free.length, this.capacity - this.reserved(running) + ask.extra, idle, ask, this.prefixes);
    if (!evict) return null;
    const grant: RoomGrant = { seqs: [], evicted: [], prefixes: [], emptyFirst: [], drops: [] };
    for (const e of evict) {
      if (e.session) grant.evicted.push(e.session);
      else grant.prefixes.push(e.prefix!);
    }
    const freed = evict.filter((e) => e.freesSeq);
    const handed = freed.slice(Math.max(0, freed.length - ask.seqs)).reverse();
    const fromFree = ask.seqs - handed.length;
    for (const e of handed) {
      grant.seqs.push(e.seq);
      grant.emptyFirst.push(e.seq);
    }
    for (let i = 0; i < fromFree; i++) grant.seqs.push(this.#free[this.#free.length - 1 - i]!);
    for (const e of freed.slice(0, freed.length - handed.length)) grant.drops.push({ seq: e.seq, cells: e.cells });
    return grant;
  }

  /**
   * Carries out a grant planned just before (nothing changed since): evicts its sessions and
   * cache sequences, takes its ids, and counts its drops as being emptied (their cells went to the
   * new work already: its first step reaches each stage after their removal, which is sent first).
   * Returns the cache sequences to trim: each to hold positions [0, keepTo) only.
   */
  apply(grant: RoomGrant): { seq: number; keepTo: number }[] {
    // What leaves the count with each eviction (with the cached prefix nodes only it held) stays
    // held until its sequence is emptied or trimmed.
    const left = new Map<number, number>();
    for (const id of grant.evicted) {
      const r = this.residents.get(id)!;
      const before = this.prefixes.cells();
      this.residents.delete(id);
      if (r.prefix) this.prefixes.detach(r.prefix, r.seq);
      left.set(r.seq, ownOf(r) + before - this.prefixes.cells());
    }
    const trims: { seq: number; keepTo: number }[] = [];
    for (const p of grant.prefixes) {
      const before = this.prefixes.cells();
      const e = this.prefixes.evict(p.node, p.action);
      const cells = before - this.prefixes.cells();
      // An earlier trim of the sequence, on its way or failed, is covered by this one (a shorter
      // path) or by the emptying: its cells go with them (a trim's first answer settles both; an
      // emptied sequence's trims are not retried).
      const earlier = (this.#trimming.get(e.seq)?.cells ?? 0) + (this.#trimFailed.get(e.seq)?.cells ?? 0);
      this.#trimming.delete(e.seq);
      this.#trimFailed.delete(e.seq);
      if (e.action === 'trim') {
        trims.push({ seq: e.seq, keepTo: e.keepTo });
        this.#trimming.set(e.seq, { keepTo: e.keepTo, cells: cells + earlier });
      } else {
        left.set(e.seq, cells + earlier);
      }
    }
    for (const seq of grant.seqs) {
      if (grant.emptyFirst.includes(seq)) continue;
      const id = this.#free.pop();
      if (id !== seq) throw new Error(`room grant out of date: sequence ${seq} is not the next free id (${id})`);
    }
    for (const d of grant.drops) this.#given.set(d.seq, left.get(d.seq) ?? d.cells);
    return trims;
  }

  /**
   * A trim of cache sequence `seq` is done (`ok`), or failed: then its cells stay counted until
   * it is asked again and succeeds ({@link retryTrim}), or the sequence is emptied or trimmed
   * shorter.
   */
  trimmed(seq: number, ok: boolean): void {
    const t = this.#trimming.get(seq);
    this.#trimming.delete(seq);
    if (!ok && t) this.#trimFailed.set(seq, t);
  }

  /**
   * A failed trim of `seq` to ask again: the position it keeps up to (counted as trimming again),
   * or null when there is none any more (the sequence was emptied or trimmed since). Safe to
   * repeat on the stages: a cache sequence is never written past its path.
   */
  retryTrim(seq: number): number | null {
    const t = this.#trimFailed.get(seq);
    if (!t) return null;
    this.#trimFailed.delete(seq);
    this.#trimming.set(seq, t);
    return t.keepTo;
  }

  /** Reserves `seq` (granted) and its `cells` for a session moving in. */
  reserveIncoming(seq: number, cells: number): void {
    this.#incoming.set(seq, cells);
  }

  /** Ends a reservation (the session moved in, or the move failed); the cells it reserved. */
  endIncoming(seq: number): number {
    const cells = this.#incoming.get(seq) ?? 0;
    this.#incoming.delete(seq);
    return cells;
  }

  /** `seq` is being emptied on the stages: its `cells` count as held until it is. */
  release(seq: number, cells: number): void {
    this.#releasing.set(seq, cells);
  }

  /**
   * `seq` was emptied (`ok`), and its id is free again; or its emptying failed, and it stays out
   * of use (stranded) until a later emptying succeeds.
   */
  released(seq: number, ok: boolean): void {
    if (this.#stranded.has(seq)) {
      if (ok) {
        this.#stranded.delete(seq);
        this.#free.push(seq);
      }
      return;
    }
    const cells = this.#releasing.get(seq) ?? this.#given.get(seq) ?? 0;
    this.#releasing.delete(seq);
    this.#given.delete(seq);
    if (ok) this.#free.push(seq);
    else this.#stranded.set(seq, cells);
  }

  /** The pipeline went down: nothing it held counts any more. */
  clear(): void {
    this.residents.clear();
    this.prefixes.clear();
    this.#releasing.clear();
    this.#stranded.clear();
    this.#trimming.clear();
    this.#trimFailed.clear();
  }
}
