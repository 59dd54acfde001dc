// One schema per service, read in stages (STYLE habit 10): defaults, then a JSON file named by
// --config (or STRATA_CONFIG), then STRATA_* environment variables, then command-line flags. Keys
// are camelCase in the schema and the file, --kebab-case as flags, STRATA_SNAKE_CASE in the
// environment. A secret (a URL with a password) can come from a file instead: STRATA_<KEY>_FILE
// names a file whose contents (trimmed) are the value, as Docker secrets and mounted Kubernetes
// secrets are read; STRATA_<KEY> itself wins over it.
import { readFileSync } from 'node:fs';
import { ConfigError } from './errors.ts';

/** The kinds of value a field holds. */
export type FieldKind = 'string' | 'int' | 'number' | 'bool';

/** One configuration field. */
export interface Field<K extends FieldKind = FieldKind> {
  kind: K;
  /** one line for --help */
  doc: string;
  /** value when no source sets it; without one the field is optional (undefined) */
  default?: ValueOf<K>;
  /** no default and no source setting it is an error */
  required?: boolean;
}

type ValueOf<K extends FieldKind> = K extends 'string' ? string : K extends 'bool' ? boolean : number;

/** A service's schema: field name -> field. */
export type Schema = Record<string, Field>;

/** The values a schema describes. */
export type ConfigOf<S extends Schema> = {
  [N in keyof S]: S[N] extends { required: true } | { default: unknown } ? ValueOf<S[N]['kind']> : ValueOf<S[N]['kind']> | undefined;
};

/** Where the values come from; each defaults to the process's own. */
export interface Sources {
  argv?: string[];
  env?: Record<string, string | undefined>;
}

/** camelCase -> kebab-case */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** camelCase -> STRATA_SNAKE_CASE */
export function envName(key: string): string {
  return `STRATA_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

function parseValue(field: Field, raw: unknown, key: string, where: string): string | number | boolean {
  const bad = () => new ConfigError('bad_value', `${where}: ${key} must be ${field.kind === 'int' ? 'an integer' : `a ${field.kind}`}, got ${JSON.stringify(raw)}`, key);
  switch (field.kind) {
    case 'string':
      if (typeof raw !== 'string' && typeof raw !== 'number') throw bad();
      return String(raw);
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1') return true;
      if (raw === 'false' || raw === '0') return false;
      throw bad();
    case 'int':
    case 'number': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (!Number.isFinite(n) || (field.kind === 'int' && !Number.isInteger(n))) throw bad();
      return n;
    }
  }
}

function parseFlags(schema: Schema, argv: string[]): { flags: Map<string, unknown>; config?: string } {
  const byFlag = new Map(Object.keys(schema).map((k) => [flagName(k), k]));
  const flags = new Map<string, unknown>();
  let config: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) throw new ConfigError('unknown_key', `unexpected argument '${a}'`);
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    if (name === 'config') {
      config = eq > 0 ? a.slice(eq + 1) : argv[++i];
      continue;
    }
    const key = byFlag.get(name);
    if (!key) throw new ConfigError('unknown_key', `unknown flag --${name}`, name);
    if (eq > 0) flags.set(key, a.slice(eq + 1));
    else if (schema[key]!.kind === 'bool' && (i + 1 >= argv.length || argv[i + 1]!.startsWith('--'))) flags.set(key, true);
    else if (i + 1 < argv.length) flags.set(key, argv[++i]);
    else throw new ConfigError('bad_value', `--${name} needs a value`, key);
  }
  return { flags, config };
}

/** The contents of a secret file, trimmed. */
function readSecret(path: string, where: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new ConfigError('bad_file', `${where}: cannot read ${path}: ${(err as Error).message}`);
  }
}

/** Reads a service's configuration; every problem is a ConfigError naming the key and source. */
export function loadConfig<S extends Schema>(schema: S, sources: Sources = {}): ConfigOf<S> {
  const argv = sources.argv ?? process.argv.slice(2);
  const env = sources.env ?? process.env;
  const { flags, config } = parseFlags(schema, argv);
  let file: Record<string, unknown> = {};
  const path = config ?? env.STRATA_CONFIG;
  if (path) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new ConfigError('bad_file', `cannot read config file ${path}: ${(err as Error).message}`);
    }
    try {
      file = JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError('bad_file', `config file ${path} is not JSON: ${(err as Error).message}`);
    }
    if (typeof file !== 'object' || file === null || Array.isArray(file)) throw new ConfigError('bad_file', `config file ${path} must hold a JSON object`);
    for (const k of Object.keys(file)) if (!(k in schema)) throw new ConfigError('unknown_key', `config file ${path}: unknown key '${k}'`, k);
  }
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema)) {
    let v: unknown = field.default;
    if (key in file) v = parseValue(field, file[key], key, `config file ${path}`);
    const secretFile = env[`${envName(key)}_FILE`];
    if (secretFile !== undefined && secretFile !== '') v = parseValue(field, readSecret(secretFile, `${envName(key)}_FILE`), key, `${envName(key)}_FILE`);
    const e = env[envName(key)];
    if (e !== undefined && e !== '') v = parseValue(field, e, key, envName(key));
    if (flags.has(key)) v = parseValue(field, flags.get(key), key, `--${flagName(key)}`);
    if (v === undefined && field.required) throw new ConfigError('missing', `${key} is required (--${flagName(key)} or ${envName(key)})`, key);
    out[key] = v;
  }
  return out as ConfigOf<S>;
}

/** The schema as --help text. */
export function describeConfig(schema: Schema): string {
  return Object.entries(schema).map(([k, f]) => {
    const d = f.default !== undefined ? ` (default ${JSON.stringify(f.default)})` : f.required ? ' (required)' : '';
    return `  --${flagName(k)}${f.kind === 'bool' ? '' : ` <${f.kind}>`}  ${f.doc}${d} [${envName(k)}]`;
  }).join('\n');
}
