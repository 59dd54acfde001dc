// Bad models and bad requests get a clear error naming the problem, never a crash.
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { GgufError, GgufFile, writeGguf, type GgufKv, type GgufValue, type TensorSpec } from '@strata/gguf';
import { KvCacheFullError, ModelError, Pipeline, Stage } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const dir = mkdtempSync(join(tmpdir(), 'strata-bad-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const good = synthModel({ arch: 'llama', nLayer: 2, nEmbd: 64, nHead: 2, nHeadKv: 2, nFf: 128, nCtxTrain: 256, seed: 21 });

/** Rewrites `good` with metadata or tensors changed. */
function variant(name: string, edit: { kv?: (key: string) => GgufValue | undefined; ne?: (t: TensorSpec) => number[] | undefined }): string {
  const src = GgufFile.open(good);
  const out = join(dir, name);
  const kv: GgufKv[] = [...src.header.kv.values()].map((e) => ({ ...e, value: edit.kv?.(e.key) ?? e.value }));
  const specs = src.header.tensors.map((t) => ({ name: t.name, type: t.type, ne: edit.ne?.(t) ?? t.ne }));
  writeGguf(out, kv, specs, (spec, i) => {
    const info = src.header.tensors[i]!;
    const data = src.readTensor(info);
    if (spec.ne.join() === info.ne.join()) return data;
    const want = spec.ne.reduce((a, b) => a * b, 1) * (data.length / info.ne.reduce((a, b) => a * b, 1));
    return new Uint8Array(want);
  });
  src.close();
  return out;
}

describe('bad input', () => {
  it('a missing model file', () => {
    assert.throws(() => Stage.open({ model: join(dir, 'missing.gguf') }),
      (e: unknown) => e instanceof GgufError && e.code === 'not_found' && /missing\.gguf: no such file/.test(e.message));
  });

  it('a truncated model file', () => {
    const t = join(dir, 'trunc.gguf');
    copyFileSync(good, t);
    truncateSync(t, Math.floor(readFileSync(t).length / 2));
    assert.throws(() => Stage.open({ model: t }), (e: unknown) => e instanceof GgufError && e.code === 'truncated' && /ends at byte \d+ but the file has \d+/.test(e.message));
  });

  it('a file that is not a GGUF at all', () => {
    const t = join(dir, 'text.gguf');
    writeFileSync(t, 'GGUF? no: just some words that pretend to be a model file.');
    assert.throws(() => Stage.open({ model: t }), (e: unknown) => e instanceof GgufError);
  });

  it('an unknown architecture', () => {
    const t = variant('arch.gguf', { kv: (k) => (k === 'general.architecture' ? 'gpt9' : undefined) });
    assert.throws(() => Stage.open({ model: t }),
      (e: unknown) => e instanceof ModelError && e.code === 'unknown_architecture' && /'gpt9' is not supported/.test(e.message));
  });

  it('a tensor of the wrong shape, named', () => {
    const t = variant('shape.gguf', { ne: (s) => (s.name === 'blk.1.ffn_up.weight' ? [64, 96] : undefined) });
    assert.throws(() => Stage.open({ model: t }),
      (e: unknown) => e instanceof ModelError && e.code === 'bad_tensor_shape' && e.tensor === 'blk.1.ffn_up.weight' && /\[64, 96\], expected \[64, 128\]/.test(e.message));
  });

  it('a split that does not cover the layers', () => {
    assert.throws(() => Pipeline.open({ model: good, split: [{ l0: 0, l1: 1 }] }),
      (e: unknown) => e instanceof ModelError && e.code === 'bad_split' && /covers layers 0:1 but the model has 2/.test(e.message));
    assert.throws(() => Stage.open({ model: good, range: { l0: 1, l1: 5 } }),
      (e: unknown) => e instanceof ModelError && e.code === 'bad_split');
  });

  it('tokens outside the vocabulary, mismatched batches, and a full cache', () => {
    const s = Stage.open({ model: good, ctxSize: 8, threads: 1 });
    try {
      assert.throws(() => s.eval({ tokens: Int32Array.of(1 << 30), pos: Int32Array.of(0), seq: Int32Array.of(0) }),
        (e: unknown) => e instanceof ModelError && /outside the vocabulary/.test(e.message));
      assert.throws(() => s.eval({ tokens: Int32Array.of(1, 2), pos: Int32Array.of(0, 1), seq: Int32Array.of(0) }),
        (e: unknown) => e instanceof ModelError && /seq ids/.test(e.message));
      s.eval({ tokens: Int32Array.of(1, 2, 3, 4, 5, 6), pos: Int32Array.of(0, 1, 2, 3, 4, 5), seq: new Int32Array(6) });
      assert.throws(() => s.eval({ tokens: Int32Array.of(1), pos: Int32Array.of(9), seq: Int32Array.of(0) }),
        (e: unknown) => e instanceof ModelError && /holds positions up to 5, so the batch must start at 6, not 9/.test(e.message));
      assert.throws(() => s.eval({ tokens: Int32Array.of(1), pos: Int32Array.of(-1), seq: Int32Array.of(1) }),
        (e: unknown) => e instanceof ModelError && /negative/.test(e.message));
      assert.throws(() => s.eval({ tokens: Int32Array.of(1), pos: Int32Array.of(0), seq: Int32Array.of(999) }),
        (e: unknown) => e instanceof ModelError && /seq id 999/.test(e.message));
      assert.throws(() => s.eval({ tokens: Int32Array.of(1, 2, 3), pos: Int32Array.of(6, 7, 8), seq: new Int32Array(3) }),
        (e: unknown) => e instanceof KvCacheFullError && e.needed === 3 && e.free === 2);
      assert.equal(s.cache.cells.seqPosMax(0), 5);
      assert.equal(s.cache.cells.used, 6, 'a refused batch takes no cells');
    } finally {
      s.dispose();
    }
  });
});
