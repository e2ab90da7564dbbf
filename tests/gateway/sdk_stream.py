"""The official Anthropic Python SDK pointed at the My Jarvis LLM gateway.

Run by tests/tests/gateway.rs with GATEWAY_URL and MEMBER_TOKEN set; prints one JSON line.
"""
import json
import os

import anthropic

url = os.environ["GATEWAY_URL"]
client = anthropic.Anthropic(base_url=url, api_key=os.environ["MEMBER_TOKEN"], max_retries=0)
messages = [{"role": "user", "content": "hi"}]

with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=messages,
    extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()

count = client.messages.count_tokens(model="claude-sonnet-4-5", messages=messages)

unauthenticated = None
try:
    anthropic.Anthropic(base_url=url, api_key="jt_wrong", max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=8, messages=messages
    )
except anthropic.AuthenticationError as e:
    unauthenticated = type(e).__name__

print(
    json.dumps(
        {
            "text": text,
            "usage": final.usage.model_dump(),
            "count_tokens": count.input_tokens,
            "unauthenticated": unauthenticated,
        }
    )
)
