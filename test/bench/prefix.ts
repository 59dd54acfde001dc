// The prefix cache measured (docs/prefix-cache.md): many clients at once with one long system
// prompt and distinct short questions, against `llama-server` built from the pinned snapshot
// (`-np` slots, `--cache-reuse`) and against Strata with the cache out of the way (each request
// its own `cache_salt`), all up at once on the same GGUF and threads, alternating; then two
// pipelines with two system prompts, placed by cached prefix against least loaded. Prints prompt
// tokens computed, time to first token p50/p99, hit ratio and each pipeline's share of the work;
// then a long session evicted to the tiers, resumed from host memory, from disk, and prefilled
// again; then decoding sessions with long prompts arriving among them, on a prefill and a decode
// pipeline (disaggregated) against two pipelines that do both (colocated).
import { mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalCluster } from '../../services/cli/src/local-cluster.ts';
import { workerStats } from '../helpers/cluster.ts';
import { median } from './common.ts';
import { pct, postStream, referenceServer, startLlamaServer } from './serving.ts';

/** Options of the prefix benchmark. */
export interface PrefixOptions {
  model: string;
  threads: number;
  /** clients at once, one request each */
  clients: number;
  /** sentences of the system prompt (about 28 tokens each with Gemma 3's tokenizer) */
  systemSentences: number;
  reps: number;
  /** which parts: 'shared' (one system prompt, against llama-server), 'routing' (two pipelines), 'tiers', 'multiturn' (against llama-server), 'disagg', 'choices' (n = 4 against n = 1, against llama-server) */
  parts: string[];
  /** disagg: tokens of each long prompt */
  longPrompt: number;
}

/** One request's outcome, and the text it answered. */
interface Answer { ttft: number; prompt: number; computed: number; text: string }

/** One run: every client's answer and the wall time. */
interface Run { answers: Answer[]; wallMs: number }

const TOPICS = ['the miller', 'the wheel', 'the spring flood', 'the stone bridge', 'the ledger', 'the weir', 'the granary', 'the toll'];

/** A system prompt of `n` sentences, unique to `tag` from its first token (no run reuses another's cells). */
function systemPrompt(tag: string, n: number): string {
  const out = [`Archive ${tag}.`];
  for (let i = 0; i < n; i++) out.push(`Rule ${i + 1}: when a visitor asks about ${TOPICS[i % TOPICS.length]}, answer from ledger ${i + 1} in one short plain sentence.`);
  return out.join(' ');
}

/** One greedy streaming chat completion; its time to first token and the prompt tokens the server computed. */
async function ask(url: string, model: string, content: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Promise<Answer> {
  const start = performance.now();
  let first = 0, prompt = 0, computed = -1, text = '';
  const body = { model, messages: [{ role: 'user', content }], max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true }, ...extra };
  const { status, tail } = await postStream(`${url}/v1/chat/completions`, body, (e) => {
    const j = e as {
      choices?: { delta?: { content?: string } }[];
      usage?: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } };
      timings?: { prompt_n?: number };
    };
    const piece = j.choices?.[0]?.delta?.content;
    if (piece) {
      first ||= performance.now();
      text += piece;
    }
    if (j.usage) {
      prompt = j.usage.prompt_tokens;
      if (j.usage.prompt_tokens_details?.cached_tokens !== undefined) computed = prompt - j.usage.prompt_tokens_details.cached_tokens;
    }
    // llama-server says what it evaluated in its own timings.
    if (j.timings?.prompt_n !== undefined) computed = j.timings.prompt_n;
  }, headers);
  if (status !== 200) throw new Error(`HTTP ${status} from ${url}: ${tail}`);
  return { ttft: (first || performance.now()) - start, prompt, computed: computed < 0 ? prompt : computed, text };
}

/** `questions` at once, each after `system`. */
async function burst(url: string, model: string, system: string, questions: string[], extra: (i: number) => Record<string, unknown>): Promise<Run> {
  const t0 = performance.now();
  const answers = await Promise.all(questions.map((q, i) => ask(url, model, `${system}\n\nQuestion: ${q}`, extra(i))));
  return { answers, wallMs: performance.now() - t0 };
}

const questionsFor = (rep: number, n: number) => Array.from({ length: n }, (_, i) => `visitor ${rep}-${i} asks what ledger ${(i % 9) + 1} says about ${TOPICS[i % TOPICS.length]}?`);

async function modelId(url: string): Promise<string> {
  return ((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
}

/** Runs the prefix benchmark; prints the tables and returns the figures. */
export async function runPrefixBench(o: PrefixOptions, step: (detail?: string) => void): Promise<unknown> {
  const bin = referenceServer('prefix', o.model);
  if (!bin) return null;
  const out: Record<string, unknown> = {};
  if (o.parts.includes('shared')) out.shared = await shared(o, bin, step);
  if (o.parts.includes('routing')) out.routing = await routing(o, step);
  if (o.parts.includes('tiers')) out.tiers = await tiers(o, step);
  if (o.parts.includes('multiturn')) out.multiturn = await multiTurn(o, bin, step);
  if (o.parts.includes('disagg')) out.disagg = await disagg(o, step);
  if (o.parts.includes('choices')) out.choices = await choices(o, bin, step);
  return out;
}

/**
 * A request of 4 choices against one of 1, on one long prompt that nothing cached (each its own),
 * on Strata (one worker) and on llama-server (4 slots; `n` starts child tasks that take a copy
 * of the parent's prompt once it is processed), alternating: the wall time of the whole request,
 * and the tokens Strata's stage computed. Strata's choices compute the prompt once
 * (docs/cluster.md); four would compute it 4 times.
 */
async function choices(o: PrefixOptions, bin: string, step: (detail?: string) => void): Promise<unknown> {
  const sentences = Math.round(o.systemSentences * 2);
  const perSlot = 30 * sentences + 512;
  const c = await LocalCluster.start({ model: o.model, workers: 1, threads: o.threads, port: 0, ctxSize: 4 * perSlot, logLevel: process.env.BENCH_LOG ?? 'error' });
  const ls = await startLlamaServer(bin, o.model, o.threads, 4, perSlot);
  try {
    const id = await modelId(c.url);
    const servers = [{ name: 'strata', url: c.url, model: id }, { name: 'llama-server', url: ls.url, model: 'model' }];
    const computed = async () => Number((await workerStats(c.natsUrl, 'p0-s0')).counters!.tokens);
    const wall = new Map<string, number[]>();
    const tokens = new Map<number, number[]>();
    let prompt = 0;
    for (const s of servers) await ask(s.url, s.model, systemPrompt(`warm-up ${s.name}`, sentences));
    for (let r = 0; r < o.reps; r++) {
      for (const s of r % 2 === 0 ? servers : [...servers].reverse()) {
        for (const n of r % 2 === 0 ? [1, 4] : [4, 1]) {
          const before = s.name === 'strata' ? await computed() : 0;
          const t0 = performance.now();
          // (a prompt of its own from the first token: neither server reuses another's cells)
          const a = await ask(s.url, s.model, systemPrompt(`choices ${r} ${n}`, sentences), { n });
          wall.set(`${s.name} ${n}`, [...(wall.get(`${s.name} ${n}`) ?? []), performance.now() - t0]);
          if (s.name === 'strata') tokens.set(n, [...(tokens.get(n) ?? []), (await computed()) - before]);
          prompt = a.prompt;
        }
      }
      step(`choices, repetition ${r + 1}/${o.reps}`);
    }
    console.log(`one request of n choices, ${prompt} prompt tokens, 8 tokens each (${o.threads} threads; Strata one worker, llama-server 4 slots):`);
    const rows = [1, 4].map((n) => ({ n, wallMs: median(wall.get(`strata ${n}`)!), computed: median(tokens.get(n)!), llamaServerMs: median(wall.get(`llama-server ${n}`)!) }));
    for (const r of rows) console.log(`  n = ${r.n}: strata ${Math.round(r.wallMs).toString().padStart(6)} ms, ${String(r.computed).padStart(6)} tokens computed; llama-server ${Math.round(r.llamaServerMs).toString().padStart(6)} ms`);
    console.log(`  4 choices cost ${(rows[1]!.wallMs / rows[0]!.wallMs).toFixed(2)}× one on Strata, ${(rows[1]!.llamaServerMs / rows[0]!.llamaServerMs).toFixed(2)}× on llama-server (4 separate requests: 4×); ` +
      `Strata / llama-server at n = 4: ${(rows[1]!.wallMs / rows[1]!.llamaServerMs).toFixed(2)}× the time`);
    return { prompt, rows };
  } finally {
    ls.proc.kill('SIGTERM');
    await c.stop();
  }
}

/** Many clients at once with one system prompt: llama-server, Strata without the cache, Strata with it. */
async function shared(o: PrefixOptions, bin: string, step: (detail?: string) => void): Promise<unknown> {
  const systemTokensGuess = 30 * o.systemSentences + 8;
  const perSlot = systemTokensGuess + 128;
  console.log(`\nprefix: ${o.model.split('/').pop()}, ${o.clients} clients at once, one system prompt of ${o.systemSentences} sentences + a distinct question each, ` +
    `8 tokens per answer, ${o.threads} threads; alternating, medians of ${o.reps}`);
  const ls = await startLlamaServer(bin, o.model, o.threads, o.clients, perSlot, ['--cache-reuse', '256']);
  // As many cells as llama-server's slots hold together: without the cache every request needs its own copy.
  // Without the cache the requests queue behind each other's prefills for minutes: no time-outs.
  const strata = await LocalCluster.start({
    model: o.model, workers: 1, threads: o.threads, port: 0, ctxSize: o.clients * perSlot, logLevel: process.env.BENCH_LOG ?? 'error',
    gatewayFlags: ['--timeout-ms', '1800000'], coordinatorFlags: ['--seq-op-timeout-ms', '120000'],
  });
  try {
    const sid = await modelId(strata.url);
    const salt = () => randomBytes(8).toString('hex');
    const targets: { name: string; run: (system: string, qs: string[]) => Promise<Run> }[] = [
      { name: 'llama-server', run: (system, qs) => burst(ls.url, 'model', system, qs, () => ({})) },
      { name: 'strata, cache off', run: (system, qs) => burst(strata.url, sid, system, qs, () => ({ cache_salt: salt() })) },
      { name: 'strata, cache on', run: (system, qs) => burst(strata.url, sid, system, qs, () => ({})) },
    ];
    for (const t of targets) await t.run(systemPrompt(`warm-${t.name}`, 4), questionsFor(-1, 2));
    step('warm-up');
    const runs = new Map<string, Run[]>(targets.map((t) => [t.name, []]));
    for (let r = 0; r < o.reps; r++) {
      const order = r % 2 === 0 ? targets : [...targets].reverse();
      for (const t of order) runs.get(t.name)!.push(await t.run(systemPrompt(`${r}-${salt()}`, o.systemSentences), questionsFor(r, o.clients)));
      step(`shared system prompt, repetition ${r + 1}/${o.reps}`);
    }
    return reportShared(runs);
  } finally {
    await strata.stop();
    ls.proc.kill('SIGTERM');
  }
}

function reportShared(runs: Map<string, Run[]>): unknown {
  const rows = [...runs].map(([name, rs]) => {
    const all = rs.flatMap((r) => r.answers);
    return {
      name, computed: median(rs.map((r) => r.answers.reduce((n, a) => n + a.computed, 0))), prompt: median(rs.map((r) => r.answers.reduce((n, a) => n + a.prompt, 0))),
      ttftP50: pct(all.map((a) => a.ttft), 50), ttftP99: pct(all.map((a) => a.ttft), 99), wallMs: median(rs.map((r) => r.wallMs)),
    };
  });
  const on = rows.find((r) => r.name === 'strata, cache on')!;
  console.log(`${'server'.padEnd(18)} ${'prompt tokens'.padStart(13)} ${'computed'.padStart(9)} ${'× on'.padStart(7)} ${'TTFT p50 / p99 ms'.padStart(19)} ${'× on p50'.padStart(9)} ${'wall ms'.padStart(8)}`);
  for (const r of rows) {
    console.log(`${r.name.padEnd(18)} ${String(r.prompt).padStart(13)} ${String(r.computed).padStart(9)} ${(r.computed / on.computed).toFixed(1).padStart(7)} ` +
      `${`${Math.round(r.ttftP50)} / ${Math.round(r.ttftP99)}`.padStart(19)} ${(r.ttftP50 / on.ttftP50).toFixed(1).padStart(9)} ${Math.round(r.wallMs).toString().padStart(8)}`);
  }
  return rows;
}

/**
 * Two pipelines of one worker (one thread each), two system prompts, clients alternating between
 * them, all at once: placed by cached prefix (the default) against least loaded.
 */
async function routing(o: PrefixOptions, step: (detail?: string) => void): Promise<unknown> {
  const n = o.clients;
  const perSlot = 30 * o.systemSentences + 136;
  const start = (flags: string[]) => LocalCluster.start({
    model: o.model, pipelines: 2, workers: 1, threads: Math.max(1, o.threads / 2), port: 0, ctxSize: n * perSlot,
    logLevel: process.env.BENCH_LOG ?? 'error', coordinatorFlags: [...flags, '--seq-op-timeout-ms', '120000'], gatewayFlags: ['--timeout-ms', '1800000'],
  });
  const byPrefix = await start([]);
  const leastLoaded = await start(['--route-by-prefix', 'false']);
  try {
    const clusters = [{ name: 'by cached prefix', c: byPrefix }, { name: 'least loaded', c: leastLoaded }];
    const ids = await Promise.all(clusters.map((x) => modelId(x.c.url)));
    const results = new Map<string, { hit: number[]; ttft: number[]; share: number[]; computed: number[] }>(clusters.map((x) => [x.name, { hit: [], ttft: [], share: [], computed: [] }]));
    for (let r = 0; r < o.reps; r++) {
      const order = r % 2 === 0 ? [0, 1] : [1, 0];
      for (const k of order) {
        const { name, c } = clusters[k]!;
        const workers = ['p0-s0', 'p1-s0'];
        const before = await Promise.all(workers.map((w) => workerStats(c.natsUrl, w)));
        const systems = [systemPrompt(`A${r}-${k}`, o.systemSentences), systemPrompt(`B${r}-${k}`, o.systemSentences)];
        const qs = questionsFor(r, n);
        // A, A, B, B, …: least loaded then puts each prompt on both pipelines.
        const answers = await Promise.all(qs.map((q, i) => ask(c.url, ids[k]!, `${systems[Math.floor(i / 2) % 2]}\n\nQuestion: ${q}`)));
        const after = await Promise.all(workers.map((w) => workerStats(c.natsUrl, w)));
        const work = after.map((s, i) => Number(s.counters!.tokens - before[i]!.counters!.tokens));
        const res = results.get(name)!;
        const prompt = answers.reduce((s, a) => s + a.prompt, 0), computed = answers.reduce((s, a) => s + a.computed, 0);
        res.hit.push(1 - computed / prompt);
        res.computed.push(computed);
        res.ttft.push(...answers.map((a) => a.ttft));
        res.share.push(Math.max(...work) / Math.max(1, work[0]! + work[1]!));
      }
      step(`two pipelines, repetition ${r + 1}/${o.reps}`);
    }
    console.log(`two pipelines (one worker, ${Math.max(1, o.threads / 2)} thread each), two system prompts, ${n} clients at once:`);
    console.log(`${'placement'.padEnd(18)} ${'hit ratio'.padStart(9)} ${'computed'.padStart(9)} ${'TTFT p50 / p99 ms'.padStart(19)} ${'busiest pipeline'.padStart(17)}`);
    const rows = [...results].map(([name, r]) => ({
      name, hit: median(r.hit), computed: median(r.computed), ttftP50: pct(r.ttft, 50), ttftP99: pct(r.ttft, 99), busiestShare: median(r.share),
    }));
    for (const r of rows) {
      console.log(`${r.name.padEnd(18)} ${r.hit.toFixed(3).padStart(9)} ${String(r.computed).padStart(9)} ${`${Math.round(r.ttftP50)} / ${Math.round(r.ttftP99)}`.padStart(19)} ` +
        `${`${(r.busiestShare * 100).toFixed(0)}% of tokens`.padStart(17)}`);
    }
    return rows;
  } finally {
    await byPrefix.stop();
    await leastLoaded.stop();
  }
}

/**
 * A session of `tokens` tokens evicted from the device's cells, and its next turn: time to first
 * token when it comes back from host memory, from disk, and when it is prefilled again (the same
 * conversation as a new session in a scope of its own).
 */
async function tiers(o: PrefixOptions, step: (detail?: string) => void): Promise<unknown> {
  const sentences = Math.round(o.systemSentences * 2);
  const ctx = 30 * sentences + 512;
  const start = (flags: string[]) => LocalCluster.start({
    model: o.model, workers: 1, threads: o.threads, port: 0, ctxSize: ctx, logLevel: process.env.BENCH_LOG ?? 'error',
    workerFlags: flags, gatewayFlags: ['--timeout-ms', '1800000'], coordinatorFlags: ['--seq-op-timeout-ms', '120000'],
  });
  const dir = mkdtempSync(join(tmpdir(), 'strata-bench-tiers-'));
  const host = await start([]);
  const disk = await start(['--kv-host-cache-mib', '0', '--kv-disk-dir', dir]);
  try {
    const ttft = new Map<string, number[]>([['from host memory', []], ['from disk', []], ['prefilled again', []]]);
    let prompt = 0;
    for (let r = 0; r < o.reps; r++) {
      for (const [name, c] of [['from host memory', host], ['from disk', disk]] as const) {
        const id = await modelId(c.url);
        const history = systemPrompt(`T${r}-${name}`, sentences);
        const session = { 'x-session-id': `bench-${r}-${name.split(' ')[1]}` };
        const first = await ask(c.url, id, history, {}, session);
        prompt = first.prompt;
        // A request that reserves every cell (and stops at its first line): the session goes to the tiers.
        await ask(c.url, id, 'Count to ten.', { max_tokens: ctx - 64, stop: ['\n'] });
        const next = await ask(c.url, id, `${history} Go on.`, {}, session);
        if (next.computed > 32) throw new Error(`${name}: the session was not restored (${next.computed} prompt tokens computed)`);
        ttft.get(name)!.push(next.ttft);
        if (name === 'from host memory') {
          const again = await ask(c.url, id, `${history} Go on.`, { cache_salt: `fresh-${r}` });
          ttft.get('prefilled again')!.push(again.ttft);
        }
      }
      step(`tiers, repetition ${r + 1}/${o.reps}`);
    }
    const re = median(ttft.get('prefilled again')!);
    console.log(`an evicted session of ${prompt} tokens, its next turn (one worker, ${o.threads} threads):`);
    const rows = [...ttft].map(([name, xs]) => ({ name, ttftMs: median(xs), speedup: re / median(xs) }));
    for (const r of rows) console.log(`  ${r.name.padEnd(18)} time to first token ${Math.round(r.ttftMs).toString().padStart(6)} ms  (${r.speedup.toFixed(1)}× prefilling it again)`);
    return { tokens: prompt, rows };
  } finally {
    await host.stop();
    await disk.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A streamed completion's arrival times: of the request, and of each chunk that carried text. */
interface Stream { t0: number; times: number[] }

async function streamed(url: string, model: string, prompt: string, maxTokens: number): Promise<Stream> {
  const t0 = performance.now();
  const times: number[] = [];
  const body = { model, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true };
  const { status, tail } = await postStream(`${url}/v1/completions`, body, (e) => {
    if ((e as { choices?: { text?: string }[] }).choices?.[0]?.text) times.push(performance.now());
  });
  if (status !== 200) throw new Error(`HTTP ${status} from ${url}: ${tail}`);
  return { t0, times };
}

const gaps = (s: Stream) => s.times.slice(1).map((t, i) => t - s.times[i]!);

/**
 * Prefill/decode disaggregation: `decoders` sessions decode 160 tokens each while three prompts of
 * `longPrompt` tokens arrive 3 s apart (each answered with 16 tokens); on two pipelines of one
 * worker each (half the threads each): a prefill and a decode pipeline, against two that do both.
 * Time per output token of the decoding sessions (their gaps between tokens), time to first token
 * of the long prompts and the pause a hand-off puts between their first and second token.
 */
async function disagg(o: PrefixOptions, step: (detail?: string) => void): Promise<unknown> {
  const decoders = 4, longs = 3;
  const sentences = Math.max(1, Math.round(o.longPrompt / 28));
  const start = (roles: string[] | undefined) => LocalCluster.start({
    model: o.model, pipelines: 2, workers: 1, threads: Math.max(1, o.threads / 2), port: 0, ctxSize: longs * (o.longPrompt + 256) + decoders * 256, roles,
    logLevel: process.env.BENCH_LOG ?? 'error', coordinatorFlags: ['--seq-op-timeout-ms', '120000', '--rebalance-high', '0'], gatewayFlags: ['--timeout-ms', '1800000'],
  });
  const clusters = [{ name: 'disaggregated', c: await start(['prefill', 'decode']) }, { name: 'colocated', c: await start(undefined) }];
  try {
    const ids = await Promise.all(clusters.map((x) => modelId(x.c.url)));
    for (const [k, { c }] of clusters.entries()) await streamed(c.url, ids[k]!, systemPrompt(`warm-${k}`, 40), 4);
    step('disaggregation warm-up');
    const res = new Map(clusters.map((x) => [x.name, { tpot: [] as number[], ttft: [] as number[], pause: [] as number[], wall: [] as number[] }]));
    for (let r = 0; r < o.reps; r++) {
      for (const k of r % 2 === 0 ? [0, 1] : [1, 0]) {
        const { name, c } = clusters[k]!;
        const t0 = performance.now();
        const decoding = Array.from({ length: decoders }, (_, i) => streamed(c.url, ids[k]!, `Session ${r}-${k}-${i}: tell the story of ${TOPICS[i % TOPICS.length]}.`, 160));
        const long: Promise<Stream>[] = [];
        for (let i = 0; i < longs; i++) {
          await new Promise((w) => setTimeout(w, i === 0 ? 1500 : 3000));
          long.push(streamed(c.url, ids[k]!, `${systemPrompt(`L${r}-${k}-${i}-${randomBytes(4).toString('hex')}`, sentences)}\n\nSummarize the rules.`, 16));
        }
        const [ds, ls] = await Promise.all([Promise.all(decoding), Promise.all(long)]);
        const x = res.get(name)!;
        x.tpot.push(...ds.flatMap(gaps));
        x.ttft.push(...ls.map((s) => (s.times[0] ?? performance.now()) - s.t0));
        x.pause.push(...ls.map((s) => gaps(s)[0] ?? 0));
        x.wall.push(performance.now() - t0);
      }
      step(`disaggregation, repetition ${r + 1}/${o.reps}`);
    }
    const handed = await Promise.all(clusters.map(async ({ c }) => {
      const ps = ((await (await fetch(`${c.url}/admin/v1/cluster`)).json()) as { pipelines: { handoffsOut?: string }[] }).pipelines;
      return ps.reduce((n, p) => n + Number(p.handoffsOut ?? 0), 0);
    }));
    console.log(`disaggregation: ${decoders} sessions decoding 160 tokens each, ${longs} prompts of ~${o.longPrompt} tokens arriving among them (16 tokens each);`);
    console.log(`two pipelines of one worker (${Math.max(1, o.threads / 2)} thread each): a prefill and a decode pipeline, or two that do both; alternating, ${o.reps} reps`);
    console.log(`${'pipelines'.padEnd(14)} ${'decoding TPOT p50 / p99 ms'.padStart(27)} ${'long TTFT p50 / p99 ms'.padStart(23)} ${'1st→2nd token ms'.padStart(17)} ${'hand-offs'.padStart(9)} ${'wall s'.padStart(7)}`);
    const rows = [...res].map(([name, x], i) => ({
      name, tpotP50: pct(x.tpot, 50), tpotP99: pct(x.tpot, 99), ttftP50: pct(x.ttft, 50), ttftP99: pct(x.ttft, 99), pauseP50: pct(x.pause, 50), handOffs: handed[i]!, wallS: median(x.wall) / 1000,
    }));
    for (const r of rows) {
      console.log(`${r.name.padEnd(14)} ${`${r.tpotP50.toFixed(1)} / ${r.tpotP99.toFixed(1)}`.padStart(27)} ${`${Math.round(r.ttftP50)} / ${Math.round(r.ttftP99)}`.padStart(23)} ` +
        `${Math.round(r.pauseP50).toString().padStart(17)} ${String(r.handOffs).padStart(9)} ${r.wallS.toFixed(1).padStart(7)}`);
    }
    return rows;
  } finally {
    for (const { c } of clusters) await c.stop();
  }
}

/**
 * Multi-turn chat with three times more conversations than the KV cells hold: `sessions`
 * conversations of ~1,000 tokens (a system prompt of their own) take three turns each in turn
 * (one client; each turn a short question and 16 tokens of answer, the whole history sent
 * again), against llama-server with as many slots as the cells hold conversations
 * (`--cache-reuse 256`: a slot keeps its last prompt) and Strata's sessions (`x-session-id`: an
 * idle session evicted for another goes to host memory and comes back). Time to first token of
 * the later turns, and the prompt tokens each server computed.
 */
async function multiTurn(o: PrefixOptions, bin: string, step: (detail?: string) => void): Promise<unknown> {
  const fits = 4, sessions = 3 * fits, turns = 3, perSession = 1400;
  const ls = await startLlamaServer(bin, o.model, o.threads, fits, perSession, ['--cache-reuse', '256']);
  const strata = await LocalCluster.start({
    model: o.model, workers: 1, threads: o.threads, port: 0, ctxSize: fits * perSession, logLevel: process.env.BENCH_LOG ?? 'error',
    gatewayFlags: ['--timeout-ms', '1800000'], coordinatorFlags: ['--seq-op-timeout-ms', '120000'],
  });
  try {
    const sid = await modelId(strata.url);
    const targets = [
      { name: 'llama-server', url: ls.url, model: 'model', session: (_: string): Record<string, string> => ({}) },
      { name: 'strata', url: strata.url, model: sid, session: (id: string): Record<string, string> => ({ 'x-session-id': id }) },
    ];
    const res = new Map(targets.map((t) => [t.name, { later: [] as number[], first: [] as number[], computed: [] as number[], prompt: [] as number[] }]));
    for (let r = 0; r < o.reps; r++) {
      for (const t of r % 2 === 0 ? targets : [...targets].reverse()) {
        const tag = `${r}-${randomBytes(4).toString('hex')}`;
        const history = Array.from({ length: sessions }, (_, i) => [{ role: 'system', content: systemPrompt(`M${tag}-${i}`, 33) }]);
        let computed = 0, prompt = 0;
        for (let turn = 0; turn < turns; turn++) {
          for (let i = 0; i < sessions; i++) {
            const messages = [...history[i]!, { role: 'user', content: `Turn ${turn + 1}: what does ledger ${(i + turn) % 9 + 1} say about ${TOPICS[(i + turn) % TOPICS.length]}?` }];
            const a = await ask(t.url, t.model, '', { messages, max_tokens: 16 }, t.session(`mt-${tag}-${i}`));
            history[i] = [...messages, { role: 'assistant', content: a.text }];
            (turn === 0 ? res.get(t.name)!.first : res.get(t.name)!.later).push(a.ttft);
            computed += a.computed;
            prompt += a.prompt;
          }
        }
        res.get(t.name)!.computed.push(computed);
        res.get(t.name)!.prompt.push(prompt);
      }
      step(`multi-turn, repetition ${r + 1}/${o.reps}`);
    }
    console.log(`multi-turn: ${sessions} conversations of ~1,000 tokens, ${turns} turns each in turn, where the cells hold ${fits} (one client, 16 tokens per answer, ${o.threads} threads):`);
    console.log(`${'server'.padEnd(14)} ${'turn 1 TTFT p50 ms'.padStart(19)} ${'later turns TTFT p50 / p99 ms'.padStart(30)} ${'prompt tokens'.padStart(13)} ${'computed'.padStart(9)}`);
    const rows = [...res].map(([name, x]) => ({
      name, firstP50: pct(x.first, 50), laterP50: pct(x.later, 50), laterP99: pct(x.later, 99), prompt: median(x.prompt), computed: median(x.computed),
    }));
    for (const r of rows) {
      console.log(`${r.name.padEnd(14)} ${Math.round(r.firstP50).toString().padStart(19)} ${`${Math.round(r.laterP50)} / ${Math.round(r.laterP99)}`.padStart(30)} ${String(r.prompt).padStart(13)} ${String(r.computed).padStart(9)}`);
    }
    const [l, st] = rows;
    console.log(`later turns: Strata's median time to first token ${(l!.laterP50 / st!.laterP50).toFixed(1)}× lower; ${(l!.computed / Math.max(1, st!.computed)).toFixed(1)}× fewer prompt tokens computed`);
    return rows;
  } finally {
    await strata.stop();
    ls.proc.kill('SIGTERM');
  }
}
