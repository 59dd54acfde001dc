// Is the machine quiet? A figure only counts from a quiet machine: before (and after) the benches,
// the CPU time every process used over a short window is read from /proc, and a machine busy
// with something else is said loudly, with the busiest processes named.
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

/** CPU jiffies (user + system) of each process, with its command name. */
function processJiffies(): Map<number, { name: string; jiffies: number }> {
  const out = new Map<number, { name: string; jiffies: number }>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const s = readFileSync(`/proc/${d}/stat`, 'utf8');
      const close = s.lastIndexOf(')');
      const fields = s.slice(close + 2).split(' ');
      out.set(Number(d), { name: s.slice(s.indexOf('(') + 1, close), jiffies: Number(fields[11]) + Number(fields[12]) });
    } catch {
      // (gone meanwhile)
    }
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
  const a = parseCpuLine(readFileSync('/proc/stat', 'utf8')), pa = processJiffies();
  await sleep(ms);
  const b = parseCpuLine(readFileSync('/proc/stat', 'utf8')), pb = processJiffies();
  const total = b.total - a.total;
  const busyPct = total > 0 ? (100 * (total - (b.idle - a.idle))) / total : 0;
  // jiffies are 1/100 s here (USER_HZ): a process's share of one core over the window
  const busiest = [...pb]
    .filter(([pid]) => pid !== process.pid)
    .map(([pid, p]) => ({ pid, name: p.name, pct: (p.jiffies - (pa.get(pid)?.jiffies ?? p.jiffies)) / (ms / 1000) }))
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
