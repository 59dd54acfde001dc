// strata up: the whole local cluster on this machine, a first request answered, then serving
// until Ctrl-C.
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Flags, parseArgs } from '../args.ts';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../local-cluster.ts';
import { Progress, Spinner, isTerminal } from '../format.ts';
import { untilSignal } from './serve.ts';
import { readFileSync } from 'node:fs';
import { ApiKeys } from '@strata/gateway';
import { UsageError } from '../errors.ts';
import { removeRunFile, runFilePath, writeRunFile } from '../run-file.ts';

/** `strata up [--model F] [--workers N] [--pipelines P] [--split even|balanced] [--roles prefill,decode,…] [--port 8080] [--kv-streams N] [--stage-links true|false] [--api-keys-file F] [--prompt …] [--once]` */
export async function upCommand(argv: string[], out: NodeJS.WritableStream): Promise<number> {
  const f = new Flags(parseArgs(argv, ['once', 'verbose']));
  const o = {
    model: f.str('model'),
    workers: f.int('workers', 2)!,
    pipelines: f.int('pipelines', 1)!,
    split: f.str('split', 'even') as 'even' | 'balanced',
    port: f.int('port', 8080)!,
    threads: f.int('threads'),
    ctxSize: f.int('ctx-size'),
    kvStreams: f.int('kv-streams'),
    kvType: f.str('kv-type'),
    roles: f.str('roles')?.split(',').map((r) => r.trim()),
    logLevel: f.bool('verbose') ? 'info' : 'warn',
    stageLinks: f.str('stage-links', 'true'),
  };
  const prompt = f.str('prompt', 'Once upon a time')!;
  const maxTokens = f.int('max-tokens', 32)!;
  const once = f.bool('once');
  // API keys (the flag, or STRATA_API_KEYS_FILE as the gateway reads it): the first request
  // below goes with the file's first user key.
  const keysFile = f.str('api-keys-file', process.env.STRATA_API_KEYS_FILE);
  f.done();
  if (o.stageLinks !== 'true' && o.stageLinks !== 'false') throw new UsageError(`--stage-links must be true or false, got '${o.stageLinks}'`);
  if (o.split !== 'even' && o.split !== 'balanced') throw new UsageError(`--split must be even or balanced, got '${o.split}'`);
  if (o.kvStreams !== undefined && !(o.kvStreams >= 1 && (o.ctxSize ?? 4096) % o.kvStreams === 0)) {
    throw new UsageError(`--kv-streams ${o.kvStreams} must split --ctx-size ${o.ctxSize ?? 4096} into equal streams`);
  }
  if (o.roles && o.roles.length !== o.pipelines) throw new UsageError(`--roles names ${o.roles.length} role(s) for ${o.pipelines} pipeline(s): give one per pipeline`);
  let auth: Record<string, string> = {};
  if (keysFile) {
    const key = ApiKeys.firstKey(readFileSync(keysFile, 'utf8'), 'user') ?? ApiKeys.firstKey(readFileSync(keysFile, 'utf8'), 'admin');
    if (!key) throw new UsageError(`${keysFile} holds no key`);
    auth = { authorization: `Bearer ${key}` };
  }
  // nats-server and redis-server come from Debian's packages: installed here when missing (as root).
  const ensure = spawnSync(process.execPath, [join(dirname(fileURLToPath(import.meta.url)), '../../../../scripts/ensure-servers.mjs')], { stdio: 'inherit' });
  if (ensure.status !== 0) return 1;
  // The default model is synthesized on first use (seconds): a bar on a terminal.
  const synth: { bar?: Progress } = {};
  const model = o.model ?? ensureDefaultModel(undefined, (done, total) => {
    synth.bar ??= new Progress({ label: 'synthesizing the default model', total, amount: (d, t) => `${(d / 1e6).toFixed(1)}M/${(t / 1e6).toFixed(1)}M parameters` });
    synth.bar.update(done);
  });
  synth.bar?.finish();
  const t0 = Date.now();
  out.write(`strata up: starting nats-server, redis-server, a coordinator, ${o.pipelines} pipeline(s) of ${o.workers} worker(s) and a gateway…\n`);
  const spinner = isTerminal(process.stderr) ? new Spinner('waiting for every pipeline to be ready') : null;
  let cluster: LocalCluster;
  try {
    cluster = await LocalCluster.start({ ...o, model, stageLinks: o.stageLinks === 'true', gatewayFlags: keysFile ? ['--api-keys-file', keysFile] : [] });
  } finally {
    spinner?.stop('');
  }
  try {
    out.write(`strata up: ready in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
    for (const s of cluster.services) if (s.role === 'worker') out.write(`  worker ${s.id}: layers ${s.layers!.l0}:${s.layers!.l1}\n`);
    out.write(`  NATS ${cluster.nats.url} (a user per role), Redis ${cluster.redis.url} (ACL user), terms signed; credentials in ${runFilePath()}\n`);
    writeRunFile({ pid: process.pid, url: cluster.url, natsUrl: cluster.natsUrl });
    const listed = await fetch(`${cluster.url}/v1/models`, { headers: auth });
    const models = (await listed.json()) as { data?: { id: string }[]; error?: { message: string } };
    if (!listed.ok || !models.data?.[0]) throw new Error(`the gateway did not list its model: ${models.error?.message ?? listed.status}`);
    const model = models.data[0].id;
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...auth },
      body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0 }),
    });
    const body = (await r.json()) as { choices?: { text: string }[]; error?: { message: string } };
    if (!r.ok) throw new Error(`the first request failed: ${body.error?.message ?? r.status}`);
    out.write(`\n$ curl ${cluster.url}/v1/completions${keysFile ? " -H 'authorization: Bearer <a key of your file>'" : ''} -d '{"model":"${model}","prompt":${JSON.stringify(prompt)},"max_tokens":${maxTokens},"temperature":0}'\n`);
    out.write(`${prompt}${body.choices![0]!.text}\n\n`);
    out.write(`Strata is serving model '${model}' at ${cluster.url} (OpenAI API under /v1, the dashboard at ${cluster.url}/dashboard).${once ? '' : ' Ctrl-C stops it.'}\n`);
    if (!once) await untilSignal();
    return 0;
  } finally {
    out.write('strata up: stopping…\n');
    removeRunFile();
    await cluster.stop();
  }
}
