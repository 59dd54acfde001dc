// The device check's measurements, run on the machine under test by scripts/device-check.mjs
// (`run`), after it built ggml and libllama there: Strata on the device against libllama on the
// device (greedy tokens and logits, whole and split into two stages), the engine bench against
// libllama and llama-bench, a local cluster of two workers on the device answering a completion,
// and a session migrated mid-stream from a pipeline on the device to a CPU pipeline holding K/V in
// another type. Prints one table and writes device-check.json into the folder given.
//
//   node --import tsx scripts/device-check/checks.ts --device CUDA0 --out DIR [--threads N] [--quick] [--llama-bench PATH]
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LlamaReference, Vocab, native } from '@strata/ggml';
import { Pipeline, ensureDefaultModel, generate, scoreAll, synthesize, topK } from '@strata/model';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { benchModel, median } from '../../test/bench/common.ts';
import { measureEngine } from '../../test/bench/engine.ts';
import { maxAbsDiff } from '../../test/helpers/models.ts';
import { strataCacheDir } from '@strata/ggml';

interface Row { check: string; result: string; ok: boolean; detail: Record<string, unknown> }

const arg = (name: string, fallback?: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
};
const device = arg('device', 'CPU')!;
const out = arg('out', '.')!;
const threads = Number(arg('threads', '4'));
const quick = process.argv.includes('--quick');
const llamaBench = arg('llama-bench');
const onDevice = device !== 'CPU';
const rows: Row[] = [];
const LONG = 'The river ran past the old mill, where the miller kept his accounts in a book bound with red leather. Every morning he counted the sacks of flour and walked to the market square.';

function record(check: string, ok: boolean, result: string, detail: Record<string, unknown> = {}): void {
  rows.push({ check, result, ok, detail });
  process.stdout.write(`${ok ? 'ok  ' : 'FAIL'} ${check}: ${result}\n`);
}

async function attempt(check: string, fn: () => Promise<void> | void): Promise<void> {
  try {
    await fn();
  } catch (err) {
    record(check, false, (err as Error).message.split('\n')[0]!, { error: String((err as Error).stack ?? err) });
  }
}

/** Greedy tokens and logits of Strata on the device against libllama on the device, whole and in two stages. */
function parity(): void {
  const model = ensureDefaultModel();
  const vocab = Vocab.load(model);
  const prompt = vocab.tokenize(LONG, true, true);
  const ref = LlamaReference.load(model, { nCtx: 512, threads, gpuLayers: onDevice ? 999 : 0 });
  try {
    const want = ref.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: true })));
    const greedy: number[] = [];
    let logits = want.at(-1)!;
    for (let i = 0; i < 32; i++) {
      const t = topK(logits, 1)[0]!.token;
      greedy.push(t);
      logits = ref.decode([{ token: t, pos: prompt.length + i, seq: 0, logits: true }])[0]!;
    }
    for (const split of [[{ l0: 0, l1: 8 }], [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }]]) {
      const label = split.map((r) => `${r.l0}:${r.l1}`).join(',');
      const p = Pipeline.open({ model, threads, ctxSize: 512, split, device });
      try {
        const d = maxAbsDiff(scoreAll(p, prompt), want);
        p.seqRemove(0);
        const got = generate(p, vocab, prompt, { nPredict: 32, temperature: 0, stopAtEog: false }).tokens;
        const same = got.every((t, i) => t === greedy[i]);
        record(`parity ${label}`, same, `${same ? '32 greedy tokens identical' : `differs at token ${got.findIndex((t, i) => t !== greedy[i])}`}, max |Δlogit| ${d.toExponential(2)}`, { split: label, maxAbsDiff: d, tokens: got, reference: greedy });
      } finally {
        p.dispose();
      }
    }
  } finally {
    ref.dispose();
    vocab.dispose();
  }
}

/** A ~1B-parameter llama that fills a GPU more than the 134M one (synthesized once into the cache). */
function bigModel(): string {
  const file = join(strataCacheDir(), 'models', 'device-check-llama-1b-f16.gguf');
  if (!existsSync(file)) {
    mkdirSync(join(strataCacheDir(), 'models'), { recursive: true });
    synthesize({ out: file, arch: 'llama', nLayer: 16, nEmbd: 2048, nHead: 16, nHeadKv: 8, nFf: 5632, nCtxTrain: 4096, seed: 7, type: 'f16' });
  }
  return file;
}

/** pp/tg of Strata against libllama driven directly, and against llama-bench where it was built. */
function engine(): void {
  const models = quick ? [['llama 134M f16', benchModel('f16')]] : [['llama 134M f16', benchModel('f16')], ['llama 1B f16', bigModel()]];
  const pp = quick ? 128 : 512, tg = quick ? 32 : 128, reps = quick ? 2 : 3;
  for (const [label, path] of models) {
    // One instance of each side: loading a 1B model onto the device again costs more than the check's time allows.
    const res = measureEngine(path!, label!, { threads, pp, tg, reps, device, instances: 1 }, () => {});
    for (const r of res) {
      const s = median(r.strata), l = median(r.llama);
      const detail: Record<string, unknown> = { model: label, test: r.test, strataTokS: s, libllamaTokS: l, ratio: s / l };
      let text = `${s.toFixed(1)} tok/s, ${(s / l).toFixed(3)} × libllama (${l.toFixed(1)})`;
      if (llamaBench && existsSync(llamaBench)) {
        const isPp = r.test.startsWith('pp');
        const json = execFileSync(llamaBench, ['-m', path!, '-t', String(threads), '-fa', '1', '-ngl', onDevice ? '99' : '0', '-r', String(reps),
          ...(isPp ? ['-p', String(pp), '-n', '0'] : ['-p', '0', '-n', String(tg)]), '-o', 'json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
        const b = (JSON.parse(json) as { avg_ts: number }[])[0]!.avg_ts;
        detail.llamaBenchTokS = b;
        text += `, ${(s / b).toFixed(3)} × llama-bench (${b.toFixed(1)})`;
      }
      record(`engine ${label} ${r.test}`, true, text, detail);
    }
  }
}

/** A local cluster of two workers on the device answering a completion. */
async function cluster(): Promise<void> {
  const model = ensureDefaultModel();
  const c = await LocalCluster.start({ model, workers: 2, threads: Math.max(1, Math.floor(threads / 2)), port: 0, ctxSize: 1024, devices: [device], logLevel: 'error' });
  try {
    const id = ((await (await fetch(`${c.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    const r = await fetch(`${c.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: id, messages: [{ role: 'user', content: 'Tell me about the mill.' }], max_tokens: 24, temperature: 0 }),
    });
    const j = (await r.json()) as { choices?: { message: { content: string } }[]; usage?: { completion_tokens: number } };
    const ok = r.status === 200 && j.usage?.completion_tokens === 24;
    record('cluster of 2 workers', ok, ok ? `HTTP 200, 24 tokens on ${device}` : `HTTP ${r.status}: ${JSON.stringify(j).slice(0, 200)}`, { status: r.status, usage: j.usage });
  } finally {
    await c.stop();
  }
}

/** A session streamed on a device pipeline, migrated mid-stream to a CPU pipeline holding q8_0 K/V. */
async function migration(): Promise<void> {
  const model = ensureDefaultModel();
  const c = await LocalCluster.start({
    model, splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }], [{ l0: 0, l1: 3 }, { l0: 3, l1: 8 }]], devices: [device, 'CPU'], kvTypes: ['f16', 'q8_0'],
    threads: Math.max(1, Math.floor(threads / 2)), port: 0, ctxSize: 1024, logLevel: 'error', coordinatorFlags: ['--rebalance-high', '0'],
  });
  try {
    const id = ((await (await fetch(`${c.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    // Started on the device pipeline (the first), then moved to the CPU one once it streams.
    const r = await fetch(`${c.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': 'device-check' },
      body: JSON.stringify({ model: id, prompt: LONG, max_tokens: 64, temperature: 0, stream: true }),
    });
    let text = '', chunks = 0, moved: Record<string, unknown> | null = null;
    const dec = new TextDecoder();
    for await (const part of r.body!) {
      text += dec.decode(part as Uint8Array, { stream: true });
      chunks = (text.match(/"text":/g) ?? []).length;
      if (chunks >= 8 && !moved) {
        const sessions = (await (await fetch(`${c.url}/admin/v1/sessions`)).json()) as { data: { id: string; pipeline: string }[] };
        const from = sessions.data.find((s) => s.id === 'device-check')?.pipeline ?? '';
        const to = from === 'p0-s0~p0-s1' ? 'p1-s0~p1-s1' : 'p0-s0~p0-s1';
        const m = await fetch(`${c.url}/admin/v1/sessions/device-check/migrate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ to, wait: true }) });
        moved = { status: m.status, from, to, ...((await m.json()) as Record<string, unknown>) };
      }
    }
    const done = /"finish_reason":"length"/.test(text);
    const ok = done && moved !== null && moved.state === 'done';
    record('migration device → CPU (q8_0)', ok, ok ? `${String(moved!.from)} → ${String(moved!.to)}: ${String(moved!.bytes)} bytes, pause ${Number(moved!.pause_ms).toFixed(1)} ms, the stream went on to its end` : `stream ended ${done ? 'whole' : 'early'}; migration ${JSON.stringify(moved).slice(0, 200)}`, { migration: moved });
  } finally {
    await c.stop();
  }
}

const started = Date.now();
process.stdout.write(`device check on ${device} (${native().libs.kind} ${native().libs.gpu} build, ${threads} threads${quick ? ', quick' : ''})\n`);
await attempt('parity', parity);
await attempt('engine', engine);
await attempt('cluster of 2 workers', cluster);
await attempt('migration device → CPU (q8_0)', migration);
const width = Math.max(...rows.map((r) => r.check.length));
process.stdout.write(`\n${'check'.padEnd(width)}  result\n`);
for (const r of rows) process.stdout.write(`${r.check.padEnd(width)}  ${r.ok ? '' : 'FAILED: '}${r.result}\n`);
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'device-check.json'), JSON.stringify({ device, build: native().libs, threads, quick, seconds: (Date.now() - started) / 1000, rows }, null, 2));
process.exitCode = rows.every((r) => r.ok) ? 0 : 1;
