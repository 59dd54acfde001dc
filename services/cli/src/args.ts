// Minimal flag parsing: --name value, --name=value, boolean --flag, positionals.
import { UsageError } from './errors.ts';

/** Parsed command line. */
export interface Args {
  positionals: string[];
  flags: Map<string, string | true>;
}

/** Splits argv into positionals and flags; `booleans` never take a value. */
export function parseArgs(argv: string[], booleans: readonly string[] = []): Args {
  const positionals: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) {
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) {
      flags.set(a.slice(2, eq), a.slice(eq + 1));
    } else if (booleans.includes(a.slice(2)) || i + 1 >= argv.length || argv[i + 1]!.startsWith('--')) {
      flags.set(a.slice(2), true);
    } else {
      flags.set(a.slice(2), argv[++i]!);
    }
  }
  return { positionals, flags };
}

/** Reads typed flag values and rejects unknown flags. */
export class Flags {
  readonly #args: Args;
  readonly #known = new Set<string>();
  constructor(args: Args) {
    this.#args = args;
  }
  str(name: string, fallback?: string): string | undefined {
    this.#known.add(name);
    const v = this.#args.flags.get(name);
    if (v === true) throw new UsageError(`--${name} needs a value`);
    return v ?? fallback;
  }
  required(name: string): string {
    const v = this.str(name);
    if (v === undefined) throw new UsageError(`--${name} is required`);
    return v;
  }
  int(name: string, fallback?: number): number | undefined {
    const v = this.str(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got '${v}'`);
    return n;
  }
  num(name: string, fallback?: number): number | undefined {
    const v = this.str(name);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new UsageError(`--${name} must be a number, got '${v}'`);
    return n;
  }
  bool(name: string): boolean {
    this.#known.add(name);
    const v = this.#args.flags.get(name);
    return v === true || v === 'true' || v === '1';
  }
  /** Throws on any flag no accessor asked for. */
  done(): void {
    for (const k of this.#args.flags.keys()) if (!this.#known.has(k)) throw new UsageError(`unknown flag --${k}`);
  }
}
