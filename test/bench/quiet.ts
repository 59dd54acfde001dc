// Is the machine quiet? A figure only counts from a quiet machine: before (and after) the benches,
// the CPU time every process used over a short window is read from /proc, and a machine busy
// with something else is said loudly, with the busiest processes named. procCpu is also how the
// serving and scale benches read a process's CPU time.
import { readFileSync, readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** Jiffies of the whole machine: all of them and the idle ones (the first line of /proc/stat). */
export function parseCpuLine(stat: string): { total: number; idle: number } {
  const line = stat.split('\n').find((l) => l.startsWith('cpu '));
  if (!line) throw new Error('/proc/stat has no cpu line');
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already in user)
  const total = f.slice(0, 8).reduce((s, x) => s + (Number.isFinite(x) ? x : 0), 0);
  return { total, idle: (f[3] ?? 0) + (f[4] ?? 0) };
}

/**
 * A process's command name and CPU time (user + system, its threads included) in milliseconds,
 * from /proc/<pid>/stat; null when it is gone.
 */
export function procCpu(pid: number): { name: string; cpuMs: number } | null {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const close = s.lastIndexOf(')');
  const fields = s.slice(close + 2).split(' ');
  // utime and stime, fields 14 and 15 of stat (11 and 12 after the command), in clock ticks (100 Hz on Linux)
  return { name: s.slice(s.indexOf('(') + 1, close), cpuMs: (Number(fields[11]) + Number(fields[12])) * 10 };
}

/** Every process's name and CPU milliseconds. */
function processCpu(): Map<number, { name: string; cpuMs: number }> {
  const out = new Map<number, { name: string; cpuMs: number }>();
  for (const d of readdirSync('/proc')) {
    const p = /^\d+$/.test(d) ? procCpu(Number(d)) : null;
    if (p) out.set(Number(d), p);
  }
  return out;
}

/** How busy the machine was over `ms` while this process slept, and who kept it busy. */
export interface Quiet {
  /** percent of all cores' time not idle */
  busyPct: number;
  /** the busiest other processes: "name pid: N% of a core" */
  busiest: string[];
}

export async function measureQuiet(ms = 2000): Promise<Quiet> {
  const a = parseCpuLine(readFileSync('/proc/stat', 'utf8')), pa = processCpu();
  await sleep(ms);
  const b = parseCpuLine(readFileSync('/proc/stat', 'utf8')), pb = processCpu();
  const total = b.total - a.total;
  const busyPct = total > 0 ? (100 * (total - (b.idle - a.idle))) / total : 0;
  // a process's share of one core over the window
  const busiest = [...pb]
    .filter(([pid]) => pid !== process.pid)
    .map(([pid, p]) => ({ pid, name: p.name, pct: (100 * (p.cpuMs - (pa.get(pid)?.cpuMs ?? p.cpuMs))) / ms }))
    .filter((p) => p.pct >= 5)
    .sort((x, y) => y.pct - x.pct)
    .slice(0, 3)
    .map((p) => `${p.name} ${p.pid}: ${p.pct.toFixed(0)}% of a core`);
  return { busyPct, busiest };
}

/** Says how quiet the machine is ('before' or 'after' the benches); loudly when it is not. */
export function sayQuiet(q: Quiet, when: string): void {
  if (q.busyPct < 15) console.log(`machine ${when} the run: ${q.busyPct.toFixed(0)}% busy (quiet)`);
  else console.log(`\nWARNING: the machine is not quiet ${when} the run: ${q.busyPct.toFixed(0)}% of its CPU busy${q.busiest.length > 0 ? ` (${q.busiest.join(', ')})` : ''}; figures from this run do not count\n`);
}
