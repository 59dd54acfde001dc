// OpenAI function calling, as a request states it: `tools`, `tool_choice`, `parallel_tool_calls`,
// the legacy `functions` / `function_call`, and the messages that carry calls and their results.
// Everything is checked here, before anything reaches the cluster; each problem is a 400 naming
// the parameter.
import { ApiError } from './errors.ts';

/** A function the model may call. */
export interface ToolSpec {
  name: string;
  description: string;
  /** the JSON schema of the arguments (null: any object) */
  parameters: Record<string, unknown> | null;
  /** OpenAI's strict: the arguments must follow the schema exactly (an unenforceable schema is a 400) */
  strict: boolean;
}

/** How the model may call tools: not at all, as it likes, at least once, or `name` once or more. */
export interface ToolChoice {
  mode: 'none' | 'auto' | 'required';
  /** the functions that count ('required' with one name: OpenAI's named tool_choice) */
  allowed: string[];
}

/** A call the model made, as messages and responses carry it. */
export interface ToolCall {
  id: string;
  name: string;
  /** the arguments as JSON text */
  arguments: string;
}

/** What a chat request asks of tools. */
export interface ToolRequest {
  tools: ToolSpec[];
  choice: ToolChoice;
  /** more than one call per turn (OpenAI's parallel_tool_calls, default true) */
  parallel: boolean;
  /** the request used the legacy `functions`: the answer carries `function_call` */
  legacy: boolean;
}

type Body = Record<string, unknown>;

/** Function names as OpenAI takes them. */
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

/** Most tools in one request (OpenAI's limit). */
export const MAX_TOOLS = 128;

function bad(param: string, message: string): ApiError {
  return new ApiError(400, 'invalid_value', message, param);
}

function isRecord(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** One function definition ({name, description?, parameters?, strict?}) at `param`. */
function functionSpec(f: unknown, param: string): ToolSpec {
  if (!isRecord(f)) throw bad(param, `'${param}' must be an object with a 'name'`);
  for (const k of Object.keys(f)) {
    if (!['name', 'description', 'parameters', 'strict'].includes(k)) throw new ApiError(400, 'unknown_parameter', `unknown parameter '${param}.${k}'`, `${param}.${k}`);
  }
  if (typeof f.name !== 'string' || !NAME.test(f.name)) throw bad(`${param}.name`, "a function's 'name' is 1-64 of A-Z a-z 0-9 _ -");
  if (f.description !== undefined && f.description !== null && typeof f.description !== 'string') throw bad(`${param}.description`, "'description' must be a string");
  const p = f.parameters;
  if (p !== undefined && p !== null && !isRecord(p)) throw bad(`${param}.parameters`, "'parameters' must be a JSON schema object");
  if (f.strict !== undefined && f.strict !== null && typeof f.strict !== 'boolean') throw bad(`${param}.strict`, "'strict' must be a boolean");
  return { name: f.name, description: (f.description as string | undefined) ?? '', parameters: (p as Body | undefined) ?? null, strict: f.strict === true };
}

/** `tools`: function tools only (custom tools, web search and the like have no counterpart here). */
function tools(v: unknown): ToolSpec[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw bad('tools', "'tools' must be an array");
  if (v.length > MAX_TOOLS) throw bad('tools', `'tools' holds at most ${MAX_TOOLS} functions`);
  return v.map((t, i) => {
    if (!isRecord(t)) throw bad(`tools[${i}]`, 'a tool is an object');
    if (t.type !== 'function') throw new ApiError(400, 'unsupported_parameter', `only tools of type 'function' are served, got '${String(t.type)}'`, `tools[${i}].type`);
    for (const k of Object.keys(t)) if (k !== 'type' && k !== 'function') throw new ApiError(400, 'unknown_parameter', `unknown parameter 'tools[${i}].${k}'`, `tools[${i}].${k}`);
    return functionSpec(t.function, `tools[${i}].function`);
  });
}

/** `tool_choice` against the declared tools. */
function toolChoice(v: unknown, declared: readonly ToolSpec[]): ToolChoice {
  const all = declared.map((t) => t.name);
  const known = (name: unknown, param: string): string => {
    if (typeof name !== 'string' || !all.includes(name)) throw bad(param, `'${param}' names no function in 'tools' (${all.join(', ') || 'none given'})`);
    return name;
  };
  if (v === undefined || v === null) return { mode: declared.length > 0 ? 'auto' : 'none', allowed: all };
  if (v === 'none' || v === 'auto' || v === 'required') {
    if (v !== 'none' && declared.length === 0) throw bad('tool_choice', `'tool_choice' is '${v}' but no 'tools' are given`);
    return { mode: v, allowed: all };
  }
  if (!isRecord(v)) throw bad('tool_choice', "'tool_choice' is none, auto, required, {\"type\": \"function\", \"function\": {\"name\": …}} or {\"type\": \"allowed_tools\", …}");
  if (v.type === 'function') {
    return { mode: 'required', allowed: [known(isRecord(v.function) ? v.function.name : undefined, 'tool_choice.function.name')] };
  }
  if (v.type === 'allowed_tools') {
    const a = v.allowed_tools;
    if (!isRecord(a) || (a.mode !== 'auto' && a.mode !== 'required') || !Array.isArray(a.tools) || a.tools.length === 0) {
      throw bad('tool_choice.allowed_tools', "'allowed_tools' is {\"mode\": \"auto\" | \"required\", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": …}}, …]}");
    }
    const allowed = a.tools.map((t, i) => {
      const param = `tool_choice.allowed_tools.tools[${i}]`;
      if (!isRecord(t) || t.type !== 'function') throw bad(param, 'an allowed tool is {"type": "function", "function": {"name": …}}');
      return known(isRecord(t.function) ? t.function.name : t.name, `${param}.function.name`);
    });
    return { mode: a.mode, allowed: [...new Set(allowed)] };
  }
  throw bad('tool_choice.type', `'tool_choice.type' must be function or allowed_tools, got '${String(v.type)}'`);
}

/**
 * Reads the tool parameters of a chat body: `tools`, `tool_choice`, `parallel_tool_calls`, or the
 * legacy `functions` and `function_call` (answered with `function_call`, one call a turn).
 */
export function parseToolRequest(b: Body): ToolRequest {
  const legacy = b.functions !== undefined && b.functions !== null;
  if (legacy && b.tools !== undefined && b.tools !== null) throw bad('functions', "give 'tools' or the legacy 'functions', not both");
  if (!legacy && b.function_call !== undefined && b.function_call !== null) throw bad('function_call', "'function_call' needs 'functions'");
  let declared: ToolSpec[];
  let choice: ToolChoice;
  if (legacy) {
    if (!Array.isArray(b.functions)) throw bad('functions', "'functions' must be an array");
    if (b.functions.length > MAX_TOOLS) throw bad('functions', `'functions' holds at most ${MAX_TOOLS} functions`);
    declared = b.functions.map((f, i) => functionSpec(f, `functions[${i}]`));
    const fc = b.function_call;
    choice = fc === undefined || fc === null || fc === 'auto' || fc === 'none'
      ? { mode: fc === 'none' ? 'none' : 'auto', allowed: declared.map((t) => t.name) }
      : toolChoice({ type: 'function', function: fc }, declared);
  } else {
    declared = tools(b.tools);
    choice = toolChoice(b.tool_choice, declared);
  }
  const names = new Set<string>();
  for (const [i, t] of declared.entries()) {
    if (names.has(t.name)) throw bad(`${legacy ? 'functions' : 'tools'}[${i}].function.name`, `two functions are named '${t.name}'`);
    names.add(t.name);
  }
  const p = b.parallel_tool_calls;
  if (p !== undefined && p !== null && typeof p !== 'boolean') throw bad('parallel_tool_calls', "'parallel_tool_calls' must be a boolean");
  return { tools: declared, choice, parallel: legacy ? false : p !== false, legacy };
}

/** The calls of an assistant message (`tool_calls`, or the legacy `function_call`). */
export function messageCalls(m: Body, i: number): ToolCall[] {
  const out: ToolCall[] = [];
  const fn = (f: unknown, id: string, param: string) => {
    if (!isRecord(f) || typeof f.name !== 'string' || f.name === '' || typeof f.arguments !== 'string') {
      throw bad(param, "a call's 'function' is {\"name\": …, \"arguments\": \"<JSON text>\"}");
    }
    out.push({ id, name: f.name, arguments: f.arguments });
  };
  if (m.tool_calls !== undefined && m.tool_calls !== null) {
    if (!Array.isArray(m.tool_calls)) throw bad(`messages[${i}].tool_calls`, "'tool_calls' must be an array");
    m.tool_calls.forEach((c, k) => {
      const param = `messages[${i}].tool_calls[${k}]`;
      if (!isRecord(c) || typeof c.id !== 'string' || c.id === '' || (c.type !== undefined && c.type !== 'function')) {
        throw bad(param, 'a tool call is {"id": …, "type": "function", "function": {"name": …, "arguments": …}}');
      }
      fn(c.function, c.id, `${param}.function`);
    });
  }
  if (m.function_call !== undefined && m.function_call !== null) fn(m.function_call, `call_${i}`, `messages[${i}].function_call`);
  return out;
}
