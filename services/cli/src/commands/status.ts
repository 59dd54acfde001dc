// strata status, strata sessions: the cluster at a glance in a terminal (pipelines, their stages
// and layer ranges, each worker's KV occupancy, where sessions live, migrations), read from the
// leader coordinator over NATS. --json prints what the gateway's admin API answers.
import {
  MIGRATION_ACTIVE_STATES, migrationJson, sessionJson, toJson, ClusterStateSchema,
  type ClusterState, type MigrationInfo, type SessionInfo, type StageInfo, type WorkerState,
} from '@strata/wire';
import { Flags, parseArgs } from '../args.ts';
import { natsUrlOf, withCluster } from '../cluster-client.ts';
import { UsageError } from '../errors.ts';
import { formatAge, formatBytes, formatMs, occupancy, table } from '../format.ts';

/** Cells a stage's KV cache holds in all. */
/** Prompt tokens that were cached, as operators read it. */
const cachedShare = (prompt: bigint, cached: bigint) =>
  prompt === 0n ? 'no prompt yet' : `${cached} of ${prompt} prompt tokens cached (${((Number(cached) * 100) / Number(prompt)).toFixed(1)}%)`;

const cellsOf = (s: StageInfo | undefined) => (s?.kvCells ?? 0) * Math.max(1, s?.kvStreams ?? 1);

/** What a worker computes now, when it has been at it for a while: "SLOW: step of 1,024 tokens for 4.2 s (0.3 s expected)". */
export function busyNote(w: WorkerState | undefined): string {
  const l = w?.load;
  if (!l || l.busyStepId === 0n || (l.busyMs < 1000 && !w.slow)) return '';
  const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
  return `${w.slow ? 'SLOW: ' : ''}step of ${l.busyTokens.toLocaleString('en')} tokens for ${s(l.busyMs)}${w.predictedMs > 0 ? ` (${s(w.predictedMs)} expected)` : ''}`;
}

/** Rows of workers: id, layers, K/V type, KV bar, cells, notes. */
function workerRows(stages: readonly StageInfo[], byId: ReadonlyMap<string, WorkerState>, nowMs: number): string[][] {
  return stages.map((st) => {
    const w = byId.get(st.workerId);
    const used = w?.kvCellsUsed ?? 0, total = cellsOf(st);
    const notes = [w?.draining ? 'draining' : '', w && nowMs - Number(w.lastSeenMs) > 2500 ? `last heard ${formatAge(Number(w.lastSeenMs), nowMs)} ago` : '', busyNote(w)].filter(Boolean).join(', ');
    return [`  ${st.workerId}`, `${st.l0}:${st.l1}`, st.kvType || '', occupancy(used, total), `${used.toLocaleString('en')}/${total.toLocaleString('en')} cells`, notes];
  });
}

/** `strata sessions` as text. */
export function renderSessions(sessions: readonly SessionInfo[], total: number, nowMs: number): string {
  if (sessions.length === 0) return 'no sessions\n';
  const rows = sessions.map((s) => [
    s.id, s.pipelineId, String(s.seq), s.positions.toLocaleString('en'), s.moving ? 'moving' : s.busy ? 'busy' : s.saved ? 'saved' : 'idle',
    s.busy ? 'now' : formatAge(Number(s.lastUsedMs), nowMs), String(s.epoch),
  ]);
  const lines = table(['SESSION', 'PIPELINE', 'SEQ', 'POSITIONS', 'STATE', 'LAST USED', 'EPOCH'], rows, [2, 3, 5, 6]);
  if (total > sessions.length) lines.push(`(${sessions.length} of ${total}; --limit N shows more)`);
  return `${lines.join('\n')}\n`;
}

/** `strata migrations` as text: one row per migration, an error line under an aborted one. */
export function renderMigrations(migrations: readonly MigrationInfo[], nowMs: number): string {
  if (migrations.length === 0) return 'no migrations\n';
  const rows = migrations.map((m) => {
    const active = MIGRATION_ACTIVE_STATES.includes(m.state);
    const total = m.totalMs > 0 ? formatMs(m.totalMs) : active ? formatMs(nowMs - Number(m.createdMs)) : '–';
    return [
      m.id, m.sessionId, `${m.fromPipeline} → ${m.toPipeline}`, active ? `${m.state}…` : m.state, m.positions.toLocaleString('en'),
      Number(m.bytes) > 0 ? formatBytes(Number(m.bytes)) : '–', String(m.rounds), m.state === 'done' ? formatMs(m.pauseMs) : '–', total,
      formatAge(Number(m.createdMs), nowMs), m.reason,
    ];
  });
  const lines = table(['MIGRATION', 'SESSION', 'FROM → TO', 'STATE', 'POSITIONS', 'MOVED', 'ROUNDS', 'PAUSE', 'TOTAL', 'AGE', 'REASON'], rows, [4, 5, 6, 7, 8, 9]);
  const out = [lines[0]!];
  migrations.forEach((m, i) => {
    out.push(lines[i + 1]!);
    if (m.error) out.push(`  ↳ ${m.error}`);
  });
  return `${out.join('\n')}\n`;
}

/** `strata status` as text: the coordinator, each pipeline with its workers, free workers, sessions, migrations. */
export function renderStatus(c: ClusterState, sessions: readonly SessionInfo[], sessionsTotal: number, migrations: readonly MigrationInfo[], nowMs: number): string {
  const byId = new Map(c.workers.flatMap((w) => (w.stage ? [[w.stage.workerId, w] as const] : [])));
  const active = migrations.filter((m) => MIGRATION_ACTIVE_STATES.includes(m.state));
  const out: string[] = [
    `coordinator ${c.coordinatorId || '?'}: ${c.pipelines.length} pipeline(s), ${c.workers.length} worker(s), ${sessionsTotal} session(s), ${active.length} migration(s) under way`,
  ];
  const header = ['  WORKER', 'LAYERS', 'KV TYPE', 'KV CELLS USED', '', ''];
  for (const p of [...c.pipelines].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0))) {
    const draining = p.draining || p.stages.some((s) => byId.get(s.workerId)?.draining);
    const role = p.role && p.role !== 'both' ? `  [${p.role}]` : '';
    out.push('', `pipeline ${p.id}  ${p.modelId}${role}  ${p.sessions} session(s), ${p.seqsUsed}/${p.stages[0]?.nSeqMax ?? 0} sequences${p.strandedSeqs ? ` (${p.strandedSeqs} not emptied yet)` : ''}, ${p.queued} queued${draining ? ', draining' : ''}`);
    out.push(`  prefix cache: ${p.cachedPrefixes} prompt(s) in ${p.cachedCells} cells${p.savedPrefixes ? `, ${p.savedPrefixes} saved to the tiers` : ''}; ${cachedShare(p.promptTokens, p.cachedPromptTokens)}`);
    if (role || p.handoffsOut + p.handoffsIn + p.handoffsFailed > 0n) out.push(`  hand-offs: ${p.handoffsOut} prefilled here and decoded elsewhere, ${p.handoffsIn} taken to decode, ${p.handoffsFailed} kept here (no decode pipeline took them)`);
    out.push(...table(header, workerRows(p.stages, byId, nowMs)));
    const here = sessions.filter((s) => s.pipelineId === p.id);
    if (here.length > 0) {
      const shown = here.slice(0, 8).map((s) => `${s.id} (${s.moving ? 'moving' : s.busy ? 'busy' : s.saved ? 'saved' : 'idle'}, ${s.positions})`);
      out.push(`  sessions: ${shown.join(', ')}${here.length > shown.length ? `, +${here.length - shown.length} more` : ''}`);
    }
  }
  const free = c.workers.filter((w) => !w.pipelineId && w.stage);
  if (free.length > 0) {
    out.push('', 'workers in no pipeline');
    out.push(...table(header, workerRows(free.map((w) => w.stage!), byId, nowMs)));
  }
  out.push('', migrations.length === 0 ? 'migrations: none yet' : `migrations (${active.length} under way; the last ${migrations.length}):`);
  if (migrations.length > 0) out.push(renderMigrations(migrations, nowMs).trimEnd().split('\n').map((l) => `  ${l}`).join('\n'));
  return `${out.join('\n')}\n`;
}

/** `strata status [--json] [--nats-url U]` */
export async function statusCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['json']);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  const json = f.bool('json');
  f.done();
  if (a.positionals.length > 0) throw new UsageError('strata status takes no arguments');
  const [c, s, m] = await withCluster(natsUrl, (cl) => Promise.all([cl.cluster(), cl.sessions(json ? 0 : 200), cl.migrations(json ? 20 : 5)]));
  if (json) {
    out.write(`${JSON.stringify({
      cluster: toJson(ClusterStateSchema, c), sessions: { object: 'list', data: s.sessions.map(sessionJson), total: s.total }, migrations: { object: 'list', data: m.migrations.map(migrationJson) },
    })}\n`);
  } else {
    out.write(renderStatus(c, s.sessions, s.total, m.migrations, Date.now()));
  }
  return 0;
}

/** `strata sessions [--limit N] [--json] [--nats-url U]` */
export async function sessionsCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const a = parseArgs(argv, ['json']);
  const f = new Flags(a);
  const natsUrl = natsUrlOf(f);
  const limit = f.int('limit', 100)!;
  const json = f.bool('json');
  f.done();
  if (a.positionals.length > 0) throw new UsageError('strata sessions takes no arguments');
  if (limit < 1 || limit > 10_000) throw new UsageError('--limit is 1-10000');
  const list = await withCluster(natsUrl, (cl) => cl.sessions(limit));
  out.write(json ? `${JSON.stringify({ object: 'list', data: list.sessions.map(sessionJson), total: list.total })}\n` : renderSessions(list.sessions, list.total, Date.now()));
  return 0;
}
