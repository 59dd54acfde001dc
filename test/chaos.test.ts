// The chaos suite: under a steady load of streaming clients, one fault at a time (kill -9 a
// worker, kill -9 the coordinator leader, restart NATS, restart Redis). Every request must either
// complete with exactly its single-process reference's tokens or, only where the client asked for
// nothing durable (no session), fail with a clear retriable error (test/helpers/chaos.ts). The
// table printed at the end: requests sent, completed, failed (with reasons), lost (must be 0), and
// recovery time per fault.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { chaosRun, healthy, type Fault } from './helpers/chaos.ts';
import { clusterState } from './helpers/cluster.ts';

describe('chaos under steady load', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), coordinators: 2, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024,
      coordinatorFlags: ['--lease-ms', '1500', '--worker-timeout-ms', '1500', '--step-deadline-floor-ms', '5000', '--rebalance-high', '0'],
      workerFlags: ['--heartbeat-ms', '250'], gatewayFlags: ['--timeout-ms', '20000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('kill -9 a worker, kill -9 the leader, restart NATS, restart Redis: nothing is lost', async () => {
    const faults: Fault[] = [
      { name: 'kill -9 worker p0-s1', run: async () => {
        cluster.service('p0-s1').proc.kill('SIGKILL');
        return () => cluster.restart('p0-s1');
      } },
      { name: 'kill -9 coordinator leader', run: async () => {
        const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
        cluster.service(leader).proc.kill('SIGKILL');
        return () => cluster.restart(leader);
      } },
      { name: 'restart NATS', run: async () => {
        await cluster.nats.restart();
        return async () => {};
      } },
      { name: 'restart Redis', run: async () => {
        await cluster.redis.restart();
        return async () => {};
      } },
    ];
    const rows = await chaosRun(cluster, faults, () => healthy(cluster, 2, 2));
    for (const r of rows) {
      assert.equal(r.lost.length, 0, `${r.fault}: ${r.lost.join('; ')}`);
      assert.ok(r.sent > 0 && r.completed > 0, `${r.fault}: the load went on`);
    }
  });
});
