// Proofs that a fence came from a coordinator. A fence is (leader term, pipeline generation):
// stages drop work of an older fence than the newest they saw, so whoever can make a stage see a
// higher one fences the real leader out. With terms verified, a stage takes a newer fence only
// with the coordinators' Ed25519 signature of it; the coordinators (all holding the same private
// key) sign each term when they take the lease and each generation when a pipeline starts over;
// workers and gateways hold the public key (or a certificate of it).
//   fence proof:  Ed25519("strata/v1 fence <term> <generation>")   on steps, sequence operations, pushes
//   leader proof: Ed25519("strata/v1 leader <coordinator id> <term>") on leader announcements
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { WireError } from './errors.ts';

const fenceText = (term: bigint, generation: bigint) => Buffer.from(`strata/v1 fence ${term} ${generation}`, 'utf8');
const leaderText = (id: string, term: bigint) => Buffer.from(`strata/v1 leader ${id} ${term}`, 'utf8');

/** An Ed25519 key read by `read`; a WireError('bad_key') naming `what` and `expected` otherwise. */
function ed25519Key(read: (pem: string | Buffer) => KeyObject, pem: string | Buffer, what: string, expected: string): KeyObject {
  let key: KeyObject;
  try {
    key = read(pem);
  } catch (err) {
    throw new WireError('bad_key', `${what} is ${expected}: ${(err as Error).message}`);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw new WireError('bad_key', `${what} is ${key.asymmetricKeyType ?? 'unknown'}, not Ed25519`);
  return key;
}

/** Signs fences and leader announcements (coordinators). */
export class FenceSigner {
  readonly #key: KeyObject;
  /** proofs made, by "term generation": a term signs a handful of generations */
  readonly #made = new Map<string, Uint8Array>();

  private constructor(key: KeyObject) {
    this.#key = key;
  }

  /** From an Ed25519 private key in PEM (PKCS#8). */
  static fromPem(pem: string | Buffer): FenceSigner {
    return new FenceSigner(ed25519Key(createPrivateKey, pem, 'the term key', 'not a private key in PEM'));
  }

  /** The proof of fence (term, generation). */
  fence(term: bigint, generation: bigint): Uint8Array {
    const k = `${term} ${generation}`;
    let p = this.#made.get(k);
    if (!p) {
      if (this.#made.size >= 64) this.#made.clear();
      p = new Uint8Array(sign(null, fenceText(term, generation), this.#key));
      this.#made.set(k, p);
    }
    return p;
  }

  /** The proof that `id` leads under `term`. */
  leader(id: string, term: bigint): Uint8Array {
    return new Uint8Array(sign(null, leaderText(id, term), this.#key));
  }
}

/** Checks proofs (workers, gateways). */
export class FenceVerifier {
  readonly #key: KeyObject;

  private constructor(key: KeyObject) {
    this.#key = key;
  }

  /** From the Ed25519 public key in PEM (SPKI), or a PEM certificate of it (what the Helm chart makes). */
  static fromPem(pem: string | Buffer): FenceVerifier {
    return new FenceVerifier(ed25519Key(createPublicKey, pem, 'the term public key', 'neither a public key nor a certificate in PEM'));
  }

  /** Whether `proof` signs fence (term, generation). */
  fence(term: bigint, generation: bigint, proof: Uint8Array): boolean {
    return proof.length === 64 && verify(null, fenceText(term, generation), this.#key, proof);
  }

  /** Whether `proof` signs that `id` leads under `term`. */
  leader(id: string, term: bigint, proof: Uint8Array): boolean {
    return proof.length === 64 && verify(null, leaderText(id, term), this.#key, proof);
  }
}

/**
 * The fences a stage believes: with a verifier, the newest proven one and any older one (which
 * the stage then drops as stale), and a newer one only with its proof; without, every fence.
 */
export class FenceGuard {
  readonly #verifier: FenceVerifier | null;
  #term = 0n;
  #generation = 0n;

  constructor(verifier: FenceVerifier | null) {
    this.#verifier = verifier;
  }

  /** Whether fences are verified at all. */
  get verifying(): boolean {
    return this.#verifier !== null;
  }

  /** null when a message of this fence may go on; otherwise why not. */
  refuse(term: bigint, generation: bigint, proof: Uint8Array): string | null {
    if (!this.#verifier) return null;
    if (term === 0n) return 'an unfenced message (term 0): this worker verifies terms';
    if (term < this.#term || (term === this.#term && generation <= this.#generation)) return null;
    if (!this.#verifier.fence(term, generation, proof)) return `term ${term} generation ${generation} comes without the coordinators' signature`;
    this.#term = term;
    this.#generation = generation;
    return null;
  }
}
