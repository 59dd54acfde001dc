// The benches' quiet-machine check (test/bench/quiet.ts): the /proc/stat parser and one real reading.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { it } from 'node:test';
import { measureQuiet, parseCpuLine } from './bench/quiet.ts';

it('reads all and idle jiffies from /proc/stat\'s cpu line (guest time is not counted twice)', () => {
  const stat = 'cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\nintr 1\n';
  assert.deepEqual(parseCpuLine(stat), { total: 990, idle: 820 });
  assert.throws(() => parseCpuLine('intr 1\n'), /no cpu line/);
});

it('a process spinning meanwhile is seen busy and named', async () => {
  const hog = spawn(process.execPath, ['-e', 'const e = Date.now() + 5000; while (Date.now() < e);'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 300));
    const q = await measureQuiet(1000);
    assert.ok(q.busyPct >= (0.8 * 100) / availableParallelism(), `busy ${q.busyPct.toFixed(0)}% with one of ${availableParallelism()} cores spinning`);
    assert.ok(q.busiest.some((b) => b.includes(String(hog.pid))), `the spinner is named: ${q.busiest.join(', ')}`);
  } finally {
    hog.kill();
  }
});
