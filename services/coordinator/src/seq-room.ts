// Room on a pipeline: its sequence ids and KV cells. Sessions keep their cells between turns
// (residents); new work may evict idle ones, least recently used first. Plan, then apply:
// plan() says what new work would get (or null, with nothing changed), and only apply() changes
// the room. Pure bookkeeping: the pipeline's core turns a grant into sequence operations.
//
// Cells are reserved, not counted on the stages: every running job's to its end, every resident
// session's without a running job, sessions moving in, and sequences not yet emptied (or whose
// emptying failed). A stage never holds more, so no later admission, eviction or migration can
// starve a running job.

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
  /** evicted sequences among `seqs`: to empty on every stage before their first step */
  emptyFirst: number[];
  /** evicted sequences not handed out */
  drops: RoomDrop[];
}

/** The idle sessions to evict for `ask`, least recently used first, or null when even all of them would not do. */
function evictions(free: number, room: number, residents: ReadonlyMap<string, Resident>, ask: RoomAsk): [string, Resident][] | null {
  const idle = [...residents.entries()].filter(([id, r]) => !r.busy && id !== ask.keep).sort((x, y) => x[1].lastUsedMs - y[1].lastUsedMs);
  const evict: [string, Resident][] = [];
  for (const e of idle) {
    if (free >= ask.seqs && room >= ask.cells) break;
    evict.push(e);
    free++;
    room += e[1].tokens.length;
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
  /** free ids, the next one last (the lowest id is handed out first) */
  readonly #free: number[];
  /** sequences reserved for sessions moving in -> their cells */
  readonly #incoming = new Map<number, number>();
  /** sequences being emptied on the stages -> the cells they still hold meanwhile */
  readonly #releasing = new Map<number, number>();
  /** evicted sequences being emptied whose cells new work has already (not counted) -> their cells */
  readonly #given = new Map<number, number>();
  /** sequences whose emptying failed: out of use, their cells counted as held until the pipeline resets */
  readonly #stranded = new Map<number, number>();

  constructor(nSeqMax: number, capacity: number) {
    this.nSeqMax = nSeqMax;
    this.capacity = capacity;
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

  /** cells held by sequences whose emptying failed */
  get strandedCells(): number {
    let n = 0;
    for (const c of this.#stranded.values()) n += c;
    return n;
  }

  /** Cells reserved now, with what `running` jobs reserve. */
  reserved(running: Running): number {
    let n = running.cells;
    for (const [id, r] of this.residents) if (!running.sessions.has(id)) n += r.tokens.length;
    for (const cells of [this.#incoming, this.#releasing, this.#stranded]) for (const c of cells.values()) n += c;
    return n;
  }

  /**
   * What `ask` would get: sequence ids (evicted ones first, the most recently used of them first;
   * then free ids, the lowest first) and the idle sessions to evict for them, least recently used
   * first; null when even evicting every idle session would not do. Changes nothing.
   */
  plan(ask: RoomAsk, running: Running): RoomGrant | null {
    const evict = evictions(this.#free.length, this.capacity - this.reserved(running) + ask.extra, this.residents, ask);
    if (!evict) return null;
    const grant: RoomGrant = { seqs: [], evicted: evict.map(([id]) => id), emptyFirst: [], drops: [] };
    const handed = evict.slice(Math.max(0, evict.length - ask.seqs)).reverse();
    const fromFree = ask.seqs - handed.length;
    for (const [, r] of handed) {
      grant.seqs.push(r.seq);
      grant.emptyFirst.push(r.seq);
    }
    for (let i = 0; i < fromFree; i++) grant.seqs.push(this.#free[this.#free.length - 1 - i]!);
    for (const [, r] of evict.slice(0, evict.length - handed.length)) grant.drops.push({ seq: r.seq, cells: r.tokens.length });
    return grant;
  }

  /**
   * Carries out a grant planned just before (nothing changed since): evicts its sessions, takes its
   * ids, and counts its drops as being emptied (their cells went to the new work already: its first
   * step reaches each stage after their removal, which is sent first).
   */
  apply(grant: RoomGrant): void {
    for (const id of grant.evicted) this.residents.delete(id);
    for (const seq of grant.seqs) {
      if (grant.emptyFirst.includes(seq)) continue;
      const id = this.#free.pop();
      if (id !== seq) throw new Error(`room grant out of date: sequence ${seq} is not the next free id (${id})`);
    }
    for (const d of grant.drops) this.#given.set(d.seq, d.cells);
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

  /** `seq` was emptied (`ok`), and its id is free again; or its emptying failed, and it stays out of use. */
  released(seq: number, ok: boolean): void {
    const cells = this.#releasing.get(seq) ?? this.#given.get(seq) ?? 0;
    this.#releasing.delete(seq);
    this.#given.delete(seq);
    if (ok) this.#free.push(seq);
    else this.#stranded.set(seq, cells);
  }

  /** The pipeline went down: nothing it held counts any more. */
  clear(): void {
    this.residents.clear();
    this.#releasing.clear();
    this.#stranded.clear();
  }
}
