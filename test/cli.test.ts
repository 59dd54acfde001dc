// The strata command as a user runs it: a separate process, JSON out, clear errors.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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
      [['model', 'synth', '--out', join(dir, 'x.gguf'), '--arch', 'gpt9'], /--arch must be one of llama, qwen2, exaone4/, 2],
      [['frobnicate'], /unknown command 'frobnicate'/, 2],
    ];
    for (const [args, msg, code] of cases) {
      const r = strata(...args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
    }
  });
});
