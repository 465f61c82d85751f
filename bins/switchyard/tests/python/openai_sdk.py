"""Drive a running Switchyard with the official `openai` Python SDK.

Usage: python3 openai_sdk.py BASE_URL MODEL
Exits non-zero (with a message) on the first failed expectation.
"""

import sys

import openai

base_url, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key="sk-client-key-never-forwarded", max_retries=0)

models = [m.id for m in client.models.list()]
assert model in models, f"{model} not in {models}"

completion = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Say hello"}], temperature=0
)
text = completion.choices[0].message.content
assert text and "chunk 0" in text, f"unexpected content: {text!r}"
assert completion.choices[0].finish_reason == "stop", completion
assert completion.usage is not None and completion.usage.completion_tokens > 0, completion.usage

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
assert streamed == text, f"stream {streamed!r} != non-stream {text!r}"
assert finish == "stop", finish
assert usage is not None and usage.total_tokens > 0, usage

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model did not fail")
except openai.NotFoundError as error:
    assert error.status_code == 404, error
    assert "no-such-model" in str(error), error

print("openai sdk: ok")
