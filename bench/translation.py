"""What translating between Anthropic's Messages API and OpenAI's chat completions costs, per request and per
streamed event: the pure functions alone, in this process, so that nothing else on the machine is measured.

    .venv/bin/python bench/translation.py            # about 10 s
    .venv/bin/python bench/translation.py --quick    # smoke run

A request is a Messages request (system, three turns, one tool) into a chat completion plus the completion's
answer back into a message; an event is one text chunk of a 20-chunk stream through the stream translator (its
`message_start`, block starts and stops and closing events counted in). Medians of 7 rounds; targets from issue 14:
at most 0.1 ms per request and 5 µs per event.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from gateway.protocols.anthropic_to_openai import StreamTranslator, chat_request, message_answer

REQUEST: dict[str, Any] = {
    "model": "agent",
    "max_tokens": 1024,
    "system": "You are a helpful assistant for a travel company. Answer briefly.",
    "tools": [{"name": "get_weather", "description": "Weather for a city.",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
    "messages": [
        {"role": "user", "content": "I am flying to Paris next week. What should I pack?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check the weather."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Rain, 12 C"},
                                     {"type": "text", "text": "And what about shoes?"}]},
    ],
}  # fmt: skip
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Pack a raincoat and waterproof shoes. " * 8}}],
    "usage": {"prompt_tokens": 180, "completion_tokens": 70, "total_tokens": 250},
}  # fmt: skip
CHUNKS = 20


def stream_bytes() -> bytes:
    """A 20-chunk text stream as an OpenAI upstream sends it, with the usage chunk and [DONE]."""
    events = []
    for index in range(CHUNKS):
        choice = {"index": 0, "delta": {"content": f"word{index} and more "}, "finish_reason": None}
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "up", "choices": [choice]}
        events.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    done = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20}}
    events += [b"data: " + json.dumps(done).encode() + b"\n\n", b"data: " + json.dumps(usage).encode() + b"\n\n"]
    return b"".join(events) + b"data: [DONE]\n\n"


def per_request_us(iterations: int) -> float:
    began = time.perf_counter()
    for _ in range(iterations):
        chat_request(REQUEST)
        message_answer(COMPLETION, model="agent")
    return (time.perf_counter() - began) / iterations * 1e6


def per_event_us(iterations: int, events: list[bytes]) -> float:
    """Each event fed on its own, as a relay reading one event per socket read would: the dearest case."""
    began = time.perf_counter()
    for _ in range(iterations):
        translator = StreamTranslator(model="agent", input_estimate=180)
        for event in events:
            translator.feed(event)
    return (time.perf_counter() - began) / (iterations * CHUNKS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    iterations = 500 if options.quick else 5_000
    events = [e + b"\n\n" for e in stream_bytes().split(b"\n\n") if e]
    requests = statistics.median(per_request_us(iterations) for _ in range(7))
    streamed = statistics.median(per_event_us(iterations // 5, events) for _ in range(7))
    print("| measure | median µs | target |")
    print("|---|--:|---|")
    print(f"| a request: Messages → chat completion, and the answer back | {requests:.1f} | ≤ 100 |")
    print(f"| a streamed text event (its share of the stream's opening and closing included) | {streamed:.2f} | ≤ 5 |")


if __name__ == "__main__":
    main()
