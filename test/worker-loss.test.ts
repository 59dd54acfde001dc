// Losing a worker: its pipeline goes down when the heartbeats stop, every request on it is
// rebuilt on a healthy pipeline by re-prefilling what it held and what it sampled, and the client's
// stream goes on from the next token. The worker, restarted, rejoins.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Vocab } from '@strata/ggml';
import { Pipeline, ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { matchedUntilTie, readStream, rebuiltReference } from './helpers/cluster.ts';

const model = ensureDefaultModel();
const N = 100;

describe('worker loss', () => {
  let cluster: LocalCluster;
  let vocab: Vocab;
  before(async () => {
    cluster = await LocalCluster.start({
      model, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024,
      coordinatorFlags: ['--worker-timeout-ms', '1500', '--rebalance-high', '0'], workerFlags: ['--heartbeat-ms', '250'],
    });
    vocab = Vocab.load(model);
  });
  after(async () => {
    vocab?.dispose();
    await cluster?.stop();
  });

  for (const [session, signal] of [['loss-session', 'SIGKILL'], ['', 'SIGKILL'], ['term-session', 'SIGTERM']] as const) {
    it(`${signal === 'SIGKILL' ? 'kill -9' : 'SIGTERM'} of a worker: a ${session ? 'session' : 'one-off request'} goes on from the next token on another pipeline`, async () => {
      let victim = '';
      let before = '';
      const prompt = session === 'loss-session' ? 'old mill, where' : session ? 'book bound with' : 'Every morning he';
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (session) headers['x-session-id'] = session;
      const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt, max_tokens: N, temperature: 0, stream: true, logprobs: 0 }) });
      const { tokens, times } = await readStream(r, async (n) => {
        if (n !== 15) return;
        // The last stage of the pipeline serving this request: the one holding the session, or
        // the one with a sequence that no session holds.
        const state = (await (await fetch(`${cluster.url}/admin/v1/cluster`)).json()) as { pipelines: { id: string; stages: { workerId: string }[]; seqsUsed?: number; sessions?: number }[] };
        const redis = new Redis(cluster.redisUrl);
        const home = session ? await redis.hget(`strata:session:${session}`, 'pipeline') : null;
        redis.disconnect();
        const busy = state.pipelines.filter((pl) => (session ? pl.id === home : (pl.seqsUsed ?? 0) > (pl.sessions ?? 0)));
        assert.equal(busy.length, 1, JSON.stringify(state.pipelines));
        victim = busy[0]!.stages.at(-1)!.workerId;
        before = busy[0]!.id;
        cluster.service(victim).proc.kill(signal);
      });
      assert.equal(tokens.length, N, 'every token arrived');
      const gaps = times.slice(1).map((t, i) => t - times[i]!);
      const k = gaps.indexOf(Math.max(...gaps)) + 1;
      const p = Pipeline.open({ model, threads: 2, ctxSize: 1024 });
      const expected = rebuiltReference(p, vocab.tokenize(prompt, true, true), N, k);
      p.dispose();
      const m = matchedUntilTie(tokens, expected.tokens.map((t) => vocab.tokenBytes(t).toString('utf8')), expected.margins);
      assert.ok(m.compared > k + 20, `the reference has a near tie at token ${m.compared}, too close to the rebuild at ${k}: pick another prompt`);
      assert.ok(m.equal, `the first ${m.compared} tokens (up to the reference's first near tie) are the reference's`);
      // A killed worker is noticed when its heartbeats stop; a stopping one says so in its last.
      if (signal === 'SIGKILL') assert.ok(Math.max(...gaps) > 1000, 'the kill hit the request: it waited for the heartbeat timeout');
      else {
        const redis = new Redis(cluster.redisUrl);
        const now = await redis.hgetall(`strata:session:${session}`);
        redis.disconnect();
        assert.notEqual(now.pipeline, before, 'the session was rebuilt on another pipeline');
        assert.ok(Number(now.epoch) >= 2, 'and claimed there with a higher epoch');
      }
      console.log(`${victim} got ${signal}: recovered after token ${k} in ${Math.max(...gaps).toFixed(0)} ms (heartbeat timeout 1500 ms)`);
      // The worker comes back and its pipeline rejoins.
      await cluster.restart(victim);
      let ready = 0;
      for (let t = 0; t < 150 && ready < 2; t++) {
        await sleep(200);
        ready = ((await (await fetch(`${cluster.url}/readyz`)).json()) as { pipelines?: number }).pipelines ?? 0;
      }
      assert.equal(ready, 2, 'both pipelines serve again');
    });
  }
});
