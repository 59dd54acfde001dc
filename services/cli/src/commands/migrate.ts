// strata migrate <session> [--to P] [--wait]; strata migrations [--limit N]: the operator's
// view of live migration, over NATS to the coordinator.
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import {
  DrainReplySchema, DrainRequestSchema, MigrateReplySchema, MigrateRequestSchema, MigrationListSchema, MigrationsRequestSchema, requestOnce, subjects,
  type MigrationInfo,
} from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { UsageError } from '../errors.ts';

/** --nats-url, else STRATA_NATS_URL, else the local default. */
const natsUrlOf = (f: Flags) => f.str('nats-url', process.env.STRATA_NATS_URL ?? 'nats://127.0.0.1:4222')!;

/** One request/reply with the coordinator. */
const ask = <Req extends DescMessage, Rep extends DescMessage>(natsUrl: string, subject: string, req: Req, init: MessageInitShape<Req>, rep: Rep, timeoutMs: number): Promise<MessageShape<Rep>> =>
  requestOnce(natsUrl, 'strata-cli', subject, req, init, rep, timeoutMs);

function line(m: MigrationInfo): string {
  const plan = (JSON.parse(m.plan || '[]') as { source: string; target: string; l0: number; l1: number }[]).map((p) => `${p.source}→${p.target} ${p.l0}:${p.l1}`).join(', ');
  return `${m.id}  ${m.sessionId}  ${m.fromPipeline} → ${m.toPipeline}  ${m.state}${m.error ? ` (${m.error})` : ''}  ` +
    `${m.positions} positions, ${(Number(m.bytes) / 2 ** 20).toFixed(2)} MiB in ${m.rounds} round(s), pause ${m.pauseMs.toFixed(1)} ms, total ${m.totalMs.toFixed(1)} ms  [${plan}]  ${m.reason}`;
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
  const r = await ask(natsUrl, subjects.coordinatorMigrate(), MigrateRequestSchema, { sessionId: session, toPipeline: to, wait, reason: 'operator (strata migrate)' }, MigrateReplySchema, 180_000);
  if (r.error) {
    process.stderr.write(`strata: migrate ${session}: ${r.error.code}: ${r.error.message}\n`);
    return 1;
  }
  out.write(json ? `${JSON.stringify({ ...r.migration, bytes: Number(r.migration!.bytes), createdMs: Number(r.migration!.createdMs) })}\n` : `${line(r.migration!)}\n`);
  return r.migration!.state === 'aborted' ? 1 : 0;
}

/** `strata migrations [--limit N] [--nats-url U]` */
export async function migrationsCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const f = new Flags(parseArgs(argv));
  const natsUrl = natsUrlOf(f);
  const limit = f.int('limit', 20)!;
  f.done();
  const list = await ask(natsUrl, subjects.coordinatorMigrations(), MigrationsRequestSchema, { limit }, MigrationListSchema, 5000);
  if (list.migrations.length === 0) out.write('no migrations\n');
  for (const x of list.migrations) out.write(`${line(x)}\n`);
  return 0;
}

/** `strata drain <worker> [--nats-url U]`: moves every session off the worker's pipeline. */
export async function drainCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  f.done();
  const worker = a.positionals[0];
  if (!worker || a.positionals.length > 1) throw new UsageError('strata drain takes one worker id');
  out.write(`draining ${worker}…\n`);
  const r = await ask(natsUrl, subjects.coordinatorDrain(), DrainRequestSchema, { workerId: worker }, DrainReplySchema, 600_000);
  if (r.error) {
    process.stderr.write(`strata: drain ${worker}: ${r.error.code}: ${r.error.message}\n`);
    return 1;
  }
  for (const x of r.migrations) out.write(`${line(x)}\n`);
  out.write(`pipeline ${r.pipelineId}: ${r.migrations.length} session(s) moved, waited for ${r.waited} one-off request(s), ${r.failed} session(s) left; ${worker} can stop\n`);
  return r.failed > 0 ? 1 : 0;
}
