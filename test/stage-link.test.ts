// Same-host stage links in a real cluster: the two workers of a pipeline on one host hand steps
// forward and samples back over their Unix sockets, with the same answers as over NATS; a local
// process that does not present the cluster's token is refused and changes nothing.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect } from 'nats';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { FrameKind, FrameReader, writeFrame } from '../services/worker/src/link-frames.ts';
import { socketPath } from '../services/worker/src/stage-link.ts';
import { workerStats } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const PROMPTS = ['The old lighthouse keeper', 'Every morning the baker', 'A letter arrived on'];
const N = 24;

/** Greedy answers, one request at a time (so each step holds one sequence, batched alike on both clusters). */
async function answers(c: LocalCluster): Promise<string[]> {
  const out: string[] = [];
  for (const prompt of PROMPTS) {
    const r = await fetch(`${c.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt, max_tokens: N, temperature: 0, ignore_eos: true }),
    });
    assert.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
    assert.equal(body.usage.completion_tokens, N);
    out.push(body.choices[0]!.text);
  }
  return out;
}

/** `answers(c)`, and how many step samples (RingTokens) crossed `c`'s NATS meanwhile. */
async function answersAndNatsRings(c: LocalCluster): Promise<{ texts: string[]; natsRings: number }> {
  const nc = await connect({ servers: c.nats.url });
  try {
    let natsRings = 0;
    const sub = nc.subscribe('strata.v1.worker.ring.*', { callback: () => natsRings++ });
    await nc.flush();
    const texts = await answers(c);
    await nc.flush();
    sub.unsubscribe();
    return { texts, natsRings };
  } finally {
    await nc.close();
  }
}

/** The value of `flag` on a service's command line. */
function flagOf(c: LocalCluster, id: string, flag: string): string {
  const args = c.services.find((s) => s.id === id)!.args;
  const i = args.indexOf(flag);
  assert.ok(i >= 0, `${id} runs with ${flag}`);
  return args[i + 1]!;
}

describe('same-host stage links', () => {
  let linked: LocalCluster;
  let overNats: LocalCluster;
  before(async () => {
    // NATS without users, so that the test can count what crosses it.
    const o = { model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 512, natsAuth: false };
    linked = await LocalCluster.start(o);
    overNats = await LocalCluster.start({ ...o, stageLinks: false });
  });
  after(async () => {
    await linked?.stop();
    await overNats?.stop();
  });

  it('carry every step and the samples back, with the answers NATS gives', async () => {
    const [a, b] = [await answersAndNatsRings(linked), await answersAndNatsRings(overNats)];
    assert.deepEqual(a.texts, b.texts);
    const first = (await workerStats(linked.natsUrl, 'p0-s0')).counters!;
    const last = (await workerStats(linked.natsUrl, 'p0-s1')).counters!;
    assert.ok(last.steps >= BigInt(PROMPTS.length * N), `${last.steps} steps`);
    assert.equal(last.linkStepsIn, last.steps, 'every step reached the last stage over the link');
    assert.equal(first.linkStepsOut, last.steps);
    // Samples go back for the steps that others follow (not every step): every one over the link
    // but the first, which may cross NATS while the last stage's connection back is being made.
    assert.ok(last.linkRingsOut > 0n, 'samples went back over the link');
    assert.equal(first.linkRingsIn, last.linkRingsOut);
    assert.ok(a.natsRings <= 1, `${a.natsRings} samples crossed NATS beside ${last.linkRingsOut} over the link`);
    assert.ok(b.natsRings > 0, 'without links the samples cross NATS (what the count above would see)');
    const natsLast = (await workerStats(overNats.natsUrl, 'p0-s1')).counters!;
    assert.equal(natsLast.linkStepsIn, 0n);
    assert.ok(natsLast.steps > 0n);
  });

  it('refuse a local process without the token, and go on serving', async () => {
    const path = socketPath(flagOf(linked, 'p0-s1', '--stage-link-dir'), 'p0-s1');
    const talk = (hello: object) => new Promise<Buffer>((resolve, reject) => {
      const s = createConnection(path);
      const said: Buffer[] = [];
      s.on('connect', () => {
        writeFrame(s, FrameKind.hello, Buffer.from(JSON.stringify(hello)));
      });
      s.on('data', (d) => {
        said.push(d);
        s.end();
      });
      s.on('close', () => resolve(Buffer.concat(said)));
      s.on('error', reject);
    });
    const kinds = (b: Buffer) => new FrameReader(4096).push(b).map((f) => [f.kind, f.body.toString()]);
    assert.deepEqual(kinds(await talk({ v: 1, from: 'intruder', to: 'p0-s1', token: 'guessed-0123456789' })), [[FrameKind.refuse, 'a hello without the cluster\'s token']]);
    assert.deepEqual(kinds(await talk({ v: 1, from: 'intruder', to: 'p0-s1' })), [[FrameKind.refuse, 'a hello without the cluster\'s token']]);
    // The cluster's own token is welcomed (what a worker of this host presents).
    const token = readFileSync(flagOf(linked, 'p0-s1', '--transfer-token-file'), 'utf8').trim();
    assert.deepEqual(kinds(await talk({ v: 1, from: 'p0-s0', to: 'p0-s1', token })), [[FrameKind.welcome, '']]);
    assert.deepEqual(await answers(linked), await answers(overNats));
  });
});
