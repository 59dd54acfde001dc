import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Progress, Spinner, bar, formatAge, formatBytes, formatMs, occupancy, percent, table } from './format.ts';

/** A stream that records what is written to it. */
const sink = (isTTY: boolean, columns = 0) => {
  const s = { isTTY, columns, text: '', write(x: string) { s.text += x; return true; } };
  return s;
};

test('bars fill in proportion, clamped, and read with their percentage', () => {
  assert.equal(bar(0.5, 8), '████░░░░');
  assert.equal(bar(0, 4), '░░░░');
  assert.equal(bar(1.7, 4), '████');
  assert.equal(bar(Number.NaN, 4), '░░░░');
  assert.equal(occupancy(52, 100, 8), '████░░░░  52%');
  assert.equal(occupancy(5, 0, 4), '░░░░   0%');
  assert.equal(percent(0.999), '99%', 'not 100% before the end');
  assert.equal(percent(0.001), '1%', 'not 0% once something is done');
  assert.equal(percent(1), '100%');
});

test('sizes, durations and ages read at a glance', () => {
  assert.equal(formatBytes(512), '512 B');
  assert.equal(formatBytes(1.08 * 2 ** 20), '1.08 MiB');
  assert.equal(formatBytes(64.3 * 2 ** 20), '64.3 MiB');
  assert.equal(formatBytes(3 * 2 ** 40), '3.00 TiB');
  assert.equal(formatMs(17.43), '17.4 ms');
  assert.equal(formatMs(136.2), '136 ms');
  assert.equal(formatMs(1740), '1.74 s');
  assert.equal(formatMs(245_000), '4 min 05 s');
  assert.equal(formatMs(-1), '–');
  assert.equal(formatAge(10_000, 10_500), 'now');
  assert.equal(formatAge(0, 5), '–');
  assert.equal(formatAge(0 + 1, 5_001), '5 s');
  assert.equal(formatAge(1, 1 + 3 * 60_000), '3 min');
  assert.equal(formatAge(1, 1 + 50 * 3_600_000), '2 d');
});

test('tables align columns, numbers to the right, and cut trailing spaces', () => {
  const lines = table(['SESSION', 'POSITIONS', 'STATE'], [['a', '7', 'busy'], ['long-name', '1,024', '']], [1]);
  assert.deepEqual(lines, [
    'SESSION    POSITIONS  STATE',
    'a                  7  busy',
    'long-name      1,024',
  ]);
  assert.equal(table(['A', 'B'], [['█░', 'x']])[1], '█░  x', 'block characters take one cell');
});

test('progress on a terminal redraws one line with a bar; elsewhere it prints plain lines', () => {
  let t = 0;
  const tty = sink(true);
  const p = new Progress({ label: 'draining w', total: 4, unit: 'sessions moved', stream: tty, now: () => t, width: 8 });
  assert.equal(p.tty, true);
  t = 1000;
  p.update(2, '1 moving');
  assert.equal(tty.text, '\r\x1b[2Kdraining w  ████░░░░  50%  2/4 sessions moved  1 moving  1.00 s');
  p.log('a line');
  assert.ok(tty.text.includes('\r\x1b[2Ka line\n\r\x1b[2Kdraining w'), 'a log line goes above the bar, which is drawn again');
  t = 2000;
  p.finish('');
  assert.ok(tty.text.endsWith('draining w  ████░░░░  50%  2/4 sessions moved  2.00 s\n'));
  p.update(4);
  assert.ok(tty.text.endsWith('\n'), 'nothing after finish');

  const plain = sink(false);
  const q = new Progress({ label: 'synth', total: 100, stream: plain, now: () => 0 });
  assert.equal(q.tty, false);
  for (let i = 0; i <= 100; i += 5) q.update(i);
  q.finish();
  const lines = plain.text.trimEnd().split('\n');
  assert.equal(lines.length, 11, 'a line per tenth below the end, and one at the end');
  assert.equal(lines[0], 'synth: 0/100 (0%), 0.0 ms');
  assert.equal(lines.at(-1), 'synth: 100/100 (100%), 0.0 ms');
  assert.ok(!plain.text.includes('\x1b') && !plain.text.includes('\r') && !plain.text.includes('█'), 'no control characters or bars off a terminal');
});

test('progress cuts its line to the terminal width', () => {
  const tty = sink(true, 20);
  const p = new Progress({ label: 'a long label that does not fit', total: 2, stream: tty, now: () => 0 });
  p.update(1);
  assert.equal([...tty.text.replace('\r\x1b[2K', '')].length, 19);
});

test('a spinner prints a start and an end line off a terminal', () => {
  const plain = sink(false);
  let t = 0;
  const s = new Spinner('starting the cluster', { stream: plain, now: () => t });
  t = 2500;
  s.stop();
  s.stop();
  assert.equal(plain.text, 'starting the cluster…\nstarting the cluster: 2.50 s\n');
});
