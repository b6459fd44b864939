"""What translating between Anthropic's Messages API and OpenAI's chat completions costs, per request and per
streamed event, in both directions: the pure functions alone, in this process, so that nothing else on the machine
is measured.

    .venv/bin/python bench/translation.py            # about 20 s
    .venv/bin/python bench/translation.py --quick    # smoke run

Anthropic clients of an OpenAI upstream: a request is a Messages request (system, three turns, one tool) into a
chat completion plus the completion's answer back into a message; an event is one text chunk of a 20-chunk stream
through the stream translator (its `message_start`, block starts and stops and closing events counted in). OpenAI
clients of an Anthropic upstream: the same conversation as a chat request into Messages and the message back, and
a 20-delta Messages stream into chat chunks. Medians of 7 rounds; targets from issue 14: at most 0.1 ms per request
and 5 µs per event.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from gateway.protocols import anthropic_to_openai, openai_to_anthropic
from gateway.protocols.anthropic_to_openai import chat_request, message_answer

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
    """A 20-chunk text stream as OpenAI sends it (compact JSON, `usage` null until the usage chunk, since the
    gateway asks for it), with the usage chunk and [DONE]."""

    def event(chunk: dict[str, Any]) -> bytes:
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                "system_fingerprint": "fp_1"}  # fmt: skip
        return b"data: " + json.dumps(head | chunk, separators=(",", ":")).encode() + b"\n\n"

    events = []
    for index in range(CHUNKS):
        choice = {"index": 0, "delta": {"content": f"word{index} and more "}, "logprobs": None, "finish_reason": None}
        events.append(event({"choices": [choice], "usage": None}))
    done = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    events.append(event({"choices": [done], "usage": None}))
    events.append(event({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20}}))
    return b"".join(events) + b"data: [DONE]\n\n"


def messages_stream_bytes() -> bytes:
    """A 20-delta text stream as Anthropic sends it (compact JSON, named events), from message_start to
    message_stop."""

    def event(data: dict[str, Any]) -> bytes:
        return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    usage = {"input_tokens": 180, "output_tokens": 1}
    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "up", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    block = {"type": "text", "text": ""}
    events = [event({"type": "message_start", "message": start}),
              event({"type": "content_block_start", "index": 0, "content_block": block})]  # fmt: skip
    for index in range(CHUNKS):
        delta = {"type": "text_delta", "text": f"word{index} and more "}
        events.append(event({"type": "content_block_delta", "index": 0, "delta": delta}))
    events += [event({"type": "content_block_stop", "index": 0}),
               event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                      "usage": {"output_tokens": 70}}),
               event({"type": "message_stop"})]  # fmt: skip
    return b"".join(events)


CHAT_REQUEST = chat_request(REQUEST)
MESSAGE = message_answer(COMPLETION, model="agent")


def per_request_us(iterations: int, *, reverse: bool) -> float:
    began = time.perf_counter()
    if reverse:
        for _ in range(iterations):
            openai_to_anthropic.messages_request(CHAT_REQUEST)
            openai_to_anthropic.completion(MESSAGE, model="agent")
    else:
        for _ in range(iterations):
            chat_request(REQUEST)
            message_answer(COMPLETION, model="agent")
    return (time.perf_counter() - began) / iterations * 1e6


def per_event_us(iterations: int, events: list[bytes], *, reverse: bool) -> float:
    """Each event fed on its own, as a relay reading one event per socket read would: the dearest case."""
    began = time.perf_counter()
    for _ in range(iterations):
        translator = (
            openai_to_anthropic.StreamTranslator(model="agent", include_usage=True)
            if reverse
            else anthropic_to_openai.StreamTranslator(model="agent", input_estimate=180)
        )
        for event in events:
            translator.feed(event)
    return (time.perf_counter() - began) / (iterations * CHUNKS) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    iterations = 500 if options.quick else 5_000
    print("| measure | median µs | target |")
    print("|---|--:|---|")
    for reverse, stream, request_name in (
        (False, stream_bytes(), "Messages → chat completion, and the answer back"),
        (True, messages_stream_bytes(), "chat completion → Messages, and the answer back"),
    ):
        events = [e + b"\n\n" for e in stream.split(b"\n\n") if e]
        requests = statistics.median(per_request_us(iterations, reverse=reverse) for _ in range(7))
        streamed = statistics.median(per_event_us(iterations // 5, events, reverse=reverse) for _ in range(7))
        into = "chat chunks" if reverse else "Messages events"
        print(f"| a request: {request_name} | {requests:.1f} | ≤ 100 |")
        print(f"| a streamed text event into {into} (its share of the opening and closing included) "
              f"| {streamed:.2f} | ≤ 5 |")  # fmt: skip


if __name__ == "__main__":
    main()
