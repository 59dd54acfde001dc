// Python's OpenAI clients, unchanged, against a cluster: the official `openai` package (3.57) and
// LangChain's `langchain-openai` (1.7.4), installed by the test set-up from PyPI into a cache
// (scripts/ensure-py-clients.mjs). test/py/clients.py makes the calls; this checks what came back:
// models, chat (plain and streamed, with usage), text completions with logprobs, an OpenAI-shaped
// 400 that the client raises as BadRequestError without retrying, LangChain's invoke, stream and
// structured output (json_schema: constrained decoding), a forced tool call, LangChain's tool
// loop (bind_tools, the call run, its ToolMessage sent back), structured output by function
// calling, and the Responses API (a continuation by previous_response_id, a stream of typed events,
// LangChain's use_responses_api).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { ensureDefaultModel } from '@strata/model';
import { LocalCluster } from '../services/cli/src/local-cluster.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

describe('Python OpenAI clients', () => {
  let cluster: LocalCluster;
  let clients: { path: string; python: string };
  before(async () => {
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'ensure-py-clients.mjs'), '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    if (r.status !== 0) throw new Error(`scripts/ensure-py-clients.mjs exited ${r.status}`);
    clients = JSON.parse(r.stdout) as { path: string; python: string };
    cluster = await LocalCluster.start({ model: ensureDefaultModel(), splits: [[{ l0: 0, l1: 4 }, { l0: 4, l1: 8 }]], port: 0, threads: 1, ctxSize: 1024 });
  });
  after(async () => {
    await cluster?.stop();
  });

  it('openai and langchain-openai work unchanged', async () => {
    const model = ((await (await fetch(`${cluster.url}/v1/models`)).json()) as { data: { id: string }[] }).data[0]!.id;
    const r = spawnSync(clients.python, [join(root, 'test', 'py', 'clients.py')], {
      encoding: 'utf8', timeout: 240_000,
      env: { ...process.env, PYTHONPATH: clients.path, STRATA_URL: cluster.url, STRATA_MODEL: model, PYTHONDONTWRITEBYTECODE: '1' },
    });
    assert.equal(r.status, 0, `clients.py failed:\n${r.stderr}`);
    const out = JSON.parse(r.stdout) as {
      openai: string; models: string[]; retrieve: string; chat: { text: string; finish: string; usage: number; tier: string };
      stream: { first: string; text: string; usage: number | null }; completion: { text: string; tokens: number };
      bad: { status: number; param: string | null } | null; langchain: { text: string; stream: string }; structured: { answer?: string } | null;
      tool_call: { finish: string; name: string; arguments: { a: number; b: number } };
      langchain_tools: { calls: { name: string; args: { a: number; b: number } }[]; results: string[]; final: string; final_calls: number };
      structured_tools: { a?: number; b?: number } | null;
      responses: { text: string; status: string; second_cached: number; first_input: number; events: string[]; langchain: string };
    };
    assert.equal(out.openai, '3.57.0');
    assert.deepEqual(out.models, [model]);
    assert.equal(out.retrieve, model);
    assert.ok(out.chat.text.length > 0 && out.chat.usage > 0 && out.chat.usage <= 12, JSON.stringify(out.chat));
    assert.equal(out.chat.tier, 'default');
    assert.equal(out.stream.first, 'assistant', 'a role-only first chunk');
    assert.equal(out.stream.text, out.chat.text, 'streamed and whole answers agree (greedy)');
    assert.equal(out.stream.usage, out.chat.usage);
    assert.ok(out.completion.text.length > 0 && out.completion.tokens > 0, JSON.stringify(out.completion));
    assert.deepEqual(out.bad, { status: 400, param: 'temperature' });
    assert.equal(out.langchain.text, out.chat.text, 'LangChain gets the same answer');
    assert.equal(out.langchain.stream, out.chat.text);
    assert.ok(['yes', 'no'].includes(out.structured?.answer ?? ''), JSON.stringify(out.structured));
    // tools: a forced call with schema-valid arguments, LangChain's tool loop and structured output by function calling
    const valid = (x: { a?: number; b?: number } | null) => Number.isInteger(x?.a) && Number.isInteger(x?.b) && x!.a! >= 0 && x!.a! <= 99 && x!.b! >= 0 && x!.b! <= 99;
    assert.equal(out.tool_call.finish, 'tool_calls');
    assert.equal(out.tool_call.name, 'add');
    assert.ok(valid(out.tool_call.arguments), JSON.stringify(out.tool_call));
    assert.equal(out.langchain_tools.calls.length, 1);
    assert.equal(out.langchain_tools.calls[0]!.name, 'add');
    const lc = out.langchain_tools.calls[0]!.args;
    assert.ok(Number.isInteger(lc.a) && Number.isInteger(lc.b), JSON.stringify(lc));
    assert.deepEqual(out.langchain_tools.results, [String(lc.a + lc.b)], 'the tool ran on the parsed arguments');
    assert.ok(out.langchain_tools.final.length > 0 && out.langchain_tools.final_calls === 0, JSON.stringify(out.langchain_tools));
    assert.ok(valid(out.structured_tools) && out.structured_tools!.a! <= 9 && out.structured_tools!.b! <= 9, JSON.stringify(out.structured_tools));
    // the Responses API: the same greedy answer as chat, a continuation on cached cells, typed events, LangChain on it
    assert.equal(out.responses.text, out.chat.text);
    assert.ok(out.responses.second_cached >= out.responses.first_input, JSON.stringify(out.responses));
    assert.deepEqual(out.responses.events, ['response.created', `response.${out.responses.status}`]);
    assert.equal(out.responses.langchain, out.chat.text);
  });
});
