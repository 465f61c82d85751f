"""Drive a running Switchyard's /v1/messages with the official `anthropic` Python SDK.

Usage: python3 anthropic_sdk.py BASE_URL MODEL EXPECTED_SUBSTRING
Exits non-zero (with a message) on the first failed expectation.
"""

import sys

import anthropic

base_url, model, expected = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-client-never-forwarded", max_retries=0)

message = client.messages.create(
    model=model,
    max_tokens=32,
    extra_body={"temperature": 0},
    system="You are a helpful assistant.",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
)
text = "".join(block.text for block in message.content if block.type == "text")
assert expected in text, f"{expected!r} not in {text!r}"
assert message.role == "assistant", message
assert message.stop_reason in ("end_turn", "max_tokens", "stop_sequence"), message.stop_reason
assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0, message.usage

with client.messages.stream(
    model=model,
    max_tokens=32,
    extra_body={"temperature": 0},
    system="You are a helpful assistant.",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == text, f"stream {streamed!r} != non-stream {text!r}"
assert final.stop_reason == message.stop_reason, (final.stop_reason, message.stop_reason)

count = client.messages.count_tokens(
    model=model, messages=[{"role": "user", "content": "What is the capital of France?"}]
)
assert count.input_tokens > 0, count

try:
    client.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model did not fail")
except anthropic.NotFoundError as error:
    assert error.status_code == 404, error

print("anthropic sdk: ok")
