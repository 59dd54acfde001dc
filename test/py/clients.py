# The Python OpenAI clients against a Strata gateway, unchanged: the official `openai` package and
# LangChain's `langchain-openai`. Run by test/py-clients.test.ts with STRATA_URL and STRATA_MODEL;
# prints one JSON object of what each call returned, for the test to check.
import json
import os
import sys

import openai
from langchain_core.messages import HumanMessage
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

json.dump(out, sys.stdout)
