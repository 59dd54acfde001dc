// A real network between the processes: every service reaches NATS, and every coordinator Redis,
// through a fault proxy of its own (LocalCluster faultLinks), and partitions are made under the
// chaos suite's steady streaming load (test/helpers/chaos.ts judges every request):
// - a stage cut off from the cluster (its NATS link cut for 8 s, then healed) is survived like a
//   worker loss: its pipeline's requests are rebuilt on the other one, and it comes back;
// - the leader cut off from Redis (its Redis link cut) cannot renew its lease: a standby takes a
//   newer term and the workers fence the old leader out; healed, it returns as a standby.
// The takeover is read from the lease key while the old leader is still cut off: after the run,
// chaosRun judges in this process, which also carries every fault proxy, so links stall then
// (under CI's load for long enough that the lease may change hands again).
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { LeaderLease } from '../services/coordinator/src/lease.ts';
import { redisOptions } from '../services/coordinator/src/redis-url.ts';
import { chaosRun, healthy, type Fault } from './helpers/chaos.ts';
import { clusterState, sseEvents, workerStats, type CompletionChunk } from './helpers/cluster.ts';

describe('network partitions', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), coordinators: 2, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024, faultLinks: true,
      coordinatorFlags: ['--lease-ms', '1500', '--worker-timeout-ms', '1500', '--step-deadline-floor-ms', '5000', '--rebalance-high', '0'],
      workerFlags: ['--heartbeat-ms', '250'], gatewayFlags: ['--timeout-ms', '20000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('a stage cut off from the cluster, then the leader cut off from Redis: nothing is lost', async () => {
    let leaderBefore = '';
    const lease: { during?: { id: string; term: number } | null } = {};
    const faults: Fault[] = [
      { name: 'partition: stage p0-s1', run: async () => {
        const link = cluster.link('p0-s1', 'nats');
        link.cut();
        return async () => link.heal();
      } },
      { name: 'partition: leader | Redis', run: async () => {
        const before = await clusterState(cluster.natsUrl);
        leaderBefore = before.coordinatorId;
        const link = cluster.link(leaderBefore, 'redis');
        link.cut();
        return async () => {
          const redis = new Redis(redisOptions(cluster.redisUrl));
          try {
            // (no holder for a moment: the old lease expired and the standby's next tick takes it)
            for (let i = 0; i < 100; i++) {
              lease.during = await LeaderLease.holder(redis);
              if (lease.during && lease.during.id !== leaderBefore) break;
              await sleep(100);
            }
          } finally {
            redis.disconnect();
            link.heal();
          }
        };
      } },
    ];
    const rows = await chaosRun(cluster, faults, () => healthy(cluster, 2, 2), { sessionsMayRetry: true });
    for (const r of rows) {
      assert.equal(r.lost.length, 0, `${r.fault}: ${r.lost.join('; ')}`);
      assert.ok(r.sent > 0 && r.completed > 0, `${r.fault}: the load went on`);
    }
    assert.ok(lease.during, 'someone held the lease while the leader was cut off from Redis');
    assert.notEqual(lease.during.id, leaderBefore, 'the standby took over from the leader cut off from Redis');
  });
});

// The gateway's cancel of a request it sends again after its own reconnect can be lost: published
// while the coordinator's connection was also away, nobody heard it. The earlier attempt then
// decodes on (rebuilt after the coordinator's reconnect) and holds its session; the gateway's new
// attempt is refused session_busy until it ends. The gateway tells the cancel again on each such
// refusal, so the session's request goes on within moments rather than after the old attempt's
// last token (here ~6 s of slow steps, more than the gateway's 4 s timeout).
describe('a cancel lost while the gateway and the coordinator both reconnect', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), pipelines: 1, workers: 2, port: 0, threads: 1, ctxSize: 1024, faultLinks: true,
      coordinatorFlags: ['--worker-timeout-ms', '10000', '--rebalance-high', '0'],
      workerFlags: ['--test-step-delay-ms', '60'], gatewayFlags: ['--timeout-ms', '4000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it("the session's request goes on, whole, instead of waiting for the earlier attempt to end", async () => {
    const MAX = 100;
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'lost-cancel' },
      body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Once upon a time', max_tokens: MAX, temperature: 0, stream: true, logprobs: 0, ignore_eos: true }),
    });
    assert.equal(r.status, 200);
    const tokens: string[] = [];
    let finish: string | null = null, error = '';
    let cut = false;
    const gateway = cluster.link('gateway', 'nats'), coordinator = cluster.link('coordinator', 'nats');
    for await (const j of sseEvents<CompletionChunk>(r.body!)) {
      if (j.error) error = j.error.code;
      tokens.push(...(j.choices?.[0]?.logprobs?.tokens ?? []));
      finish = j.choices?.[0]?.finish_reason ?? finish;
      if (!cut && tokens.length >= 10) {
        cut = true;
        gateway.cut();
        coordinator.cut();
        await sleep(300);
        // The gateway is back first: its cancel and its new attempt reach no coordinator.
        gateway.heal();
        await sleep(1500);
        coordinator.heal();
      }
    }
    assert.equal(error, '', 'the request did not fail');
    assert.equal(finish, 'length');
    assert.equal(tokens.length, MAX, 'every token, once');
  });
});

// The coordinator's connection can drop with a request's last event still on its way (written to
// the old socket, never delivered): no later event shows the gap, and the coordinator, done with
// the request, has nothing in flight to rebuild. Its next announcement counts the reconnect, and
// the gateway starts its running requests over from what their clients have. Here the
// coordinator's link is slow (0.9 s each way) and is cut while the final event sits in it (with
// the emptying of the request's sequence, asked again until it succeeds).
describe("a request's last event lost while the coordinator reconnects", () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), pipelines: 1, workers: 2, port: 0, threads: 1, ctxSize: 1024, faultLinks: true,
      coordinatorFlags: ['--worker-timeout-ms', '15000', '--rebalance-high', '0'], gatewayFlags: ['--timeout-ms', '10000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('the request ends whole instead of timing out', async () => {
    const body = (prompt: string) => JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt, max_tokens: 1, temperature: 0, stream: true, logprobs: 0, ignore_eos: true });
    const warm = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body('Once upon a time') });
    assert.equal(warm.status, 200);
    await warm.text();
    // (Below the gateway's 2 s wait for an acceptance, which it would ask again for.)
    const LATENCY_MS = 900;
    const coordinator = cluster.link('coordinator', 'nats');
    coordinator.set({ latencyMs: LATENCY_MS });
    // One token: the coordinator hears the request one latency after it was sent, its step
    // reaches the stages a second one later, their result reaches it a third one later, and the
    // final event (the stream's first and last) reaches NATS a fourth one later: cut halfway
    // through that.
    const cut = (async () => {
      await sleep(LATENCY_MS * 3.5);
      coordinator.set({ latencyMs: 0 });
      coordinator.cut();
      await sleep(300);
      coordinator.heal();
    })();
    const r = await fetch(`${cluster.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body('The river ran') });
    assert.equal(r.status, 200);
    const tokens: string[] = [];
    let finish: string | null = null, error = '';
    for await (const j of sseEvents<CompletionChunk>(r.body!)) {
      if (j.error) error = j.error.code;
      tokens.push(...(j.choices?.[0]?.logprobs?.tokens ?? []));
      finish = j.choices?.[0]?.finish_reason ?? finish;
    }
    await cut;
    assert.equal(error, '', 'the request did not fail');
    assert.equal(finish, 'length');
    assert.equal(tokens.length, 1, 'its token, once');
    // The emptying of its sequence, sent with the final event, was lost too: the sequence is
    // out of use until the scheduler, asking again, gets it emptied.
    let stranded = 0, now = 0;
    for (const until = Date.now() + 20_000; Date.now() < until; await sleep(100)) {
      now = (await clusterState(cluster.natsUrl)).pipelines[0]!.strandedSeqs;
      stranded = Math.max(stranded, now);
      if (stranded > 0 && now === 0) break;
    }
    assert.ok(stranded > 0, 'the sequence whose emptying was lost counted as stranded');
    assert.equal(now, 0, 'and was emptied after all');
  });

  // With 1.2 s each way, the gateway's 2 s wait for an acceptance runs out twice: its third ask
  // reaches the coordinator after the request ended there. It is answered, not run again.
  it('a request asked again after it ended is not run twice', async () => {
    const coordinator = cluster.link('coordinator', 'nats');
    const steps = async () => Number((await workerStats(cluster.natsUrl, 'p0-s0')).counters!.steps);
    const before = await steps();
    coordinator.set({ latencyMs: 1200 });
    try {
      const r = await fetch(`${cluster.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'default-llama-8x256-s42-f16', prompt: 'Every morning he', max_tokens: 1, temperature: 0 }),
      });
      assert.equal(r.status, 200);
      // (the third ask's answer comes back too before the link is fast again)
      await sleep(3000);
    } finally {
      coordinator.set({ latencyMs: 0 });
    }
    assert.equal((await steps()) - before, 1, 'one prefill step: the request ran once');
  });
});
