// How a batch computes when every sequence has a KV stream of its own. As llama.cpp does
// (splitEqual: llama_batch_allocr::split_equal with sequential ids, as its non-unified cache
// splits a batch): micro-batches of consecutive sequences with the same number of tokens from
// each, stream after stream, one attention op covering each through 4-D views of the K/V. Or in
// one graph (groupStreams): the tokens in sequence order, the mat-muls over all of them, one
// attention op per group of consecutive sequences that bring the same number of tokens.

/** Tokens of consecutive streams that attend together: `streams` from `first`, `per` tokens each, stream after stream. */
export interface Attn {
  first: number;
  streams: number;
  per: number;
}

/** One micro-batch of a split batch. */
export interface EqualPart {
  /** the batch's token indices, stream after stream (each stream's in batch order) // [n] */
  tokens: Int32Array;
  /** the first sequence (its stream); the part's sequences are first .. first + streams - 1 */
  first: number;
  /** sequences in the part */
  streams: number;
}

/**
 * Splits a batch (`seq` // [n], each token's sequence) as llama.cpp's sequential equal split does:
 * a part starts at the sequence of the first token not yet taken and takes, going through the
 * batch in order, each next sequence whose id is one above the last it took; then one token of
 * each of them at a time (the earliest not yet taken), while every one has a token left and one
 * more round stays within `maxTokens`.
 */
export function splitEqual(seq: ArrayLike<number>, maxTokens: number): EqualPart[] {
  const n = seq.length;
  const byseq = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    const s = seq[i]!;
    let list = byseq.get(s);
    if (!list) byseq.set(s, (list = []));
    list.push(i);
  }
  const next = new Map<number, number>([...byseq.keys()].map((s) => [s, 0]));
  const used = new Uint8Array(n);
  const parts: EqualPart[] = [];
  let taken = 0;
  while (taken < n) {
    const seqs: number[] = [];
    for (let i = 0; i < n; i++) {
      if (used[i]) continue;
      const s = seq[i]!;
      if (seqs.includes(s)) continue;
      if (seqs.length > 0 && s !== seqs[seqs.length - 1]! + 1) continue;
      seqs.push(s);
      if (seqs.length > maxTokens) break;
    }
    const per: number[][] = seqs.map(() => []);
    for (;;) {
      if (seqs.some((s) => next.get(s)! >= byseq.get(s)!.length)) break;
      seqs.forEach((s, k) => {
        const i = byseq.get(s)![next.get(s)!]!;
        per[k]!.push(i);
        used[i] = 1;
        taken++;
        next.set(s, next.get(s)! + 1);
      });
      if ((per[0]!.length + 1) * seqs.length > maxTokens) break;
    }
    parts.push({ tokens: Int32Array.from(per.flat()), first: seqs[0]!, streams: seqs.length });
  }
  return parts;
}

/** A part of splitEqual as one attention group. */
export function attnOf(p: EqualPart): Attn[] {
  return [{ first: p.first, streams: p.streams, per: p.tokens.length / p.streams }];
}

/** Tokens of a batch that compute together (the batch's token of each row, in row order), and their attention groups. */
export interface GroupedPart {
  tokens: Int32Array;
  attn: Attn[];
}

/**
 * A batch (`seq` // [n]) in sequence order, each sequence's tokens in batch order, and its
 * attention groups: runs of consecutive sequences that bring the same number of tokens. One part
 * while it has at most `maxGroups` groups; more, and each part takes `maxGroups` of them (one
 * attention op per group and layer: a graph holds only so many).
 */
export function groupStreams(seq: ArrayLike<number>, maxGroups = Infinity): GroupedPart[] {
  const n = seq.length;
  const order = Int32Array.from({ length: n }, (_, i) => i).sort((a, b) => seq[a]! - seq[b]! || a - b);
  const groups: Attn[] = [];
  for (let i = 0; i < n;) {
    const s = seq[order[i]!]!;
    let j = i;
    while (j < n && seq[order[j]!] === s) j++;
    const per = j - i, g = groups[groups.length - 1];
    if (g && g.per === per && g.first + g.streams === s) g.streams++;
    else groups.push({ first: s, streams: 1, per });
    i = j;
  }
  const parts: GroupedPart[] = [];
  for (let g = 0, row = 0; g < groups.length; g += maxGroups) {
    const attn = groups.slice(g, g + maxGroups);
    const rows = attn.reduce((t, a) => t + a.streams * a.per, 0);
    parts.push({ tokens: order.slice(row, row + rows), attn });
    row += rows;
  }
  return parts;
}
