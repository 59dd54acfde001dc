// No single server: the cluster runs on a 3-node NATS cluster and a Redis primary with a replica
// behind 3 sentinels, and survives losing either for good under a steady load of streaming clients
// (test/helpers/chaos.ts judges every request): kill -9 the nats-server the leader coordinator is
// connected to, with the workers on it (every service reconnects to another node of the
// cluster), then kill -9 the Redis primary (the sentinels promote the replica; the coordinators
// follow them to it), then kill -9 the leader coordinator (its standby takes a term from the
// promoted replica, alone now). Lost requests must be 0.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { natsClientNames } from '@strata/local-servers';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { chaosRun, healthy, type Fault } from './helpers/chaos.ts';
import { clusterState } from './helpers/cluster.ts';

describe('no single server', () => {
  let cluster: LocalCluster;
  before(async () => {
    cluster = await LocalCluster.start({
      model: ensureDefaultModel(), coordinators: 2, pipelines: 2, workers: 2, port: 0, threads: 1, ctxSize: 1024, natsServers: 3, redisReplicas: 1,
      coordinatorFlags: ['--lease-ms', '1500', '--worker-timeout-ms', '1500', '--step-deadline-floor-ms', '5000', '--rebalance-high', '0'],
      workerFlags: ['--heartbeat-ms', '250'], gatewayFlags: ['--timeout-ms', '20000'],
    });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('kill -9 the NATS node the leader is on, the Redis primary, then the leader: nothing is lost', async () => {
    const nats = cluster.natsCluster!, redis = cluster.redisSet!;
    const faults: Fault[] = [
      // The node the leader is on (its events and sequence operations may be lost with it),
      // with as many workers as any such node.
      { name: 'kill -9 NATS node of leader', run: async () => {
        const leader = `strata-coordinator-${(await clusterState(cluster.natsUrl)).coordinatorId}`;
        const names = await Promise.all(nats.monitorPorts.map((p) => natsClientNames(p).catch((): string[] => [])));
        const score = (n: string[]) => (n.includes(leader) ? 100 : 0) + n.filter((c) => c.startsWith('strata-worker-')).length;
        const at = names.reduce((best, n, i) => (score(n) > score(names[best]!) ? i : best), 0);
        assert.ok(names[at]!.includes(leader), 'the leader is connected to a node');
        nats.servers[at]!.kill();
        // the node stays down: the rest of the run is on two nodes
        return async () => {};
      } },
      { name: 'kill -9 Redis primary', run: async () => {
        const port = await redis.primaryPort();
        const primary = [redis.primary, ...redis.replicas].find((s) => s.port === port)!;
        primary.kill();
        const until = Date.now() + 30_000;
        while ((await redis.primaryPort()) === port) {
          assert.ok(Date.now() < until, 'the sentinels promote the replica');
          await sleep(200);
        }
        return async () => {};
      } },
      // The promoted replica is alone now: a new leader must still get a term.
      { name: 'kill -9 coordinator leader', run: async () => {
        const leader = (await clusterState(cluster.natsUrl)).coordinatorId;
        cluster.service(leader).proc.kill('SIGKILL');
        return () => cluster.restart(leader);
      } },
    ];
    const rows = await chaosRun(cluster, faults, () => healthy(cluster, 2, 2), { sessionsMayRetry: true });
    for (const r of rows) {
      assert.equal(r.lost.length, 0, `${r.fault}: ${r.lost.join('; ')}`);
      assert.ok(r.sent > 0 && r.completed > 0, `${r.fault}: the load went on`);
    }
  });
});
