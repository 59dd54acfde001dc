import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TextStream } from './text-stream.ts';

const enc = (s: string) => new TextEncoder().encode(s);

test('multi-byte characters split across tokens come out whole', () => {
  const t = new TextStream([]);
  const bytes = enc('é✓');
  assert.equal(t.push(bytes.subarray(0, 1)), '');
  assert.equal(t.push(bytes.subarray(1, 3)), 'é');
  assert.equal(t.push(bytes.subarray(3)), '✓');
  assert.equal(t.end(), '');
});

test('a stop string split over tokens cuts the text before it and nothing after', () => {
  const t = new TextStream(['END', '\n\n']);
  assert.equal(t.push(enc('hello E')), 'hello ');
  assert.equal(t.push(enc('N')), '');
  assert.equal(t.push(enc('X')), 'ENX', 'not a stop after all');
  assert.equal(t.push(enc(' fine\n')), ' fine');
  assert.equal(t.push(enc('\nmore')), '');
  assert.equal(t.stopped, true);
  assert.equal(t.push(enc('ignored')), '');
  assert.equal(t.end(), '');
});

test('held-back text comes out at the end', () => {
  const t = new TextStream(['stop']);
  assert.equal(t.push(enc('a st')), 'a ');
  assert.equal(t.end(), 'st');
});
