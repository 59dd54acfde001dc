// Stored responses of the Responses API, for `previous_response_id` and GET/DELETE
// /v1/responses/{id}: each holds its conversation (the chat messages it continued from, its input
// and its output) and the session its KV cells stay in. In the gateway's memory, bounded, least
// recently used out first: a restart, or another gateway, does not know them (docs/api.md).

/** One stored response. */
export interface StoredResponse {
  /** the tenant that created it: no other tenant reads or continues it */
  tenant: string;
  /** the chat messages of its conversation, its output included (chat-completions shape) */
  messages: Record<string, unknown>[];
  /** the response object as answered */
  body: Record<string, unknown>;
  /** the session (unqualified id) whose cells hold the conversation */
  session: string;
}

/** Stored responses, at most `capacity`. */
export class ResponseStore {
  readonly #capacity: number;
  /** id → response, least recently used first */
  readonly #byId = new Map<string, StoredResponse>();
  /** session → the id of the newest response in it: only that one continues the session */
  readonly #latest = new Map<string, string>();

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  /** The response `id` if `tenant` created it (touching it), else null. */
  get(id: string, tenant: string): StoredResponse | null {
    const r = this.#byId.get(id);
    if (!r || r.tenant !== tenant) return null;
    this.#byId.delete(id);
    this.#byId.set(id, r);
    return r;
  }

  /** Whether `id` is the newest response of its session (a continuation may reuse the session). */
  isLatest(id: string): boolean {
    const r = this.#byId.get(id);
    return r !== undefined && this.#latest.get(r.session) === id;
  }

  /** Stores a response as the newest of its session. */
  put(id: string, r: StoredResponse): void {
    this.#byId.set(id, r);
    this.#latest.set(r.session, id);
    while (this.#byId.size > this.#capacity) {
      const [old, o] = this.#byId.entries().next().value as [string, StoredResponse];
      this.#byId.delete(old);
      if (this.#latest.get(o.session) === old) this.#latest.delete(o.session);
    }
  }

  /** Forgets `id` if `tenant` created it; whether it did. */
  delete(id: string, tenant: string): boolean {
    const r = this.#byId.get(id);
    if (!r || r.tenant !== tenant) return false;
    this.#byId.delete(id);
    if (this.#latest.get(r.session) === id) this.#latest.delete(r.session);
    return true;
  }

  /** Responses stored. */
  get size(): number {
    return this.#byId.size;
  }
}
