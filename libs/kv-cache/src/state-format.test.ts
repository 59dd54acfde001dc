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
    const v3 = b.slice();
    new DataView(v3.buffer).setUint16(4, 3, true);
    assert.throws(() => decodeState(v3), refused('unsupported_version', /version 3/));
  });

  // version 2: layers 2 and 4 follow set 0 (positions 7, 8, 9), layer 3 set 1 (position 9 only),
  // as a stage whose windowed layers keep fewer cells writes it
  const sets = { sets: [Int32Array.of(7, 8, 9), Int32Array.of(9)], layerSet: Uint8Array.of(0, 1, 0) };
  const blob2 = () => encodeState(header, sets, (l, k, v) => {
    k.fill(l);
    v.fill(l + 100);
  });

  it('round-trips several cell sets, each layer with its own set\'s rows (version 2)', () => {
    const b = blob2();
    assert.equal(new DataView(b.buffer).getUint16(4, true), 2);
    assert.ok(b.length < blob().length, 'layer 3 holds one row, not three');
    const d = decodeState(b);
    assert.deepEqual(d.header, header);
    assert.deepEqual(d.sets.map((x) => Array.from(x)), [[7, 8, 9], [9]]);
    assert.deepEqual(Array.from(d.layerSet), [0, 1, 0]);
    assert.deepEqual(Array.from(d.pos), [7, 8, 9]);
    assert.deepEqual(d.k.map((x) => x.length), [48, 16, 48]);
    assert.ok(d.v[1]!.every((x) => x === 103));
    // a version 1 blob decodes with one set every layer follows
    assert.deepEqual(Array.from(decodeState(blob()).layerSet), [0, 0, 0]);
  });

  it('refuses damage to the cell sets of a version 2 blob', () => {
    const b = blob2();
    const at = 80; // the set section follows the 80-byte header
    const with16 = (o: number, x: number) => { const c = b.slice(); new DataView(c.buffer).setUint16(o, x, true); return c; };
    assert.throws(() => decodeState(with16(at, 0)), refused('checksum', /claims 0 cell sets/));
    assert.throws(() => decodeState(with16(at, 9)), refused('checksum', /claims 9 cell sets/));
    const badLayer = b.slice();
    badLayer[at + 3] = 5;
    assert.throws(() => decodeState(badLayer), refused('checksum', /names a cell set/));
    const flipped = b.slice();
    flipped[at + 10]! ^= 1;
    assert.throws(() => decodeState(flipped), refused('checksum', /cell checksum/));
    const bigger = b.slice();
    new DataView(bigger.buffer).setUint32(at + 5, 1000, true);
    assert.throws(() => decodeState(bigger), refused('truncated', /promises/));
    assert.throws(() => decodeState(b.subarray(0, at + 3)), refused('truncated', /cell sets/));
  });
});
