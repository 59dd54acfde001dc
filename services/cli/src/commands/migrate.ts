// strata migrate <session> [--to P] [--wait]; strata migrations [--limit N]; strata drain <worker>:
// the operator's view of live migration, over NATS to the coordinator.
import { setTimeout as sleep } from 'node:timers/promises';
import { migrationJson, type DrainReply, type MigrationInfo } from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { natsUrlOf, withCluster, type ClusterClient } from '../cluster-client.ts';
import { UsageError } from '../errors.ts';
import { Progress } from '../format.ts';
import { renderMigrations } from './status.ts';

/** A migration's plan as text: `p0-s0→p1-s0 0:3, p0-s0→p1-s1 3:4, …`. */
function planText(m: MigrationInfo): string {
  return migrationJson(m).plan.map((p) => `${p.source}→${p.target} ${p.l0}:${p.l1}`).join(', ');
}

/** `strata migrate <session> [--to PIPELINE] [--wait] [--nats-url U]` */
export async function migrateCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['wait', 'json']);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  const to = f.str('to', '')!;
  const wait = f.bool('wait');
  const json = f.bool('json');
  f.done();
  const session = a.positionals[0];
  if (!session || a.positionals.length > 1) throw new UsageError('strata migrate takes one session id');
  const r = await withCluster(natsUrl, (cl) => cl.migrate({ sessionId: session, toPipeline: to, wait, reason: 'operator (strata migrate)' }));
  if (r.error) {
    process.stderr.write(`strata: migrate ${session}: ${r.error.code}: ${r.error.message}\n`);
    return 1;
  }
  out.write(json ? `${JSON.stringify(migrationJson(r.migration!))}\n` : `${renderMigrations([r.migration!], Date.now())}  plan: ${planText(r.migration!)}\n`);
  return r.migration!.state === 'aborted' ? 1 : 0;
}

/** `strata migrations [--limit N] [--json] [--nats-url U]` */
export async function migrationsCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['json']);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  const limit = f.int('limit', 20)!;
  const json = f.bool('json');
  f.done();
  if (a.positionals.length > 0) throw new UsageError('strata migrations takes no arguments');
  if (limit < 1 || limit > 1000) throw new UsageError('--limit is 1-1000');
  const list = await withCluster(natsUrl, (cl) => cl.migrations(limit));
  out.write(json ? `${JSON.stringify({ object: 'list', data: list.migrations.map(migrationJson) })}\n` : renderMigrations(list.migrations, Date.now()));
  return 0;
}

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

/** `strata drain <worker> [--nats-url U]`: moves every session off the worker's pipeline. */
export async function drainCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  f.done();
  const worker = a.positionals[0];
  if (!worker || a.positionals.length > 1) throw new UsageError('strata drain takes one worker id');
  const r = await withCluster(natsUrl, async (cl) => {
    const stop = await watchDrain(cl, worker);
    try {
      const reply = await cl.drain(worker);
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
  out.write(`pipeline ${r.pipelineId}: ${r.migrations.length} session(s) moved, waited for ${r.waited} one-off request(s), ${r.failed} session(s) left; ${worker} can stop\n`);
  return r.failed > 0 ? 1 : 0;
}
