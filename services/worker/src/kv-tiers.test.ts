// The worker's tiers below the device: host memory within its cap, spilled to disk within its
// cap, and files that are damaged or not the key's refused.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { KvTiers, TierMiss } from './kv-tiers.ts';

const state = (n: number, fill: number) => new Uint8Array(n).fill(fill);
const dirs: string[] = [];
const dir = () => {
  const d = mkdtempSync(join(tmpdir(), 'strata-tiers-'));
  dirs.push(d);
  return d;
};
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('KvTiers', () => {
  it('keeps states in host memory within its cap and gives each back once', () => {
    const t = new KvTiers(1000, 0, '');
    assert.equal(t.put('a', state(400, 1)), 'host');
    assert.equal(t.put('b', state(400, 2)), 'host');
    assert.equal(t.put('c', state(400, 3)), 'host', 'the oldest goes to make room');
    assert.throws(() => t.take('a'), TierMiss, 'no disk tier: a is gone');
    const b = t.take('b');
    assert.deepEqual([b.tier, b.state[0], b.state.length], ['host', 2, 400]);
    assert.throws(() => t.take('b'), TierMiss, 'taken once');
    assert.equal(t.put('huge', state(2000, 9)), null, 'larger than every tier');
    assert.deepEqual(t.stats, { hostEntries: 1, hostBytes: 400, diskEntries: 0, diskBytes: 0 });
  });

  it('spills the least recently saved to disk within its cap, and reads them back intact', () => {
    const d = dir();
    const t = new KvTiers(1000, 2000, d);
    t.put('a', state(600, 1));
    t.put('b', state(600, 2));
    assert.equal(t.stats.diskEntries, 1, 'a went to disk');
    t.put('c', state(600, 3));
    t.put('d', state(600, 4));
    t.put('e', state(600, 5));
    assert.ok(t.stats.diskBytes <= 2000, `${t.stats.diskBytes} bytes on disk`);
    assert.throws(() => t.take('a'), TierMiss, 'the oldest file went to keep the disk within its cap');
    const c = t.take('c');
    assert.deepEqual([c.tier, c.state[599], c.state.length], ['disk', 3, 600]);
    assert.equal(readdirSync(d).length, t.stats.diskEntries, 'a taken file is deleted');
    t.clear();
    assert.deepEqual(t.stats, { hostEntries: 0, hostBytes: 0, diskEntries: 0, diskBytes: 0 });
    assert.deepEqual(readdirSync(d), []);
  });

  it('refuses a damaged, truncated or foreign file and forgets it', () => {
    const d = dir();
    const t = new KvTiers(0, 10_000, d);
    const files = () => readdirSync(d).map((f) => join(d, f));
    t.put('x', state(500, 7));
    const [fx] = files();
    const bytes = readFileSync(fx!);
    bytes[bytes.length - 3]! ^= 0xff;
    writeFileSync(fx!, bytes);
    assert.throws(() => t.take('x'), /checksum/);
    assert.ok(!existsSync(fx!), 'the damaged file is deleted');
    t.put('y', state(500, 8));
    const [fy] = files();
    writeFileSync(fy!, readFileSync(fy!).subarray(0, 200));
    assert.throws(() => t.take('y'), /header promises/);
    t.put('p', state(100, 1));
    t.put('q', state(100, 2));
    const [fp, fq] = ['p', 'q'].map((k) => files().find((f) => readFileSync(f).includes(Buffer.from(k === 'p' ? '\u0001'.repeat(100) : '\u0002'.repeat(100))))!);
    writeFileSync(fq!, readFileSync(fp!));
    assert.throws(() => t.take('q'), /another key/, 'another key\'s file under its name');
    assert.equal(t.take('p').state[0], 1);
  });

  it('empties its directory of an earlier run\'s files at start', () => {
    const d = dir();
    new KvTiers(0, 10_000, d).put('old', state(100, 1));
    writeFileSync(join(d, 'notes.txt'), 'not ours');
    const t = new KvTiers(0, 10_000, d);
    assert.deepEqual(readdirSync(d), ['notes.txt'], 'only its own files go');
    assert.throws(() => t.take('old'), TierMiss);
  });
});
