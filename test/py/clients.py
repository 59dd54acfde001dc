# The Python OpenAI clients against a Strata gateway, unchanged: the official `openai` package and
# LangChain's `langchain-openai`. Run by test/py-clients.test.ts with STRATA_URL and STRATA_MODEL;
# prints one JSON object of what each call returned, for the test to check.
import json
import os
import sys

import openai
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

url, model = os.environ["STRATA_URL"], os.environ["STRATA_MODEL"]
out = {"openai": openai.__version__}
client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

out["models"] = [m.id for m in client.models.list().data]
out["retrieve"] = client.models.retrieve(model).id

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0, seed=3)
out["chat"] = {"text": chat.choices[0].message.content, "finish": chat.choices[0].finish_reason, "usage": chat.usage.completion_tokens, "tier": chat.service_tier}

chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}))
out["stream"] = {
    "first": chunks[0].choices[0].delta.role,
    "text": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
    "usage": chunks[-1].usage.completion_tokens if chunks[-1].usage else None,
}

text = client.completions.create(model=model, prompt="The river ran past the old", max_tokens=6, temperature=0, logprobs=1)
out["completion"] = {"text": text.choices[0].text, "tokens": len(text.choices[0].logprobs.tokens)}

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=1, temperature=3)
    out["bad"] = None
except openai.BadRequestError as e:
    out["bad"] = {"status": e.status_code, "param": e.body.get("param") if isinstance(e.body, dict) else None}

llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=model, temperature=0, max_tokens=12, max_retries=0)
reply = llm.invoke([HumanMessage(content="Say hello.")])
out["langchain"] = {"text": reply.content, "stream": "".join(c.content for c in llm.stream("Say hello."))}
structured = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=model, temperature=0, max_tokens=40, max_retries=0).with_structured_output(
    {"title": "Verdict", "type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}, "required": ["answer"], "additionalProperties": False},
    method="json_schema",
)
out["structured"] = structured.invoke("Is the river long? Answer yes or no.")

# Tools: a model of random weights never calls by itself, so tool_choice forces the calls.
add_tool = {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
called = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What is 2 plus 3?"}], tools=[add_tool],
                                        tool_choice="required", parallel_tool_calls=False, max_tokens=120, temperature=0)
call = called.choices[0].message.tool_calls[0]
out["tool_call"] = {"finish": called.choices[0].finish_reason, "name": call.function.name, "arguments": json.loads(call.function.arguments)}


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# LangChain's tool loop: the bound model calls, the tool runs, its result goes back as a ToolMessage.
base = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=model, temperature=0, max_tokens=120, max_retries=0)
history = [HumanMessage(content="What is 2 plus 3?")]
ai = base.bind_tools([add], tool_choice="add", parallel_tool_calls=False).invoke(history)
results = [ToolMessage(content=str(add.invoke(c["args"])), tool_call_id=c["id"]) for c in ai.tool_calls]
final = base.bind_tools([add], tool_choice="none").invoke(history + [ai] + results)
out["langchain_tools"] = {"calls": [{"name": c["name"], "args": c["args"]} for c in ai.tool_calls], "results": [r.content for r in results],
                          "final": final.content, "final_calls": len(final.tool_calls)}
class_schema = {"title": "Sum", "description": "Two addends", "type": "object",
                "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a", "b"]}
out["structured_tools"] = base.with_structured_output(class_schema, method="function_calling").invoke("Two addends, please.")

# The Responses API: a response, its continuation by previous_response_id, and LangChain on it.
first = client.responses.create(model=model, input="Say hello.", max_output_tokens=12, temperature=0)
second = client.responses.create(model=model, previous_response_id=first.id, input="Again.", max_output_tokens=6, temperature=0)
events = [e.type for e in client.responses.create(model=model, input="Say hello.", max_output_tokens=12, temperature=0, stream=True, store=False)]
lc_responses = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=model, temperature=0, max_tokens=12, max_retries=0, use_responses_api=True)
out["responses"] = {"text": first.output_text, "status": first.status, "second_cached": second.usage.input_tokens_details.cached_tokens,
                    "first_input": first.usage.input_tokens, "events": [events[0], events[-1]], "langchain": lc_responses.invoke("Say hello.").text}

json.dump(out, sys.stdout)
