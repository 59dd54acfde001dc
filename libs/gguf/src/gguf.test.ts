// Round trips and refusals of the GGUF reader/writer (no native code).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { GgufError, GgufFile, GgufValueType, kvBool, kvF32, kvStr, kvU32, tensorBytes, writeGguf } from './mod.ts';

const dir = mkdtempSync(join(tmpdir(), 'strata-gguf-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function sample(path: string): Uint8Array[] {
  const tensors = [
    { name: 'a', type: 0, ne: [4, 3] },
    { name: 'b', type: 1, ne: [8] },
    { name: 'c', type: 8, ne: [64, 2] },
  ];
  const datas = tensors.map((t, i) => Uint8Array.from({ length: tensorBytes(t.type, t.ne) }, (_, j) => (i * 31 + j) & 0xff));
  writeGguf(path, [
    kvStr('general.architecture', 'llama'),
    kvU32('llama.block_count', 2),
    kvF32('x.f', 1.5),
    kvBool('x.b', true),
    { key: 'x.u64', type: GgufValueType.UINT64, value: 123456789012n },
    { key: 'x.arr', type: GgufValueType.ARRAY, arrayType: GgufValueType.INT32, value: Int32Array.of(1, -2, 3) },
    { key: 'x.strs', type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value: ['a', 'é', ''] },
  ], tensors, (_t, i) => datas[i]!);
  return datas;
}

describe('gguf', () => {
  it('reads back what it wrote: metadata of every kind and tensor bytes', () => {
    const path = join(dir, 'rt.gguf');
    const datas = sample(path);
    const f = GgufFile.open(path);
    try {
      assert.equal(f.kv('general.architecture')?.value, 'llama');
      assert.equal(f.kv('llama.block_count')?.value, 2);
      assert.equal(f.kv('x.f')?.value, 1.5);
      assert.equal(f.kv('x.b')?.value, true);
      assert.equal(f.kv('x.u64')?.value, 123456789012n);
      assert.deepEqual(Array.from(f.kv('x.arr')!.value as Int32Array), [1, -2, 3]);
      assert.deepEqual(f.kv('x.strs')?.value, ['a', 'é', '']);
      assert.equal(f.header.tensors.length, 3);
      const c = f.tensor('c')!;
      assert.equal(c.size, 2 * 34 * 2);
      assert.equal(c.offset % f.header.alignment, 0);
      for (const [i, name] of ['a', 'b', 'c'].entries()) assert.deepEqual(f.readTensor(f.tensor(name)!), datas[i]);
      const part = new Uint8Array(5);
      f.readTensorBytes(c, part, 10);
      assert.deepEqual(part, datas[2]!.subarray(10, 15));
    } finally {
      f.close();
      f.close(); // idempotent
    }
  });

  it('refuses a missing file, a non-GGUF file and a truncated one, naming the problem', () => {
    assert.throws(() => GgufFile.open(join(dir, 'nope.gguf')), (e: unknown) => e instanceof GgufError && e.code === 'not_found');
    const junk = join(dir, 'junk.gguf');
    writeFileSync(junk, 'this is not a model at all, just text');
    assert.throws(() => GgufFile.open(junk), (e: unknown) => e instanceof GgufError && e.code === 'bad_magic' && /not a GGUF/.test(e.message));
    const path = join(dir, 'trunc.gguf');
    sample(path);
    const size = readFileSync(path).length;
    truncateSync(path, size - 40);
    assert.throws(() => GgufFile.open(path), (e: unknown) => e instanceof GgufError && e.code === 'truncated' && /tensor c/.test(e.message));
    truncateSync(path, 100);
    assert.throws(() => GgufFile.open(path), (e: unknown) => e instanceof GgufError && e.code === 'truncated');
  });

  it('refuses corrupt headers: bad version, absurd counts, unknown tensor types', () => {
    const path = join(dir, 'bad.gguf');
    sample(path);
    const good = readFileSync(path);
    const version = Buffer.from(good);
    version.writeUInt32LE(99, 4);
    writeFileSync(path, version);
    assert.throws(() => GgufFile.open(path), (e: unknown) => e instanceof GgufError && e.code === 'unsupported');
    const counts = Buffer.from(good);
    counts.writeBigUInt64LE(1n << 40n, 8);
    writeFileSync(path, counts);
    assert.throws(() => GgufFile.open(path), (e: unknown) => e instanceof GgufError && e.code === 'malformed');
  });

  it('reports every byte range it reads', () => {
    const path = join(dir, 'obs.gguf');
    sample(path);
    const ranges: [number, number][] = [];
    const f = GgufFile.open(path, { observe: (o, n) => ranges.push([o, n]) });
    const headerReads = ranges.length;
    f.readTensor(f.tensor('b')!);
    assert.deepEqual(ranges[headerReads], [f.tensorFileOffset(f.tensor('b')!), 16]);
    f.close();
  });
});
