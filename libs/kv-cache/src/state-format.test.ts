// The KV state format: round trip, and every kind of damage refused with its own error.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KvStateError, decodeState, encodeState, type StateHeader } from './mod.ts';

const header: StateHeader = {
  fingerprint: '0123456789abcdef0123456789abcdef', l0: 2, l1: 5, nEmbdKv: 8, typeK: 1, typeV: 1,
  rowBytesK: 16, rowBytesV: 16, nCells: 3, p0: -1, p1: -1, rotK: 0, rotV: 64,
};
const blob = () => encodeState(header, Int32Array.of(7, 8, 9), (l, k, v) => {
  k.fill(l);
  v.fill(l + 100);
});
const refused = (code: string, re: RegExp) => (e: unknown) => e instanceof KvStateError && e.code === code && re.test(e.message);

describe('KV state format', () => {
  it('round-trips header, positions and rows', () => {
    const d = decodeState(blob());
    assert.deepEqual(d.header, header);
    assert.deepEqual(Array.from(d.pos), [7, 8, 9]);
    assert.equal(d.k.length, 3);
    assert.ok(d.k[1]!.every((b) => b === 3));
    assert.ok(d.v[2]!.every((b) => b === 104));
  });

  it('decodes a Buffer at any offset of a larger buffer (as a network stack hands it over)', () => {
    const b = blob();
    const big = Buffer.alloc(b.length + 3);
    big.set(b, 3);
    const d = decodeState(big.subarray(3));
    assert.deepEqual(Array.from(d.pos), [7, 8, 9]);
    assert.ok(d.v[0]!.every((x) => x === 102));
  });

  it('refuses damage anywhere, naming where', () => {
    const b = blob();
    const flip = (at: number) => { const c = b.slice(); c[at]! ^= 0x40; return c; };
    assert.throws(() => decodeState(flip(0)), refused('bad_magic', /magic/));
    assert.throws(() => decodeState(flip(12)), refused('checksum', /header/));
    assert.throws(() => decodeState(flip(80)), refused('checksum', /cell/));
    assert.throws(() => decodeState(flip(b.length - 5)), refused('checksum', /V rows of layer 4/));
    assert.throws(() => decodeState(flip(b.length - 60)), refused('checksum', /K rows of layer 4/));
    assert.throws(() => decodeState(b.subarray(0, b.length - 1)), refused('truncated', /promises/));
    assert.throws(() => decodeState(b.subarray(0, 10)), refused('truncated', /shorter than its header/));
    const longer = new Uint8Array(b.length + 3);
    longer.set(b);
    assert.throws(() => decodeState(longer), refused('truncated', /past its end/));
    const v2 = b.slice();
    new DataView(v2.buffer).setUint16(4, 2, true);
    assert.throws(() => decodeState(v2), refused('unsupported_version', /version 2/));
  });
});
