import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { FenceGuard, FenceSigner, FenceVerifier } from './fence-proof.ts';

const pair = () => {
  const p = generateKeyPairSync('ed25519');
  return { signer: FenceSigner.fromPem(p.privateKey.export({ type: 'pkcs8', format: 'pem' })), verifier: FenceVerifier.fromPem(p.publicKey.export({ type: 'spki', format: 'pem' })) };
};

test('a fence is taken only with its signature; older ones pass (the stage drops them); without a key every one does', () => {
  const { signer, verifier } = pair();
  const other = pair();
  const g = new FenceGuard(verifier);
  assert.match(g.refuse(0n, 0n, new Uint8Array(0))!, /unfenced/);
  assert.equal(g.refuse(5n, 10n, signer.fence(5n, 10n)), null);
  assert.match(g.refuse(999_999n, 1n, new Uint8Array(64))!, /without the coordinators' signature/);
  assert.match(g.refuse(5n, 11n, signer.fence(5n, 10n))!, /signature/, 'a proof of another fence');
  assert.match(g.refuse(6n, 0n, other.signer.fence(6n, 0n))!, /signature/, 'another cluster\'s key');
  assert.equal(g.refuse(5n, 10n, new Uint8Array(0)), null, 'the fence proven already');
  assert.equal(g.refuse(5n, 0n, new Uint8Array(0)), null, 'an older one');
  assert.equal(g.refuse(6n, 1n, signer.fence(6n, 1n)), null, 'a new term, signed');
  assert.equal(new FenceGuard(null).refuse(999_999n, 1n, new Uint8Array(0)), null);
});

test('leader proofs bind the id to the term; keys of another type are refused by name', () => {
  const { signer, verifier } = pair();
  const p = signer.leader('coordinator', 7n);
  assert.ok(verifier.leader('coordinator', 7n, p));
  assert.ok(!verifier.leader('intruder', 7n, p));
  assert.ok(!verifier.leader('coordinator', 8n, p));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  assert.throws(() => FenceSigner.fromPem(rsa.privateKey.export({ type: 'pkcs8', format: 'pem' })), /not Ed25519/);
  assert.throws(() => FenceVerifier.fromPem('not a key'), /neither a public key nor a certificate/);
});
