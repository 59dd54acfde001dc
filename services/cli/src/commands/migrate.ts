// strata migrate <session> [--to P] [--wait]; strata migrations [--limit N]: the operator's
// view of live migration, over NATS to the coordinator.
import { connect } from 'nats';
import {
  DrainReplySchema, DrainRequestSchema, MigrateReplySchema, natsOptions, MigrateRequestSchema, MigrationListSchema, MigrationsRequestSchema, decode, encode, subjects, type MigrationInfo,
} from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { UsageError } from '../errors.ts';

function line(m: MigrationInfo): string {
  const plan = (JSON.parse(m.plan || '[]') as { source: string; target: string; l0: number; l1: number }[]).map((p) => `${p.source}→${p.target} ${p.l0}:${p.l1}`).join(', ');
  return `${m.id}  ${m.sessionId}  ${m.fromPipeline} → ${m.toPipeline}  ${m.state}${m.error ? ` (${m.error})` : ''}  ` +
    `${m.positions} positions, ${(Number(m.bytes) / 2 ** 20).toFixed(2)} MiB in ${m.rounds} round(s), pause ${m.pauseMs.toFixed(1)} ms, total ${m.totalMs.toFixed(1)} ms  [${plan}]  ${m.reason}`;
}

/** `strata migrate <session> [--to PIPELINE] [--wait] [--nats-url U]` */
export async function migrateCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['wait', 'json']);
  const f = new Flags(a);
  const natsUrl = f.str('nats-url', process.env.STRATA_NATS_URL ?? 'nats://127.0.0.1:4222')!;
  const to = f.str('to', '')!;
  const wait = f.bool('wait');
  const json = f.bool('json');
  f.done();
  const session = a.positionals[0];
  if (!session || a.positionals.length > 1) throw new UsageError('strata migrate takes one session id');
  const nc = await connect({ ...natsOptions(natsUrl, 'strata-cli'), maxReconnectAttempts: 0 });
  try {
    const m = await nc.request(subjects.coordinatorMigrate(), encode(MigrateRequestSchema, { sessionId: session, toPipeline: to, wait, reason: 'operator (strata migrate)' }), { timeout: 180_000 });
    const r = decode(MigrateReplySchema, m.data);
    if (r.error) {
      process.stderr.write(`strata: migrate ${session}: ${r.error.code}: ${r.error.message}\n`);
      return 1;
    }
    out.write(json ? `${JSON.stringify({ ...r.migration, bytes: Number(r.migration!.bytes), createdMs: Number(r.migration!.createdMs) })}\n` : `${line(r.migration!)}\n`);
    return r.migration!.state === 'aborted' ? 1 : 0;
  } finally {
    await nc.close();
  }
}

/** `strata migrations [--limit N] [--nats-url U]` */
export async function migrationsCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const f = new Flags(parseArgs(argv));
  const natsUrl = f.str('nats-url', process.env.STRATA_NATS_URL ?? 'nats://127.0.0.1:4222')!;
  const limit = f.int('limit', 20)!;
  f.done();
  const nc = await connect({ ...natsOptions(natsUrl, 'strata-cli'), maxReconnectAttempts: 0 });
  try {
    const m = await nc.request(subjects.coordinatorMigrations(), encode(MigrationsRequestSchema, { limit }), { timeout: 5000 });
    const list = decode(MigrationListSchema, m.data);
    if (list.migrations.length === 0) out.write('no migrations\n');
    for (const x of list.migrations) out.write(`${line(x)}\n`);
    return 0;
  } finally {
    await nc.close();
  }
}

/** `strata drain <worker> [--nats-url U]`: moves every session off the worker's pipeline. */
export async function drainCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv);
  const f = new Flags(a);
  const natsUrl = f.str('nats-url', process.env.STRATA_NATS_URL ?? 'nats://127.0.0.1:4222')!;
  f.done();
  const worker = a.positionals[0];
  if (!worker || a.positionals.length > 1) throw new UsageError('strata drain takes one worker id');
  const nc = await connect({ ...natsOptions(natsUrl, 'strata-cli'), maxReconnectAttempts: 0 });
  try {
    out.write(`draining ${worker}…\n`);
    const m = await nc.request(subjects.coordinatorDrain(), encode(DrainRequestSchema, { workerId: worker }), { timeout: 600_000 });
    const r = decode(DrainReplySchema, m.data);
    if (r.error) {
      process.stderr.write(`strata: drain ${worker}: ${r.error.code}: ${r.error.message}\n`);
      return 1;
    }
    for (const x of r.migrations) out.write(`${line(x)}\n`);
    out.write(`pipeline ${r.pipelineId}: ${r.migrations.length} session(s) moved, waited for ${r.waited} one-off request(s), ${r.failed} session(s) left; ${worker} can stop\n`);
    return r.failed > 0 ? 1 : 0;
  } finally {
    await nc.close();
  }
}
