// Room on a pipeline for new work: its sequences and cells. Sessions keep their cells between
// turns (residents); new work may evict idle ones, least recently used first. Pure: the scheduler
// carries out what the plan says.

/** A session whose cells stay on a pipeline between its turns. */
export interface Resident {
  seq: number;
  /** tokens its sequence holds, positions 0.. */
  tokens: number[];
  lastUsedMs: number;
  busy: boolean;
  epoch: number;
}

/** What a pipeline has and what new work asks for. */
export interface RoomAsk {
  /** sequence ids free now */
  free: number;
  /** cells not reserved now */
  room: number;
  residents: ReadonlyMap<string, Resident>;
  /** sequences wanted */
  seqs: number;
  /** cells wanted */
  cells: number;
  /** a session never to evict ('' for none) */
  keep: string;
}

/**
 * The idle sessions to evict, least recently used first, so that `seqs` sequences and `cells`
 * cells are there: [] when they are already, null when even evicting every idle session would
 * not do (then nothing is evicted).
 */
export function planRoom(a: RoomAsk): [string, Resident][] | null {
  let free = a.free, room = a.room;
  const idle = [...a.residents.entries()].filter(([id, r]) => !r.busy && id !== a.keep).sort((x, y) => x[1].lastUsedMs - y[1].lastUsedMs);
  const evict: [string, Resident][] = [];
  for (const e of idle) {
    if (free >= a.seqs && room >= a.cells) break;
    evict.push(e);
    free++;
    room += e[1].tokens.length;
  }
  return free >= a.seqs && room >= a.cells ? evict : null;
}
