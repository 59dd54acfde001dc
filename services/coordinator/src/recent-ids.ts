// A bounded memory of ids seen lately: the last `capacity` added, the oldest forgotten first.
export class RecentIds {
  readonly #ids = new Set<string>();
  readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = capacity;
  }

  add(id: string): void {
    this.#ids.delete(id);
    this.#ids.add(id);
    if (this.#ids.size > this.capacity) this.#ids.delete(this.#ids.values().next().value!);
  }

  has(id: string): boolean {
    return this.#ids.has(id);
  }
}
