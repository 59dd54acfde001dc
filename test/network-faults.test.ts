// A real network between the processes: every service reaches NATS, and every coordinator Redis,
// through a fault proxy of its own (LocalCluster faultLinks), and partitions are made under the
// chaos suite's steady streaming load (test/helpers/chaos.ts judges every request):
// - a stage cut off from the cluster (its NATS link cut for 8 s, then healed) is survived like a
//   worker loss: its pipeline's requests are rebuilt on the other one, and it comes back;
// - the leader cut off from Redis (its Redis link cut) cannot renew its lease: a standby takes a
//   newer term and the workers fence the old leader out; healed, it returns as a standby.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { chaosRun, healthy, type Fault } from './helpers/chaos.ts';
import { clusterState } from './helpers/cluster.ts';

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
        return async () => link.heal();
      } },
    ];
    const rows = await chaosRun(cluster, faults, () => healthy(cluster, 2, 2), { sessionsMayRetry: true });
    for (const r of rows) {
      assert.equal(r.lost.length, 0, `${r.fault}: ${r.lost.join('; ')}`);
      assert.ok(r.sent > 0 && r.completed > 0, `${r.fault}: the load went on`);
    }
    assert.notEqual((await clusterState(cluster.natsUrl)).coordinatorId, leaderBefore, 'the standby took over from the leader cut off from Redis');
  });
});
