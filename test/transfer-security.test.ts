// KvTransfer between workers over mutual TLS with a shared token: migrations work, and a peer
// without the cluster's certificate, with another CA's, or without the token is refused.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Metadata, credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { ensureDefaultModel } from '@strata/model';
import { KvTransfer, grpcClient, type PushRequest, type PushResponse } from '@strata/wire';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { clusterState, readStream } from './helpers/cluster.ts';

/** A CA and a certificate it signs for 127.0.0.1 (server and client use), made with openssl. */
function pki(dir: string, name: string): { ca: string; cert: string; key: string } {
  const f = (x: string) => join(dir, `${name}-${x}`);
  const run = (...args: string[]) => execFileSync('openssl', args, { stdio: 'pipe' });
  run('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', `/CN=${name}-ca`);
  run('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('key.pem'), '-out', f('csr.pem'), '-subj', `/CN=${name}-worker`);
  writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  run('x509', '-req', '-in', f('csr.pem'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('cert.pem'), '-days', '2', '-extfile', f('ext.cnf'));
  return { ca: f('ca.pem'), cert: f('cert.pem'), key: f('key.pem') };
}

describe('KvTransfer over mutual TLS with a token', () => {
  let cluster: LocalCluster;
  let dir: string;
  let good: ReturnType<typeof pki>, rogue: ReturnType<typeof pki>;
  const TOKEN = 'transfer-token-0123456789abcdef';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'strata-pki-'));
    good = pki(dir, 'cluster');
    rogue = pki(dir, 'rogue');
    writeFileSync(join(dir, 'token'), `${TOKEN}\n`);
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 512,
      workerFlags: ['--transfer-token-file', join(dir, 'token'), '--grpc-tls-cert', good.cert, '--grpc-tls-key', good.key, '--grpc-tls-ca', good.ca, '--grpc-tls-mutual'],
    });
  });
  after(async () => {
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a session migrates over TLS with the token', async () => {
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'tls-1' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'The river ran', max_tokens: 40, temperature: 0, stream: true, logprobs: 0 }),
    });
    let state = '';
    const { tokens } = await readStream(r, async (n) => {
      if (n !== 10) return;
      const m = await fetch(`${cluster.url}/admin/v1/sessions/tls-1/migrate`, { method: 'POST', body: JSON.stringify({ wait: true }) });
      state = ((await m.json()) as { state: string; error: string | null }).state;
    });
    assert.equal(state, 'done');
    assert.equal(tokens.length, 40);
  });

  it('refuses a peer without TLS, without a client certificate, with another CA\'s, or without the token', async () => {
    const st = await clusterState(cluster.natsUrl);
    const address = st.workers.find((w) => w.stage!.workerId === 'p1-s1')!.stage!.grpcAddress;
    const Client = grpcClient(KvTransfer);
    const push = (creds: ChannelCredentials, token?: string) => new Promise<PushResponse>((resolve, reject) => {
      const client = new Client(address, creds) as unknown as { push(md: Metadata, o: { deadline: number }, cb: (e: Error | null, r?: PushResponse) => void): { write(m: PushRequest): boolean; end(): void }; close(): void };
      const md = new Metadata();
      if (token) md.set('authorization', `Bearer ${token}`);
      const call = client.push(md, { deadline: Date.now() + 5000 }, (e, res) => {
        client.close();
        if (e) reject(e);
        else resolve(res!);
      });
      call.write({ $typeName: 'strata.v1.PushRequest', data: new Uint8Array(4), crc32: 0, endOfBlob: false });
      call.end();
    });
    const read = (p: string) => readFileSync(p);
    await assert.rejects(push(credentials.createInsecure(), TOKEN), /UNAVAILABLE|14/, 'plain TCP');
    await assert.rejects(push(credentials.createSsl(read(good.ca)), TOKEN), /UNAVAILABLE|14|certificate/i, 'TLS without a client certificate');
    await assert.rejects(push(credentials.createSsl(read(good.ca), read(rogue.key), read(rogue.cert)), TOKEN), /UNAVAILABLE|14|certificate/i, 'a certificate of another CA');
    await assert.rejects(push(credentials.createSsl(read(good.ca), read(good.key), read(good.cert))), /UNAUTHENTICATED|16/, 'no token');
    await assert.rejects(push(credentials.createSsl(read(good.ca), read(good.key), read(good.cert)), 'another-clusters-token-0123'), /UNAUTHENTICATED|16/, 'another cluster\'s token');
    const ok = await push(credentials.createSsl(read(good.ca), read(good.key), read(good.cert)), TOKEN);
    assert.equal(ok.error?.code, 'bad_chunk', 'with both, the push reaches the checks of its content');
  });
});
