// How a model family writes tool calls, and how tools, calls and results go into its prompt.
// Three families (docs/api.md, "Tool calling"):
//   hermes  — Qwen 2.5/3, Hermes and every template without a format of its own:
//             <tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>, results in <tool_response>
//   llama3  — Llama 3.x JSON calls {"name": …, "parameters": {…}}, results as the `ipython` role
//   mistral — [TOOL_CALLS][{"name": …, "arguments": {…}}, …], results in [TOOL_RESULTS]
// The chat template itself stays libllama's; this module only writes the text of the turns.
import type { ChatMessage } from '@strata/ggml';
import { GbnfBuilder, literal } from './json-grammar-gbnf.ts';
import { jsonObject } from './json-grammar-primitives.ts';
import { JsonSchemaError, jsonSchemaGrammar, jsonSchemaRule } from './json-grammar.ts';
import type { ChatTurn } from './openai-request.ts';
import type { ToolCall, ToolRequest, ToolSpec } from './tool-request.ts';

/** A family's way of writing tool calls. */
export type ToolFormat = 'hermes' | 'llama3' | 'mistral';

/** The family a chat template (its text, or a libllama template name) writes calls in. */
export function toolFormatOf(template: string): ToolFormat {
  if (template.includes('<tool_call>')) return 'hermes';
  if (template === 'llama3' || template.includes('<|start_header_id|>')) return 'llama3';
  if (template.startsWith('mistral') || template.includes('[TOOL_CALLS]') || template.includes('[INST]')) return 'mistral';
  return 'hermes';
}

/** Text that marks calls in a family's output (tokens spelling them are shown, even when special). */
export function toolMarkers(format: ToolFormat): string[] {
  if (format === 'hermes') return ['<tool_call>', '</tool_call>'];
  if (format === 'llama3') return ['<|python_tag|>'];
  return ['[TOOL_CALLS]'];
}

/** The JSON a tool is described with in a prompt (OpenAI's own shape, as the templates print it). */
function toolJson(t: ToolSpec): string {
  const fn: Record<string, unknown> = { name: t.name };
  if (t.description) fn.description = t.description;
  fn.parameters = t.parameters ?? { type: 'object', properties: {} };
  return JSON.stringify({ type: 'function', function: fn });
}

/** The arguments of a call as the prompt shows them: compact JSON when they parse, else as given. */
function argumentsJson(c: ToolCall): string {
  try {
    return JSON.stringify(JSON.parse(c.arguments));
  } catch {
    return c.arguments.trim() || '{}';
  }
}

/** The system-prompt text that offers `tools` to the model. */
function toolsPrompt(format: ToolFormat, tools: readonly ToolSpec[]): string {
  const list = tools.map(toolJson);
  if (format === 'llama3') {
    return 'You have access to the following functions. To call a function, respond with a JSON object for the call with its proper arguments, '
      + 'in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n'
      + list.join('\n\n');
  }
  if (format === 'mistral') return `[AVAILABLE_TOOLS][${list.join(', ')}][/AVAILABLE_TOOLS]`;
  return '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n'
    + 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n'
    + list.join('\n')
    + '\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n'
    + '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>';
}

/** An assistant turn's calls as the family writes them. */
function callsText(format: ToolFormat, calls: readonly ToolCall[]): string {
  if (format === 'llama3') return calls.map((c) => `{"name": ${JSON.stringify(c.name)}, "parameters": ${argumentsJson(c)}}`).join('\n');
  if (format === 'mistral') return `[TOOL_CALLS][${calls.map((c) => `{"name": ${JSON.stringify(c.name)}, "arguments": ${argumentsJson(c)}}`).join(', ')}]`;
  return calls.map((c) => `<tool_call>\n{"name": ${JSON.stringify(c.name)}, "arguments": ${argumentsJson(c)}}\n</tool_call>`).join('\n');
}

/**
 * The turns of a chat as the template takes them: the offered tools appended to the system
 * prompt (one is added when there is none), assistant calls written in the family's format, and
 * tool results as the family reads them (hermes: consecutive results in one user turn).
 */
export function toolTurns(format: ToolFormat, turns: readonly ChatTurn[], req: ToolRequest): ChatMessage[] {
  const out: ChatMessage[] = [];
  if (req.choice.mode !== 'none' && req.tools.length > 0) {
    const offered = req.tools.filter((t) => req.choice.allowed.includes(t.name));
    const block = toolsPrompt(format, offered);
    const first = turns[0];
    if (first?.role === 'system') out.push({ role: 'system', content: `${first.content}\n\n${block}` });
    else out.push({ role: 'system', content: block });
    turns = first?.role === 'system' ? turns.slice(1) : turns;
  }
  for (const t of turns) {
    if (t.role === 'assistant' && t.calls && t.calls.length > 0) {
      const calls = callsText(format, t.calls);
      out.push({ role: 'assistant', content: t.content ? `${t.content}\n${calls}` : calls });
    } else if (t.role === 'tool') {
      if (format === 'llama3') {
        out.push({ role: 'ipython', content: t.content });
      } else if (format === 'mistral') {
        out.push({ role: 'user', content: `[TOOL_RESULTS]${JSON.stringify({ call_id: t.callId ?? '', content: t.content })}[/TOOL_RESULTS]` });
      } else {
        const text = `<tool_response>\n${t.content}\n</tool_response>`;
        const prev = out[out.length - 1];
        if (prev?.role === 'user' && prev.content.endsWith('</tool_response>')) prev.content += `\n${text}`;
        else out.push({ role: 'user', content: text });
      }
    } else {
      out.push({ role: t.role, content: t.content });
    }
  }
  return out;
}

/** A tool whose schema the grammar cannot enforce; `index` is its place in `tools`. */
export class ToolSchemaError extends Error {
  readonly index: number;
  constructor(index: number, err: JsonSchemaError) {
    super(`a strict tool's parameters cannot be enforced: ${err.message}`);
    this.name = 'ToolSchemaError';
    this.index = index;
  }
}

/**
 * Which tools' parameter schemas the grammar enforces: every schema it can compile. A `strict`
 * tool whose schema it cannot is a ToolSchemaError (OpenAI refuses those too); another tool's
 * arguments are then held to any JSON object.
 */
export function enforceableTools(tools: readonly ToolSpec[]): Set<string> {
  const ok = new Set<string>();
  tools.forEach((t, i) => {
    if (t.parameters === null) return;
    try {
      jsonSchemaGrammar(t.parameters);
      ok.add(t.name);
    } catch (err) {
      if (!(err instanceof JsonSchemaError)) throw err;
      if (t.strict) throw new ToolSchemaError(i, err);
    }
  });
  return ok;
}

/**
 * The grammar of a turn that must call tools (tool_choice required or a named function): one
 * call of an allowed function, or several when parallel calls are allowed, in the family's
 * format, each with arguments of its schema. `answer` adds the alternative of a plain answer
 * (a rule of `b`, e.g. a response_format schema) for a turn that may call tools or answer.
 */
export function toolGrammar(format: ToolFormat, req: ToolRequest, enforced: ReadonlySet<string>, answer?: (b: GbnfBuilder) => string): string {
  // Calls are written as models learnt them: at most one space between JSON tokens.
  const b = new GbnfBuilder('" "?');
  const root = b.reserve('root');
  const argsKey = format === 'llama3' ? 'parameters' : 'arguments';
  const alts = req.tools.filter((t) => req.choice.allowed.includes(t.name)).map((t) => {
    const args = enforced.has(t.name) ? jsonSchemaRule(b, t.parameters, `args-${t.name}`) : jsonObject(b);
    return `${literal(`{"name": ${JSON.stringify(t.name)}, "${argsKey}": `)} ${args} "}"`;
  });
  const call = b.add('call', alts.join(' | '));
  let calls: string;
  if (format === 'mistral') {
    calls = `${literal('[TOOL_CALLS][')} ${call} ${req.parallel ? `( ", " ${call} )* ` : ''}"]"`;
  } else {
    const one = format === 'hermes' ? b.add('tool-call', `${literal('<tool_call>\n')} ${call} ${literal('\n</tool_call>')}`) : call;
    calls = req.parallel ? `${one} ( "\\n" ${one} )*` : one;
  }
  b.define(root, answer ? `${b.add('calls', calls)} | ${answer(b)}` : calls);
  return b.render();
}
