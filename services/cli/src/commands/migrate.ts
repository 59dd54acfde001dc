// strata migrate <session> [--to P] [--wait]; strata migrations [--limit N]: the operator's view
// of live migration, over NATS to the coordinator (drains: drain.ts).
import { migrationJson, type MigrationInfo } from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { natsUrlOf, withCluster } from '../cluster-client.ts';
import { UsageError } from '../errors.ts';
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
