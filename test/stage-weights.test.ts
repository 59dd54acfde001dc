// A stage holding layers [l0, l1) reads only the bytes of its own tensors from the GGUF, or, with
// the file mapped (the default on a CPU), reads nothing and spans only its own tensors' bytes.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { GgufFile } from '@strata/gguf';
import { Backend, getTensor } from '@strata/ggml';
import { StageWeights, readHParams, stageTensorList } from '@strata/model';
import { synthModel } from './helpers/models.ts';

const path = synthModel({ arch: 'qwen2', nLayer: 6, nEmbd: 128, nHead: 4, nHeadKv: 2, nFf: 256, nCtxTrain: 512, seed: 11 });

describe('stage weights', () => {
  for (const [l0, l1] of [[0, 2], [2, 4], [4, 6], [1, 5]] as const) {
    it(`layers ${l0}:${l1} mapped: nothing read, a buffer over exactly their tensors' bytes holding the file's values`, () => {
      const reads: [number, number][] = [];
      const file = GgufFile.open(path, { observe: (o, n) => reads.push([o, n]) });
      const headerReads = reads.length;
      const hp = readHParams(file);
      const backend = Backend.open({ threads: 1 });
      const w = StageWeights.load(file, hp, { l0, l1 }, backend);
      try {
        assert.equal(reads.length, headerReads, 'no tensor bytes read: the f16 weights are the file\'s pages');
        const wanted = stageTensorList(hp, { l0, l1 }).map((x) => file.tensor(x.name)).filter((x) => x !== undefined);
        const first = Math.min(...wanted.map((t) => file.tensorFileOffset(t)));
        const last = Math.max(...wanted.map((t) => file.tensorFileOffset(t) + t.size));
        assert.equal(w.bytes, last - first, 'one mapped buffer from the first tensor byte to the last');
        assert.deepEqual(w.memoryByBufferType(), { CPU_Mapped: last - first });
        const inFile = file.tensor(`blk.${l0}.attn_q.weight`)!;
        const bytes = new Uint8Array(inFile.size);
        file.readTensorBytes(inFile, bytes);
        const held = new Uint8Array(inFile.size);
        getTensor(w.layers[0]!.wq!, held);
        assert.deepEqual(held, bytes, 'the weight holds the file\'s bytes');
      } finally {
        w.dispose();
        w.dispose();
        backend.dispose();
        file.close();
      }
    });

    it(`layers ${l0}:${l1} read: exactly their tensors' bytes and nothing of the others`, () => {
      const reads: [number, number][] = [];
      const file = GgufFile.open(path, { observe: (o, n) => reads.push([o, n]) });
      const headerEnd = file.header.dataOffset;
      const headerReads = reads.length;
      const hp = readHParams(file);
      const backend = Backend.open({ threads: 1 });
      const w = StageWeights.load(file, hp, { l0, l1 }, backend, { mmap: false });
      try {
        const wanted = stageTensorList(hp, { l0, l1 }).map((x) => file.tensor(x.name)).filter((x) => x !== undefined);
        const extents = wanted.map((t) => [file.tensorFileOffset(t), file.tensorFileOffset(t) + t.size] as const);
        const expectBytes = wanted.reduce((n, t) => n + t.size, 0);
        assert.equal(w.bytesRead, expectBytes);
        let dataBytes = 0;
        for (const [o, n] of reads.slice(headerReads)) {
          assert.ok(extents.some(([a, b]) => o >= a && o + n <= b), `read [${o}, ${o + n}) lies outside this stage's tensors`);
          dataBytes += n;
        }
        assert.equal(dataBytes, expectBytes);
        for (const [o] of reads.slice(0, headerReads)) assert.ok(o < headerEnd, 'header reads stay in the header');
        const names = wanted.map((t) => t.name);
        assert.equal(names.includes('token_embd.weight'), l0 === 0);
        assert.equal(names.includes('output.weight'), l1 === 6);
        assert.ok(names.every((n) => !n.startsWith('blk.') || (Number(n.split('.')[1]) >= l0 && Number(n.split('.')[1]) < l1)));
        const total = file.header.tensors.reduce((n, t) => n + t.size, 0);
        assert.ok(dataBytes < total, 'a partial stage reads less than the whole model');
      } finally {
        w.dispose();
        w.dispose();
        backend.dispose();
        file.close();
      }
    });
  }
});
