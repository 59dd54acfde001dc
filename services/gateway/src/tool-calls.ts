// A choice's text, as it streams, split into what the model said and the tool calls it made, in
// its family's format (tool-format.ts). Text that could begin a call is held back until it cannot;
// a call is given whole once it closes. A call that does not parse, or names no offered
// function, stays in the text: nothing the model wrote is lost.
import type { ToolFormat } from './tool-format.ts';

/** A call as parsed from the output: its function and its arguments as compact JSON. */
export interface ParsedCall {
  name: string;
  arguments: string;
}

/** What the parser gives: text to show, or a call. */
export type ParsedPiece = { text: string } | { call: ParsedCall };

const HERMES_OPEN = '<tool_call>';
const HERMES_CLOSE = '</tool_call>';
const MISTRAL_OPEN = '[TOOL_CALLS]';
const PYTHON_TAG = '<|python_tag|>';

/** The longest end of `s` that begins `marker` (and is shorter than it). */
function heldSuffix(s: string, marker: string): number {
  for (let k = Math.min(marker.length - 1, s.length); k > 0; k--) if (s.endsWith(marker.slice(0, k))) return k;
  return 0;
}

/** JSON values written one after another (separated by whitespace, ',' or ';'), or null. */
export function jsonValues(text: string): unknown[] | null {
  const out: unknown[] = [];
  let i = 0;
  while (i < text.length) {
    while (i < text.length && /[\s,;]/.test(text[i]!)) i++;
    if (i >= text.length) break;
    const start = i;
    if (text[i] !== '{' && text[i] !== '[') return null;
    let depth = 0, inString = false;
    for (; i < text.length; i++) {
      const ch = text[i]!;
      if (inString) {
        if (ch === '\\') i++;
        else if (ch === '"') inString = false;
      } else if (ch === '"') inString = true;
      else if (ch === '{' || ch === '[') depth++;
      else if ((ch === '}' || ch === ']') && --depth === 0) break;
    }
    if (depth !== 0 || i >= text.length) return null;
    try {
      out.push(JSON.parse(text.slice(start, ++i)));
    } catch {
      return null;
    }
  }
  return out;
}

/** One call object ({name, arguments | parameters}) naming an offered function, or null. */
function callOf(v: unknown, names: ReadonlySet<string>): ParsedCall | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null;
  const o = v as Record<string, unknown>;
  if (typeof o.name !== 'string' || !names.has(o.name)) return null;
  let args = o.arguments ?? o.parameters ?? {};
  if (typeof args === 'string') {
    try {
      args = JSON.parse(args);
    } catch {
      return null;
    }
  }
  if (typeof args !== 'object' || args === null || Array.isArray(args)) return null;
  return { name: o.name, arguments: JSON.stringify(args) };
}

/** Calls from values (arrays of calls flattened), or null unless every value is a call. */
function callsOf(values: unknown[] | null, names: ReadonlySet<string>): ParsedCall[] | null {
  if (values === null || values.length === 0) return null;
  const calls: ParsedCall[] = [];
  for (const v of values.flatMap((x) => (Array.isArray(x) ? x : [x]))) {
    const c = callOf(v, names);
    if (!c) return null;
    calls.push(c);
  }
  return calls.length > 0 ? calls : null;
}

/** One choice's output, fed text as it streams. */
export class ToolCallParser {
  readonly #format: ToolFormat;
  readonly #names: ReadonlySet<string>;
  /** text not yet given out */
  #buf = '';
  /** inside a call (hermes, mistral) or a JSON answer (llama3) until the end or its close */
  #inCall = false;
  /** llama3: the output began (or not) as a call; null until its first visible character */
  #leadsWithCall: boolean | null = null;
  /** whitespace after the last text given, held until more text comes (none after a call) */
  #space = '';
  /** calls given so far */
  calls = 0;

  constructor(format: ToolFormat, names: readonly string[]) {
    this.#format = format;
    this.#names = new Set(names);
  }

  /** Adds streamed text; returns what can be given now. */
  push(text: string): ParsedPiece[] {
    this.#buf += text;
    const out: ParsedPiece[] = [];
    if (this.#format === 'llama3') this.#llama3(out, false);
    else this.#marked(out, false);
    return out;
  }

  /** The rest, at the end of the choice. */
  end(): ParsedPiece[] {
    const out: ParsedPiece[] = [];
    if (this.#format === 'llama3') this.#llama3(out, true);
    else this.#marked(out, true);
    if (this.calls === 0 && this.#space) out.push({ text: this.#space });
    this.#space = '';
    return out;
  }

  #text(out: ParsedPiece[], s: string): void {
    const all = this.#space + s;
    const shown = all.trimEnd();
    this.#space = all.slice(shown.length);
    if (shown) out.push({ text: shown });
  }

  #call(out: ParsedPiece[], c: ParsedCall): void {
    this.#space = '';
    this.calls++;
    out.push({ call: c });
  }

  /** hermes and mistral: calls after a marker (hermes: each closed by its own tag). */
  #marked(out: ParsedPiece[], final: boolean): void {
    const hermes = this.#format === 'hermes';
    const open = hermes ? HERMES_OPEN : MISTRAL_OPEN;
    for (;;) {
      if (!this.#inCall) {
        const i = this.#buf.indexOf(open);
        if (i < 0) {
          const keep = final ? 0 : heldSuffix(this.#buf, open);
          this.#text(out, this.#buf.slice(0, this.#buf.length - keep));
          this.#buf = this.#buf.slice(this.#buf.length - keep);
          return;
        }
        this.#text(out, this.#buf.slice(0, i));
        this.#buf = this.#buf.slice(i + open.length);
        this.#inCall = true;
        continue;
      }
      const j = hermes ? this.#buf.indexOf(HERMES_CLOSE) : -1;
      if (j < 0 && !final) return;
      const body = j < 0 ? this.#buf : this.#buf.slice(0, j);
      this.#buf = j < 0 ? '' : this.#buf.slice(j + HERMES_CLOSE.length);
      this.#inCall = false;
      const calls = callsOf(jsonValues(body.trim()), this.#names);
      if (calls) for (const c of calls) this.#call(out, c);
      else this.#text(out, open + body + (j < 0 ? '' : HERMES_CLOSE));
      if (j < 0) return;
    }
  }

  /** llama3: an answer that begins with '{' (or the python tag) is calls when all of it parses as calls. */
  #llama3(out: ParsedPiece[], final: boolean): void {
    if (this.#leadsWithCall === null) {
      const lead = this.#buf.trimStart();
      if (lead === '' || (PYTHON_TAG.startsWith(lead) && lead.length < PYTHON_TAG.length)) {
        if (!final) return;
      }
      this.#leadsWithCall = lead.startsWith('{') || lead.startsWith(PYTHON_TAG);
    }
    if (!this.#leadsWithCall) {
      this.#text(out, this.#buf);
      this.#buf = '';
      return;
    }
    if (!final) return;
    const body = this.#buf.trimStart().replace(PYTHON_TAG, '');
    const calls = callsOf(jsonValues(body.trim()), this.#names);
    if (calls) for (const c of calls) this.#call(out, c);
    else this.#text(out, this.#buf);
    this.#buf = '';
  }
}
