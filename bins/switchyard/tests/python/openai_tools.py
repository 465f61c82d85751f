"""The official `openai` Python SDK against a model served by a translated provider
(Anthropic or Gemini behind Switchyard): text, streaming, and one tool call each way.

Usage: python3 openai_tools.py BASE_URL TEXT_MODEL TOOL_MODEL
"""

import json
import sys

import openai

base_url, text_model, tool_model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key="sk-client", max_retries=0)

completion = client.chat.completions.create(
    model=text_model, messages=[{"role": "user", "content": "Say hello"}]
)
text = completion.choices[0].message.content
assert text and "chunk 0" in text, text
assert completion.choices[0].finish_reason == "stop", completion
assert completion.usage and completion.usage.total_tokens > 0, completion.usage

pieces = []
for chunk in client.chat.completions.create(
    model=text_model,
    messages=[{"role": "user", "content": "Say hello"}],
    stream=True,
    stream_options={"include_usage": True},
):
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
assert "".join(pieces) == text, (pieces, text)

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
completion = client.chat.completions.create(
    model=tool_model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools
)
calls = completion.choices[0].message.tool_calls
assert calls and calls[0].function.name == "get_weather", completion
assert json.loads(calls[0].function.arguments) == {"city": "Paris"}, calls[0].function.arguments
assert completion.choices[0].finish_reason == "tool_calls", completion.choices[0].finish_reason

name, arguments, finish = None, "", None
for chunk in client.chat.completions.create(
    model=tool_model, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=tools, stream=True
):
    for choice in chunk.choices:
        for call in choice.delta.tool_calls or []:
            if call.function and call.function.name:
                name = call.function.name
            if call.function and call.function.arguments:
                arguments += call.function.arguments
        finish = choice.finish_reason or finish
assert name == "get_weather", name
assert json.loads(arguments) == {"city": "Paris"}, arguments
assert finish == "tool_calls", finish

print("openai sdk via translation: ok")
