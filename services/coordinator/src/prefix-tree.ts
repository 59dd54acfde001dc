// The prefix cache of one pipeline: a radix tree of prompt tokens per cache scope (a tenant, or a
// group an operator marked shared), each node a run of positions whose K/V cells the stages hold
// once, shared by every sequence whose prompt begins with the node's path (llama.cpp's cells with
// sequence sets: a new sequence takes them with one seq_cp, no compute and no copy of data).
//
// Cells live on a stage only while some sequence holds them, so every node is held: by the cache
// sequence kept for it (`seq`, a request's sequence left behind when it ended), by the running job
// that computes it (`owner`), by sequences attached to it (`pins`: jobs and sessions that copied its
// path), or by a child (whose holders hold the parent's path too). A node no one holds is gone:
// its cells were freed with its last holder. Pure bookkeeping; the room (seq-room.ts) counts its
// cells and evicts its cache sequences, least recently used first, and the pipeline's core turns
// what it says into sequence operations.

/** A running job computing a node: its sequence and the position after what every stage holds. */
export interface PrefixOwner {
  readonly seq: number;
  readonly done: number;
}

/** A run of prompt positions [start, start + tokens.length) under its parent's path. */
export interface PrefixNode {
  /** its key among its parent's children: its first token, or under a scope's root its lineage */
  key: number;
  tokens: number[];
  /** position of tokens[0] */
  start: number;
  parent: PrefixNode | null;
  /** by key */
  readonly children: Map<number, PrefixNode>;
  /** the cache sequence that holds positions [0, end) (and `extra` more), or -1 */
  seq: number;
  /** cells the cache sequence holds past the node's end (what its request generated) */
  extra: number;
  /** the job computing it; its cells are that job's until it ends */
  owner: PrefixOwner | null;
  /** sequences attached at its end */
  readonly pins: Set<number>;
  lastUsedMs: number;
}

/** Where a prompt's match ends: `depth` tokens, inside or at the end of `node`. */
export interface PrefixMatch {
  node: PrefixNode;
  depth: number;
  /** tokens past `depth` that a job is computing now (the prompt matches them too) */
  pending: number;
}

/** What evicting a cache sequence frees. */
export interface PrefixEviction {
  node: PrefixNode;
  /** cells freed */
  cells: number;
  /** the sequence is freed ('drop'), or trimmed to hold its parent's path ('trim', its new node) */
  action: 'drop' | 'trim';
}

const end = (n: PrefixNode): number => n.start + n.tokens.length;

/** Positions of `n` every stage holds: all, or up to what its owner has computed. */
function ready(n: PrefixNode): number {
  return n.owner ? Math.max(0, Math.min(n.tokens.length, n.owner.done - n.start)) : n.tokens.length;
}

function held(n: PrefixNode): boolean {
  return n.seq >= 0 || n.owner !== null || n.pins.size > 0 || n.children.size > 0;
}

function newNode(parent: PrefixNode | null, key: number, tokens: number[], start: number, now: number): PrefixNode {
  return { key, tokens, start, parent, children: new Map(), seq: -1, extra: 0, owner: null, pins: new Set(), lastUsedMs: now };
}

/** How many tokens of `tokens` from `depth` (below `limit`) `n` matches. */
function common(n: PrefixNode, tokens: readonly number[], depth: number, limit: number): number {
  let k = 0;
  while (k < n.tokens.length && depth + k < limit && n.tokens[k] === tokens[depth + k]) k++;
  return k;
}

/**
 * How far `tokens` (at most `limit`) go down the tree from `root`, counting only positions every
 * stage holds; `pending`: how many more a running job is computing. Under the root every lineage
 * (prompts computed from scratch) is a candidate, the longest match winning, unless `lineage`
 * names the one to take.
 */
function walk(root: PrefixNode, tokens: readonly number[], limit: number, lineage: PrefixNode | null): PrefixMatch {
  let node = root, depth = 0, pending = 0;
  for (;;) {
    let child: PrefixNode | undefined, k = 0;
    if (depth >= limit) break;
    if (node === root && lineage) {
      child = lineage;
      k = common(lineage, tokens, depth, limit);
    } else if (node === root) {
      // The longest match (computed, or being computed: then worth waiting for), then the most computed.
      let best = -1;
      for (const c of root.children.values()) {
        const ck = common(c, tokens, depth, limit);
        const score = ck * (limit + 1) + Math.min(ck, ready(c));
        if (ck > 0 && score > best) [child, k, best] = [c, ck, score];
      }
    } else {
      child = node.children.get(tokens[depth]!);
      k = child ? common(child, tokens, depth, limit) : 0;
    }
    if (!child || k === 0) break;
    const r = ready(child);
    if (r < k) pending = k - r;
    const take = Math.min(k, r);
    if (take === 0) break;
    node = child;
    depth += take;
    if (take < child.tokens.length) break;
  }
  return { node, depth, pending };
}

/** How a tree matches. */
export interface PrefixTreeOptions {
  /**
   * The stages keep windowed layers' K/V in a small cache (StageInfo.kvSwaCells) that holds only
   * what each sequence's window still sees: a prefix is shared only where a cache sequence ends
   * (the window before its end is all there), never inside one, nor a trimmed one, nor one a job is
   * computing.
   */
  endsOnly?: boolean;
}

/** The prefix cache of one pipeline. */
export class PrefixTree {
  readonly #roots = new Map<string, PrefixNode>();
  readonly #nodes = new Set<PrefixNode>();
  /** keys of lineages under the roots */
  #lineages = 0;
  readonly endsOnly: boolean;

  constructor(options: PrefixTreeOptions = {}) {
    this.endsOnly = options.endsOnly ?? false;
  }

  /** nodes, for tests and operators */
  get size(): number {
    return this.#nodes.size;
  }

  /** Cells the tree counts: every node's, except those a running owner reserves for itself. */
  cells(): number {
    let n = 0;
    for (const node of this.#nodes) n += (node.owner ? 0 : node.tokens.length) + node.extra;
    return n;
  }

  /** Cache sequences held, with their nodes. */
  cacheSeqs(): PrefixNode[] {
    return [...this.#nodes].filter((n) => n.seq >= 0);
  }

  /**
   * The longest cached prefix of `tokens` in `scope`, at most `limit` tokens, counting only
   * positions every stage holds; `pending`: how many more a running job is computing.
   */
  match(scope: string, tokens: readonly number[], limit: number): PrefixMatch | null {
    const root = this.#roots.get(scope);
    if (!root) return null;
    if (!this.endsOnly) {
      const w = walk(root, tokens, limit, null);
      return w.depth > 0 || w.pending > 0 ? w : null;
    }
    // Where a cache sequence ends: the deepest such end on any lineage's path.
    let best: PrefixMatch | null = null;
    for (const lineage of root.children.values()) {
      const w = walk(root, tokens, limit, lineage);
      const m = endOnPath(w.node, w.depth);
      if (m && m.depth > (best?.depth ?? 0)) best = m;
    }
    return best;
  }

  /**
   * How many tokens of `tokens` (at most `limit`) some computed path in `scope` shares, wherever
   * they end: with endsOnly, past the match, where a checkpoint (a cache sequence ending there)
   * would let later prompts share them.
   */
  common(scope: string, tokens: readonly number[], limit: number): number {
    const root = this.#roots.get(scope);
    return root ? walk(root, tokens, limit, null).depth : 0;
  }

  /**
   * Cache sequence `seq` holds `node`'s path up to `depth` (copied from the job that owns `node`
   * and has computed that far), ending there: the node is split at `depth`, and its upper part is
   * the sequence's, a place a prompt may share on a tree that shares only at ends. False (nothing
   * changed) when `node` is gone, does not reach `depth`, or a sequence already ends there.
   */
  checkpoint(node: PrefixNode, depth: number, seq: number, now: number): boolean {
    if (!this.#nodes.has(node)) return false;
    let at: PrefixNode | null = node;
    while (at && at.parent && at.start >= depth) at = at.parent;
    if (!at || !at.parent || depth > end(at) || ready(at) < depth - at.start) return false;
    const upper = this.#splitAt(at, depth, now);
    if (upper.seq >= 0) return false;
    upper.seq = seq;
    upper.lastUsedMs = now;
    return true;
  }

  /**
   * Attaches sequences `seqs` at a match (splitting the node there): the node whose path it shares,
   * pinned so that its cells stay, and a sequence that holds that path now (to copy it from).
   */
  attach(m: PrefixMatch, seqs: readonly number[], now: number): { node: PrefixNode; from: number } {
    const node = this.#splitAt(m.node, m.depth, now);
    const from = holderOf(node);
    for (const seq of seqs) node.pins.add(seq);
    for (let n: PrefixNode | null = node; n; n = n.parent) n.lastUsedMs = now;
    return { node, from };
  }

  /** Moves `seq`'s attachment at `node` up to `depth` tokens (its sequence now holds fewer). */
  reattach(node: PrefixNode, seq: number, depth: number, now: number): PrefixNode | null {
    node.pins.delete(seq);
    let at: PrefixNode | null = node;
    while (at && at.start >= depth) at = at.parent;
    const keep = at && at.parent ? this.#splitAt(at, depth, now) : null;
    keep?.pins.add(seq);
    this.#prune(node);
    return keep;
  }

  /** Detaches `seq` from `node`; nodes no one holds any more are gone. */
  detach(node: PrefixNode, seq: number): void {
    node.pins.delete(seq);
    this.#prune(node);
  }

  /**
   * A job (`owner`) that shares `at`'s path (the root of `scope` when null) will compute `tokens`
   * next: they become a node it owns, which later prompts may share as its positions come back.
   * Null when another node already begins there (computed by another job: cells are shared only
   * by copying, so this job's own copy is not the tree's).
   */
  grow(scope: string, at: PrefixNode | null, tokens: number[], owner: PrefixOwner, now: number): PrefixNode | null {
    const parent = at ?? this.#root(scope, now);
    // A prompt computed from scratch is a lineage of its own under the root.
    const key = at ? tokens[0]! : ++this.#lineages;
    if (tokens.length === 0 || parent.children.has(key)) return null;
    const node = newNode(parent, key, tokens, end(parent), now);
    node.owner = owner;
    parent.children.set(key, node);
    this.#nodes.add(node);
    return node;
  }

  /**
   * The owner of `node` (and of its ancestors that it owns) ended. With `keep`, its sequence, which
   * holds `heldCells` positions from 0, stays as the cache sequence of what it computed (true
   * returned); else, or when it computed none of it, its sequence is not the tree's (false): the
   * caller empties it. `after`: the tokens it holds past its prompt (what it generated and fed),
   * when known: they join the tree as a node below the prompt's, so that a later prompt repeating
   * them (a chat client's next turn, which resends the answer) shares them too.
   */
  ownerEnded(node: PrefixNode, keep: boolean, heldCells: number, now: number, after: readonly number[] = []): boolean {
    const owner = node.owner;
    const chain: PrefixNode[] = [];
    for (let n: PrefixNode | null = node; n && owner && n.owner === owner; n = n.parent) chain.push(n);
    let tip: PrefixNode | null = null;
    for (const n of chain) {
      const r = ready(n);
      n.owner = null;
      if (r === 0) {
        // Nothing of it was computed: none of its cells exist.
        if (n.children.size === 0 && n.pins.size === 0) this.#remove(n);
        continue;
      }
      if (r < n.tokens.length) this.#cut(n, r);
      tip ??= n;
    }
    if (!keep || !tip || !owner) {
      for (const n of chain) if (this.#nodes.has(n)) this.#prune(n);
      return false;
    }
    tip.lastUsedMs = now;
    const extra = Math.max(0, heldCells - end(tip));
    // what it holds past the node, when `after` says which tokens they are
    const known = extra > 0 && after.length === extra;
    // A checkpoint's sequence already ends at the tip (the owner computed no further of its prompt):
    // the owner's is kept only for what it holds past it, in a node of its own.
    const checkpointed = tip.seq >= 0;
    if (known && !checkpointed && tip.children.size === 0 && tip.pins.size === 0) {
      // No one shares its end yet: the node grows by them.
      tip.tokens = [...tip.tokens, ...after];
    } else if (known && !tip.children.has(after[0]!)) {
      const generated = newNode(tip, after[0]!, [...after], end(tip), now);
      generated.seq = owner.seq;
      tip.children.set(generated.key, generated);
      this.#nodes.add(generated);
      return true;
    } else if (checkpointed) {
      return false;
    } else {
      tip.extra = extra;
    }
    tip.seq = owner.seq;
    return true;
  }

  /**
   * Cache sequences that may be evicted, least recently used first: none a running job owns or a
   * sequence is attached to.
   */
  evictable(): PrefixNode[] {
    return [...this.#nodes].filter((n) => n.seq >= 0 && n.owner === null && n.pins.size === 0).sort((a, b) => a.lastUsedMs - b.lastUsedMs);
  }

  /**
   * What evicting `node`'s cache sequence would free, without doing it, once the cache sequences
   * of `gone` are evicted too (planned before it): its extra cells, and a leaf's own; a parent
   * that only it holds keeps the sequence, trimmed to the parent's path.
   */
  evictionOf(node: PrefixNode, gone: ReadonlySet<PrefixNode> = new Set()): PrefixEviction {
    const stays = (c: PrefixNode) => c !== node && !gone.has(c);
    if ([...node.children.values()].some(stays)) return { node, cells: node.extra, action: 'drop' };
    const p = node.parent!;
    // (A trimmed sequence ends where its windowed cells may be gone: with endsOnly it is dropped.)
    const parentAlone = !this.endsOnly && p.parent !== null && ![...p.children.values()].some(stays) && p.seq < 0 && p.owner === null && p.pins.size === 0;
    return { node, cells: node.tokens.length + node.extra, action: parentAlone ? 'trim' : 'drop' };
  }

  /**
   * Evicts `node`'s cache sequence, as `action` says (planned earlier by evictionOf; default: what
   * it says now); returns its sequence, and for a trim the positions it keeps.
   */
  evict(node: PrefixNode, action = this.evictionOf(node).action): { seq: number; action: 'drop' | 'trim'; keepTo: number } {
    const seq = node.seq;
    node.seq = -1;
    node.extra = 0;
    if (action === 'trim' && node.children.size === 0) {
      const p = node.parent!;
      this.#remove(node);
      p.seq = seq;
      return { seq, action: 'trim', keepTo: end(p) };
    }
    this.#prune(node);
    return { seq, action: 'drop', keepTo: 0 };
  }

  /** What is wrong with the tree's invariants (for tests): every node held, linked and placed. */
  problems(): string[] {
    const out: string[] = [];
    for (const n of this.#nodes) {
      const where = `node [${n.start}, ${end(n)})`;
      if (!held(n)) out.push(`${where} is held by no one`);
      if (n.tokens.length === 0) out.push(`${where} is empty`);
      if (!n.parent || n.parent.children.get(n.key) !== n) out.push(`${where} is not its parent's child`);
      else if (n.start !== end(n.parent)) out.push(`${where} does not start where its parent ends (${end(n.parent)})`);
      for (const c of n.children.values()) if (!this.#nodes.has(c)) out.push(`${where} has a child not in the tree`);
    }
    return out;
  }

  /** The pipeline's stages were emptied: nothing is cached. */
  clear(): void {
    this.#roots.clear();
    this.#nodes.clear();
  }

  /** The scope whose tree `node` is in ('' when it is in none any more). */
  scopeOf(node: PrefixNode): string {
    let root = node;
    while (root.parent) root = root.parent;
    for (const [scope, r] of this.#roots) if (r === root) return scope;
    return '';
  }

  /** The path of `node`'s first `depth` positions (all by default). */
  static path(node: PrefixNode, depth = end(node)): number[] {
    const parts: number[][] = [];
    for (let n: PrefixNode | null = node; n; n = n.parent) parts.unshift(n.tokens);
    return parts.flat().slice(0, depth);
  }

  #root(scope: string, now: number): PrefixNode {
    let r = this.#roots.get(scope);
    if (!r) {
      r = newNode(null, 0, [], 0, now);
      this.#roots.set(scope, r);
    }
    return r;
  }

  /** The node ending at `depth` on `n`'s path (n ends at or after it): `n`'s upper part split off when `depth` falls inside it. */
  #splitAt(n: PrefixNode, depth: number, now: number): PrefixNode {
    if (depth === end(n)) return n;
    const k = depth - n.start;
    if (k <= 0 || k > n.tokens.length) throw new Error(`prefix tree: position ${depth} is not inside a node of [${n.start}, ${end(n)})`);
    const upper = newNode(n.parent, n.key, n.tokens.slice(0, k), n.start, now);
    upper.owner = n.owner;
    upper.lastUsedMs = n.lastUsedMs;
    n.parent!.children.set(upper.key, upper);
    n.tokens = n.tokens.slice(k);
    n.start = depth;
    n.parent = upper;
    n.key = n.tokens[0]!;
    upper.children.set(n.key, n);
    this.#nodes.add(upper);
    return upper;
  }

  /** Drops `n`'s positions from `keep` on (never computed); what it holds stays with its upper part. */
  #cut(n: PrefixNode, keep: number): void {
    n.tokens = n.tokens.slice(0, keep);
  }

  #remove(n: PrefixNode): void {
    n.parent?.children.delete(n.key);
    this.#nodes.delete(n);
  }

  /** Removes `n` and then its ancestors while no one holds them. */
  #prune(n: PrefixNode): void {
    for (let x: PrefixNode | null = n; x && x.parent && !held(x); x = x.parent) this.#remove(x);
  }
}

/**
 * The deepest place at or above `depth` on `node`'s path where a cache sequence ends exactly (the
 * end of a node whose sequence holds nothing past it), as a match; null when there is none.
 */
function endOnPath(node: PrefixNode, depth: number): PrefixMatch | null {
  for (let n: PrefixNode | null = node; n && n.parent; n = n.parent) {
    if (end(n) <= depth && n.seq >= 0 && n.extra === 0 && ready(n) === n.tokens.length) return { node: n, depth: end(n), pending: 0 };
  }
  return null;
}

/** A sequence holding `node`'s whole path now. */
function holderOf(node: PrefixNode): number {
  for (let n: PrefixNode | undefined = node; n; n = n.children.values().next().value) {
    if (n.seq >= 0) return n.seq;
    if (n.owner) return n.owner.seq;
    const pin = n.pins.values().next().value;
    if (pin !== undefined) return pin;
  }
  throw new Error('prefix tree: a node that no sequence holds');
}
