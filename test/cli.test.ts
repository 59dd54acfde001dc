// The strata command as a user runs it: a separate process, JSON out, clear errors.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Vocab } from '@strata/ggml';
import { Pipeline, generate } from '@strata/model';

const root = join(import.meta.dirname, '..');
const dir = mkdtempSync(join(tmpdir(), 'strata-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function strata(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(root, 'bin/strata.mjs'), ...args], { encoding: 'utf8', cwd: root });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('strata command', () => {
  const model = join(dir, 'cli.gguf');

  it('model synth writes a model that model info describes', () => {
    const r = strata('model', 'synth', '--out', model, '--arch', 'llama', '--n-layer', '4', '--n-embd', '128', '--n-head', '4',
      '--n-head-kv', '2', '--n-ff', '256', '--n-ctx-train', '512', '--seed', '7');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /4 layers/);
    const info = strata('model', 'info', '--model', model, '--json');
    assert.equal(info.code, 0, info.stderr);
    const hp = JSON.parse(info.stdout);
    assert.equal(hp.nLayer, 4);
    assert.equal(hp.nHeadKv, 2);
    assert.equal(hp.arch, 'llama');
    // --split: what each stage loads; the stages of a model with its own head load every tensor once
    const split = strata('model', 'info', '--model', model, '--split', '0:1,1:4', '--json');
    assert.equal(split.code, 0, split.stderr);
    const s = JSON.parse(split.stdout) as { tensorBytes: number; tensors: number; stages: { layers: string; tensors: number; bytes: number; byType: Record<string, number> }[] };
    assert.deepEqual(s.stages.map((x) => x.layers), ['0:1', '1:4']);
    assert.equal(s.stages.reduce((n, x) => n + x.bytes, 0), s.tensorBytes);
    assert.equal(s.stages.reduce((n, x) => n + x.tensors, 0), s.tensors);
    assert.ok(s.stages.every((x) => x.bytes === Object.values(x.byType).reduce((a, b) => a + b, 0) && x.byType.f16! > 0), JSON.stringify(s.stages));
    const text = strata('model', 'info', '--model', model, '--split', '0:1,1:4');
    assert.match(text.stdout, /stage +layers +tensors +weights +read\/token +by type\n +0 +0:1 .* MiB +[\d.]+ MiB +f16 /);
    const bad = strata('model', 'info', '--model', model, '--split', '0:2,1:4');
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--split: .*overlaps/);
    // --stages: the split whose stage with the most to read per token reads least of all splits
    type Stages = { stages: { layers: string; decodeBytes: number }[] };
    const worst = (args: string[]) => {
      const r = strata('model', 'info', '--model', model, ...args, '--json');
      assert.equal(r.code, 0, r.stderr);
      const st = (JSON.parse(r.stdout) as Stages).stages;
      assert.ok(st.every((x) => x.decodeBytes > 0), r.stdout);
      return { layers: st.map((x) => x.layers).join(','), most: Math.max(...st.map((x) => x.decodeBytes)) };
    };
    const balanced = worst(['--stages', '2']);
    const all = ['0:1,1:4', '0:2,2:4', '0:3,3:4'].map((sp) => worst(['--split', sp]));
    assert.equal(balanced.most, Math.min(...all.map((x) => x.most)), JSON.stringify({ balanced, all }));
    assert.ok(all.some((x) => x.layers === balanced.layers));
    assert.equal(strata('model', 'info', '--model', model, '--stages', '2', '--split', '0:1,1:4').code, 2);
    assert.match(strata('model', 'info', '--model', model, '--stages', '5').stderr, /--stages: cannot split 4 layers into 5 stages/);
  });

  it('generate --json with a split prints the tokens the library generates unsplit', () => {
    const r = strata('generate', '--model', model, '--prompt', 'The lighthouse keeper', '--n-predict', '16', '--split', '0:1,1:4',
      '--threads', '2', '--seed', '3', '--temperature', '0.7', '--json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { tokens: number[]; text: string };
    const vocab = Vocab.load(model);
    const p = Pipeline.open({ model, threads: 2, ctxSize: 4096 });
    try {
      const ref = generate(p, vocab, vocab.tokenize('The lighthouse keeper'), {
        nPredict: 16, seed: 3, temperature: 0.7, topK: 40, topP: 0.95, minP: 0.05, repeatPenalty: 1,
      });
      assert.deepEqual(out.tokens, ref.tokens);
      assert.equal(out.text, vocab.detokenize(ref.tokens));
    } finally {
      p.dispose();
      vocab.dispose();
    }
  });

  it('logits --json gives the top K pairs at every position', () => {
    const r = strata('logits', '--model', model, '--prompt', 'One two three four', '--top', '3', '--split', '0:2,2:4', '--json');
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { tokens: number[]; positions: { pos: number; top: [number, number][] }[] };
    assert.equal(out.positions.length, out.tokens.length);
    for (const p of out.positions) {
      assert.equal(p.top.length, 3);
      assert.ok(p.top[0]![1] >= p.top[1]![1] && p.top[1]![1] >= p.top[2]![1], 'largest first');
    }
  });

  it('bad input ends with a clear message and a non-zero code, never a stack trace', () => {
    const cases: [string[], RegExp, number][] = [
      [['generate', '--model', join(dir, 'nope.gguf')], /nope\.gguf: no such file/, 1],
      [['generate', '--model', model, '--split', '0:2,3:4'], /layers 2:3 uncovered/, 1],
      [['generate', '--model', model, '--n-predict', 'many'], /--n-predict must be an integer/, 2],
      [['generate', '--model', model, '--bogus', '1'], /unknown flag --bogus/, 2],
      [['model', 'synth', '--out', join(dir, 'x.gguf'), '--arch', 'gpt9'], /--arch must be one of llama, qwen2, qwen3, phi3, exaone4, gemma2, gemma3/, 2],
      [['frobnicate'], /unknown command 'frobnicate'/, 2],
      [['up', '--split', 'lopsided', '--once'], /--split must be even or balanced, got 'lopsided'/, 2],
    ];
    for (const [args, msg, code] of cases) {
      const r = strata(...args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
  });
});

describe('strata up', () => {
  it('with STRATA_API_KEYS_FILE answers its first request with a key; strata status finds it; no secret on a command line', async () => {
    const run = join(dir, 'run');
    const keys = join(dir, 'up-keys');
    writeFileSync(keys, '# keys\nsk-up-user-0123456789abcdef user\nsk-up-admin-0123456789abcdef admin\n');
    const env = { ...process.env, XDG_RUNTIME_DIR: run, STRATA_API_KEYS_FILE: keys, STRATA_NATS_URL: '' };
    const up = spawn(process.execPath, [join(root, 'bin/strata.mjs'), 'up', '--port', '0', '--workers', '1', '--ctx-size', '512', '--max-tokens', '4'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    up.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    up.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const exited = new Promise<number | null>((resolve) => up.on('exit', (code) => resolve(code)));
    try {
      for (let i = 0; i < 600 && !out.includes('Strata is serving'); i++) {
        if (up.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.match(out, /Strata is serving model 'default-llama-8x256-s42-f16'/, out);
      const file = join(run, 'strata', 'up.json');
      assert.equal(statSync(file).mode & 0o777, 0o600, 'the run file is the user\'s only');
      const recorded = JSON.parse(readFileSync(file, 'utf8')) as { url: string; natsUrl: string };
      // strata status, with no --nats-url and no STRATA_NATS_URL, reaches this cluster as the operator
      const st = spawnSync(process.execPath, [join(root, 'bin/strata.mjs'), 'status', '--json'], { encoding: 'utf8', cwd: root, env });
      assert.equal(st.status, 0, st.stderr);
      assert.equal((JSON.parse(st.stdout) as { cluster: { pipelines: unknown[] } }).cluster.pipelines.length, 1);
      // the gateway wants a key: the user key works, none is refused
      assert.equal((await fetch(`${recorded.url}/v1/models`)).status, 401);
      assert.equal((await fetch(`${recorded.url}/v1/models`, { headers: { authorization: 'Bearer sk-up-user-0123456789abcdef' } })).status, 200);
      // no process of the cluster has a password on its command line
      const password = new URL(recorded.natsUrl).password;
      assert.ok(password.length >= 20);
      const pids = spawnSync('pgrep', ['-f', 'bin/strata.mjs (worker|coordinator|gateway)'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean);
      assert.ok(pids.length >= 3);
      for (const pid of pids) {
        let cmdline = '';
        try {
          cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        } catch {
          continue; // (a process of another test that just ended)
        }
        assert.ok(!cmdline.includes(password) && !cmdline.includes('sk-up-'), `pid ${pid} has a secret on its command line`);
      }
      up.kill('SIGINT');
      assert.equal(await exited, 0, out);
      assert.ok(!existsSync(file), 'the run file goes with the run');
    } finally {
      // (on a failure: the whole process group, so that no service outlives the test)
      if (up.exitCode === null) process.kill(-up.pid!, 'SIGKILL');
    }
  });

  it('killed with SIGKILL, leaves no Strata service running', async () => {
    const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run-kill'), STRATA_NATS_URL: '' };
    const up = spawn(process.execPath, [join(root, 'bin/strata.mjs'), 'up', '--port', '0', '--workers', '1', '--ctx-size', '512', '--max-tokens', '2'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    up.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    try {
      for (let i = 0; i < 600 && !out.includes('Strata is serving') && up.exitCode === null; i++) await new Promise((r) => setTimeout(r, 200));
      assert.match(out, /Strata is serving/);
      const services = spawnSync('pgrep', ['-P', String(up.pid), '-f', 'bin/strata.mjs'], { encoding: 'utf8' }).stdout.trim().split('\n').filter(Boolean).map(Number);
      assert.equal(services.length, 3, 'a coordinator, a worker and a gateway');
      up.kill('SIGKILL');
      const alive = () => services.filter((pid) => {
        try {
          process.kill(pid, 0);
          return true;
        } catch {
          return false;
        }
      });
      for (let i = 0; i < 100 && alive().length > 0; i++) await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(alive(), [], 'every service stopped by itself once strata up was gone');
    } finally {
      try {
        process.kill(-up.pid!, 'SIGKILL'); // (nats-server and redis-server, which do not watch their parent)
      } catch {
        // gone already
      }
    }
  });
});
