// Terminal output of the strata command: text bars, sizes, durations, aligned tables, and progress
// that redraws one line on a terminal and prints plain lines anywhere else (a pipe, a log file,
// CI), so that machine-read output never carries control characters.

/** A bar of `width` cells, filled in proportion to `fraction` (clamped to 0..1): `████░░░░`. */
export function bar(fraction: number, width = 16): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  const full = Math.round(f * width);
  return '█'.repeat(full) + '░'.repeat(width - full);
}

/** A fraction as a whole percentage; never 100% before the end, never 0% once something is done. */
export function percent(fraction: number): string {
  const f = Number.isFinite(fraction) ? Math.min(1, Math.max(0, fraction)) : 0;
  let p = Math.round(f * 100);
  if (p === 100 && f < 1) p = 99;
  if (p === 0 && f > 0) p = 1;
  return `${p}%`;
}

/** `used` of `total` as a bar and a percentage: `████░░░░ 52%` (an empty total reads 0%). */
export function occupancy(used: number, total: number, width = 16): string {
  const f = total > 0 ? used / total : 0;
  return `${bar(f, width)} ${percent(f).padStart(4)}`;
}

/** Bytes in binary units: `512 B`, `1.08 MiB`, `14.2 GiB`. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1024) return `${Math.max(0, Math.round(n || 0))} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** A duration in milliseconds: `0.4 ms`, `17.4 ms`, `136 ms`, `1.74 s`, `12.3 s`, `4 min 05 s`. */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
}

/** How long ago `thenMs` was, coarsely: `now` under a second, then `5 s`, `3 min`, `2 h`, `4 d`. */
export function formatAge(thenMs: number, nowMs: number): string {
  if (!thenMs) return '–';
  const s = Math.max(0, (nowMs - thenMs) / 1000);
  if (s < 1) return 'now';
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} d`;
}

/** Characters a string takes on a terminal (every character here is one cell wide). */
const width = (s: string) => [...s].length;

/**
 * Aligned columns, two spaces apart, the header first; `right` names the columns aligned to the
 * right (numbers). Trailing spaces are cut. Returns the lines.
 */
export function table(header: readonly string[], rows: readonly (readonly string[])[], right: readonly number[] = []): string[] {
  const widths = header.map((h, c) => Math.max(width(h), ...rows.map((r) => width(r[c] ?? ''))));
  const line = (cells: readonly string[]) => cells.map((cell, c) => {
    const pad = ' '.repeat(widths[c]! - width(cell));
    return right.includes(c) ? pad + cell : cell + pad;
  }).join('  ').trimEnd();
  return [line(header), ...rows.map(line)];
}

/** A stream progress can draw on. */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** Whether `stream` is a terminal that takes redrawn lines. */
export function isTerminal(stream: ProgressStream): boolean {
  return stream.isTTY === true && process.env.TERM !== 'dumb';
}

/** Options of {@link Progress}. */
export interface ProgressOptions {
  /** what is being done: `draining p0-s1` */
  label: string;
  /** units of work in all (0: not known yet) */
  total: number;
  /** after `done/total`: `sessions moved` */
  unit?: string;
  /** default: process.stderr */
  stream?: ProgressStream;
  /** draw a bar (default: whether the stream is a terminal) */
  tty?: boolean;
  /** cells of the bar */
  width?: number;
  /** `done/total` written otherwise, e.g. as bytes */
  amount?: (done: number, total: number) => string;
  /** milliseconds clock (tests) */
  now?: () => number;
}

/**
 * Progress of one piece of work. On a terminal one line is redrawn in place
 * (`label ████░░░░ 52% 13/25 unit · detail · 4.1 s`, at most every 50 ms); elsewhere a plain line
 * is printed each time another tenth of the work is done (each unit when there are at most ten),
 * and one at the end.
 */
export class Progress {
  readonly tty: boolean;
  readonly #o: ProgressOptions;
  readonly #stream: ProgressStream;
  readonly #now: () => number;
  readonly #t0: number;
  #total: number;
  #done = 0;
  #detail = '';
  #drawnMs = -Infinity;
  /** the last tenth (or unit) printed as a plain line */
  #printed = -1;
  #finished = false;

  constructor(o: ProgressOptions) {
    this.#o = o;
    this.#stream = o.stream ?? process.stderr;
    this.tty = o.tty ?? isTerminal(this.#stream);
    this.#now = o.now ?? (() => performance.now());
    this.#t0 = this.#now();
    this.#total = o.total;
  }

  /** Work in all, when it becomes known or grows. */
  set total(n: number) {
    this.#total = n;
  }

  /** Sets how much is done (and what is going on) and draws it. */
  update(done: number, detail = this.#detail): void {
    if (this.#finished) return;
    this.#done = done;
    this.#detail = detail;
    if (this.tty) {
      const now = this.#now();
      if (now - this.#drawnMs < 50 && done < this.#total) return;
      this.#drawnMs = now;
      this.#draw();
      return;
    }
    const step = this.#total > 0 ? (this.#total <= 10 ? done : Math.floor((done / this.#total) * 10)) : -1;
    if (step > this.#printed && done < this.#total) {
      this.#printed = step;
      this.#stream.write(`${this.#text(false)}\n`);
    }
  }

  /** A line of its own, on `to` (default: the bar's stream), above the bar on a terminal. */
  log(line: string, to: ProgressStream = this.#stream): void {
    if (this.tty && !this.#finished) {
      this.#stream.write('\r\x1b[2K');
      to.write(`${line}\n`);
      this.#draw();
    } else {
      to.write(`${line}\n`);
    }
  }

  /** Ends it: the last state stays on screen, followed by `detail` if given. Idempotent. */
  finish(detail?: string): void {
    if (this.#finished) return;
    if (detail !== undefined) this.#detail = detail;
    if (this.tty) {
      this.#draw();
      this.#stream.write('\n');
    } else {
      this.#stream.write(`${this.#text(false)}\n`);
    }
    this.#finished = true;
  }

  #draw(): void {
    const line = this.#text(true);
    const cols = this.#stream.columns ?? 0;
    const cut = cols > 8 && width(line) >= cols ? `${[...line].slice(0, cols - 2).join('')}…` : line;
    this.#stream.write(`\r\x1b[2K${cut}`);
  }

  #text(withBar: boolean): string {
    const { label, unit, amount } = this.#o;
    const t = this.#total, d = this.#done;
    const parts = [label];
    if (t > 0 && withBar) parts.push(`${bar(d / t, this.#o.width ?? 24)} ${percent(d / t).padStart(4)}`);
    if (t > 0) parts.push(`${amount ? amount(d, t) : `${d}/${t}`}${unit ? ` ${unit}` : ''}${withBar ? '' : ` (${percent(d / t)})`}`);
    if (this.#detail) parts.push(this.#detail);
    parts.push(formatMs(this.#now() - this.#t0));
    return withBar ? parts.join('  ') : `${parts[0]}: ${parts.slice(1).join(', ')}`;
  }
}

/** Options of {@link Spinner}. */
export interface SpinnerOptions {
  stream?: ProgressStream;
  tty?: boolean;
  now?: () => number;
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * Work of unknown length: on a terminal a spinner and the elapsed time, redrawn ten times a
 * second (the event loop must be free: for asynchronous work); elsewhere one line at the start
 * and one at the end.
 */
export class Spinner {
  readonly tty: boolean;
  readonly #stream: ProgressStream;
  readonly #now: () => number;
  readonly #t0: number;
  #label: string;
  #frame = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(label: string, o: SpinnerOptions = {}) {
    this.#label = label;
    this.#stream = o.stream ?? process.stderr;
    this.tty = o.tty ?? isTerminal(this.#stream);
    this.#now = o.now ?? (() => performance.now());
    this.#t0 = this.#now();
    if (this.tty) {
      this.#draw();
      this.#timer = setInterval(() => this.#draw(), 100);
      this.#timer.unref();
    } else {
      this.#stream.write(`${label}…\n`);
    }
  }

  /** What is going on now. */
  set label(label: string) {
    this.#label = label;
    if (this.tty && !this.#stopped) this.#draw();
  }

  /** Stops it and prints `message` (default: the label and the time it took; '': nothing). Idempotent. */
  stop(message?: string): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    const text = message ?? `${this.#label}: ${formatMs(this.#now() - this.#t0)}`;
    if (this.tty) this.#stream.write(`\r\x1b[2K${text}${text ? '\n' : ''}`);
    else if (text) this.#stream.write(`${text}\n`);
  }

  #draw(): void {
    this.#frame = (this.#frame + 1) % FRAMES.length;
    this.#stream.write(`\r\x1b[2K${FRAMES[this.#frame]} ${this.#label}  ${formatMs(this.#now() - this.#t0)}`);
  }
}
