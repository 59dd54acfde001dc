// Tiers below the device's KV cells: a sequence's state (the versioned state format of migration)
// saved under a key the coordinator chooses, in host memory up to a cap, spilled least recently
// used first to files in a directory up to a second cap, and taken back by its key. A file is
// checked before it is served: its own header (magic, version, key, length) and a SHA-256 of the
// state; a damaged, truncated or foreign file is deleted and reported missing, never imported.
// The directory is the worker's own: files of an earlier run are removed at start (the sequences
// they held are gone with that run's pipelines).
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const MAGIC = 0x544b5453; // 'STKT'
const VERSION = 1;
const SUFFIX = '.kvt';

/** Where a saved state is. */
export type Tier = 'host' | 'disk';

/** What a tier holds, for operators. */
export interface TierStats {
  hostEntries: number;
  hostBytes: number;
  diskEntries: number;
  diskBytes: number;
}

/** Why a state could not be taken back. */
export class TierMiss extends Error {
  readonly code = 'kv_tier_miss';
}

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest();
const fileOf = (key: string) => `${createHash('sha256').update(key, 'utf8').digest('hex').slice(0, 40)}${SUFFIX}`;

/** The host and disk tiers of one worker. */
export class KvTiers {
  readonly #hostCap: number;
  readonly #diskCap: number;
  readonly #dir: string;
  /** key -> state, least recently saved first */
  readonly #host = new Map<string, Uint8Array>();
  #hostBytes = 0;
  /** key -> file bytes, least recently saved first */
  readonly #disk = new Map<string, number>();
  #diskBytes = 0;

  /** `hostCap`/`diskCap` in bytes (0: that tier is off); `dir` for the disk tier ('' without one). */
  constructor(hostCap: number, diskCap: number, dir: string) {
    this.#hostCap = hostCap;
    this.#diskCap = dir ? diskCap : 0;
    this.#dir = dir;
    if (this.#diskCap > 0) {
      mkdirSync(dir, { recursive: true });
      for (const f of readdirSync(dir)) if (f.endsWith(SUFFIX)) rmSync(join(dir, f), { force: true });
    }
  }

  /** Whether any tier can hold a state. */
  get enabled(): boolean {
    return this.#hostCap > 0 || this.#diskCap > 0;
  }

  get stats(): TierStats {
    return { hostEntries: this.#host.size, hostBytes: this.#hostBytes, diskEntries: this.#disk.size, diskBytes: this.#diskBytes };
  }

  /**
   * Saves `state` under `key` (replacing what it held): in host memory, spilling the least
   * recently saved states to disk, and dropping the oldest on disk, to stay within the caps.
   * Returns where it is, or null when no tier can hold it.
   */
  put(key: string, state: Uint8Array): Tier | null {
    this.delete(key);
    if (state.byteLength <= this.#hostCap) {
      this.#host.set(key, state);
      this.#hostBytes += state.byteLength;
      while (this.#hostBytes > this.#hostCap) {
        const [k, s] = this.#host.entries().next().value as [string, Uint8Array];
        this.#host.delete(k);
        this.#hostBytes -= s.byteLength;
        this.#toDisk(k, s);
      }
      return this.#host.has(key) ? 'host' : this.#disk.has(key) ? 'disk' : null;
    }
    return this.#toDisk(key, state) ? 'disk' : null;
  }

  /** Takes the state saved under `key` out of its tier; throws TierMiss when none holds it intact. */
  take(key: string): { state: Uint8Array; tier: Tier } {
    const h = this.#host.get(key);
    if (h) {
      this.#host.delete(key);
      this.#hostBytes -= h.byteLength;
      return { state: h, tier: 'host' };
    }
    if (!this.#disk.has(key)) throw new TierMiss(`no tier holds a KV state for ${key}`);
    const path = join(this.#dir, fileOf(key));
    let file: Buffer;
    try {
      file = readFileSync(path);
    } catch (err) {
      this.#forgetFile(key);
      throw new TierMiss(`the KV state file of ${key} could not be read: ${(err as Error).message}`);
    }
    this.#forgetFile(key);
    return { state: this.#check(file, key), tier: 'disk' };
  }

  /** Forgets what `key` held, in every tier. */
  delete(key: string): void {
    const h = this.#host.get(key);
    if (h) {
      this.#host.delete(key);
      this.#hostBytes -= h.byteLength;
    }
    if (this.#disk.has(key)) this.#forgetFile(key);
  }

  /** Forgets everything. */
  clear(): void {
    for (const k of [...this.#host.keys()]) this.delete(k);
    for (const k of [...this.#disk.keys()]) this.delete(k);
  }

  /** Writes `state` to disk within the cap (oldest files go first); false when it cannot. */
  #toDisk(key: string, state: Uint8Array): boolean {
    const bytes = 64 + key.length * 4 + state.byteLength;
    if (bytes > this.#diskCap) return false;
    while (this.#diskBytes + bytes > this.#diskCap) this.#forgetFile(this.#disk.keys().next().value as string);
    const k = Buffer.from(key, 'utf8');
    const head = Buffer.alloc(16);
    head.writeUInt32LE(MAGIC, 0);
    head.writeUInt16LE(VERSION, 4);
    head.writeUInt16LE(k.length, 6);
    head.writeBigUInt64LE(BigInt(state.byteLength), 8);
    try {
      writeFileSync(join(this.#dir, fileOf(key)), Buffer.concat([head, k, sha256(state), state]));
    } catch {
      return false;
    }
    this.#disk.set(key, bytes);
    this.#diskBytes += bytes;
    return true;
  }

  #forgetFile(key: string): void {
    this.#diskBytes -= this.#disk.get(key) ?? 0;
    this.#disk.delete(key);
    rmSync(join(this.#dir, fileOf(key)), { force: true });
  }

  /** The state in a file, if the file is whole and is `key`'s. */
  #check(file: Buffer, key: string): Uint8Array {
    const bad = (why: string) => new TierMiss(`the KV state file of ${key} is refused: ${why}`);
    if (file.length < 16 || file.readUInt32LE(0) !== MAGIC) throw bad('not a KV tier file');
    if (file.readUInt16LE(4) !== VERSION) throw bad(`version ${file.readUInt16LE(4)}`);
    const kLen = file.readUInt16LE(6), sLen = Number(file.readBigUInt64LE(8));
    if (file.length !== 16 + kLen + 32 + sLen) throw bad(`${file.length} bytes where its header promises ${16 + kLen + 32 + sLen}`);
    if (file.subarray(16, 16 + kLen).toString('utf8') !== key) throw bad('it belongs to another key');
    const state = new Uint8Array(file.buffer, file.byteOffset + 16 + kLen + 32, sLen);
    if (!sha256(state).equals(file.subarray(16 + kLen, 16 + kLen + 32))) throw bad('its checksum does not match');
    return state;
  }
}
