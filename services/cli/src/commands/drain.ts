// strata drain <worker> [--force]; strata undrain <worker>: taking a worker's pipeline out of
// service so the worker can stop, and putting it back, over NATS to the coordinator.
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainReply } from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { natsUrlOf, withCluster, type ClusterClient } from '../cluster-client.ts';
import { UsageError } from '../errors.ts';
import { Progress } from '../format.ts';
import { renderMigrations } from './status.ts';

/**
 * Shows a drain's progress while it runs: the sessions of the worker's pipeline when it began,
 * and the ledger's migrations of this drain (reason `drain <worker>`, not in the ledger before),
 * asked for four times a second. Best effort: what cannot be read is left out. Returns the
 * function that stops it.
 */
async function watchDrain(cl: ClusterClient, worker: string): Promise<(reply: DrainReply | null) => Promise<void>> {
  let total = 0;
  let before = new Set<string>();
  try {
    const [c, s, m] = await Promise.all([cl.cluster(), cl.sessions(10_000), cl.migrations(1000)]);
    const pipeline = c.workers.find((w) => w.stage?.workerId === worker)?.pipelineId;
    total = s.sessions.filter((x) => pipeline && x.pipelineId === pipeline).length;
    before = new Set(m.migrations.map((x) => x.id));
  } catch {
    // a coordinator without the sessions list: the ledger alone tells the count
  }
  const bar = new Progress({ label: `draining ${worker}`, total, unit: 'session(s) moved' });
  bar.update(0);
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      await sleep(250);
      try {
        const mine = (await cl.migrations(Math.max(50, total * 2))).migrations.filter((x) => !before.has(x.id) && x.reason === `drain ${worker}`);
        const done = mine.filter((x) => x.state === 'done').length, failed = mine.filter((x) => x.state === 'aborted').length;
        bar.total = Math.max(total, mine.length);
        if (!stopped) bar.update(done, [`${mine.length - done - failed} moving`, failed > 0 ? `${failed} failed` : ''].filter(Boolean).join(', '));
      } catch {
        // the next poll may answer
      }
    }
  })();
  return async (reply) => {
    stopped = true;
    await loop;
    if (!reply || reply.error) return bar.finish('failed');
    // The reply has every migration of the drain: the final count comes from it.
    const done = reply.migrations.filter((x) => x.state === 'done').length;
    bar.total = Math.max(total, reply.migrations.length);
    bar.update(done);
    bar.finish(reply.failed > 0 ? `${reply.failed} left` : '');
  };
}

/**
 * `strata drain <worker> [--force] [--nats-url U]`: moves every session off the worker's
 * pipeline; refused when it is its model's last pipeline that takes work, unless --force.
 */
export async function drainCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['force']);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  const force = f.bool('force');
  f.done();
  const worker = a.positionals[0];
  if (!worker || a.positionals.length > 1) throw new UsageError('strata drain takes one worker id');
  const r = await withCluster(natsUrl, async (cl) => {
    const stop = await watchDrain(cl, worker);
    try {
      const reply = await cl.drain(worker, force);
      await stop(reply);
      return reply;
    } catch (err) {
      await stop(null);
      throw err;
    }
  });
  if (r.error) {
    process.stderr.write(`strata: drain ${worker}: ${r.error.code}: ${r.error.message}\n`);
    return 1;
  }
  if (r.migrations.length > 0) out.write(renderMigrations(r.migrations, Date.now()));
  const moved = r.migrations.filter((m) => m.state === 'done').length;
  const outcome = r.undrained ? `undrained before the drain ended; ${worker} should not stop` : `${worker} can stop`;
  out.write(`pipeline ${r.pipelineId}: ${moved} session(s) moved, waited for ${r.waited} one-off request(s), ${r.failed} session(s) left; ${outcome}\n`);
  return r.failed > 0 || r.undrained ? 1 : 0;
}

/** `strata undrain <worker> [--nats-url U]`: the worker's pipeline takes work again. */
export async function undrainCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  f.done();
  const worker = a.positionals[0];
  if (!worker || a.positionals.length > 1) throw new UsageError('strata undrain takes one worker id');
  const r = await withCluster(natsUrl, (cl) => cl.undrain(worker));
  if (r.error) {
    process.stderr.write(`strata: undrain ${worker}: ${r.error.code}: ${r.error.message}\n`);
    return 1;
  }
  const where = r.pipelineId ? `pipeline ${r.pipelineId}` : `worker ${worker} (in no pipeline now)`;
  out.write(r.workers.length > 0 ? `${where} takes work again (drain of ${r.workers.join(', ')} forgotten)\n` : `${where} was not draining\n`);
  return 0;
}
