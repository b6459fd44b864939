"""Token usage read from answers and metered out of streams (pure)."""

from __future__ import annotations

import orjson

from gateway.protocols.openai.usage import StreamMeter, Usage, estimate_prompt_tokens, from_body


def chunk(content: str | None = None, *, usage: object = "absent", choices: bool = True) -> bytes:
    data: dict[str, object] = {"id": "c", "choices": [{"index": 0, "delta": {"content": content}}] if choices else []}
    if usage != "absent":
        data["usage"] = usage
    return b"data: " + orjson.dumps(data) + b"\n\n"


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_usage_from_chat_embeddings_and_responses_bodies() -> None:
    assert from_body({"usage": USAGE}) == Usage(9, 4)
    assert from_body({"usage": {"prompt_tokens": 3, "total_tokens": 3}}) == Usage(3, 0)
    assert from_body({"usage": {"input_tokens": 5, "output_tokens": 6}}) == Usage(5, 6)
    assert from_body({"usage": None}) is None
    assert from_body([1, 2]) is None


def test_usage_counts_that_no_counter_can_take_read_as_no_usage() -> None:
    for odd in (-1, -(10**8), True, 2**64, 10**13, 1.5, "12"):
        assert from_body({"usage": {"prompt_tokens": odd, "completion_tokens": 4}}) is None
        assert from_body({"usage": {"prompt_tokens": 4, "completion_tokens": odd}}) is None
    assert from_body({"usage": {"prompt_tokens": 0, "completion_tokens": 10**12}}) == Usage(0, 10**12)


def test_hidden_usage_leaves_exactly_the_stream_openai_would_have_sent() -> None:
    meter = StreamMeter(hide_usage=True)
    asked = chunk("Hel", usage=None) + chunk("lo", usage=None) + chunk(choices=False, usage=USAGE) + b"data: [DONE]\n\n"
    plain = chunk("Hel") + chunk("lo") + b"data: [DONE]\n\n"
    assert meter.feed(asked) == plain
    assert meter.result(prompt_estimate=100) == Usage(9, 4)


def test_usage_the_client_asked_for_is_kept() -> None:
    meter = StreamMeter(hide_usage=False)
    block = chunk("Hi", usage=None) + chunk(choices=False, usage=USAGE)
    assert meter.feed(block) == block
    assert meter.usage == Usage(9, 4)


def test_usage_chunk_split_from_its_neighbours_across_blocks() -> None:
    meter = StreamMeter(hide_usage=True)
    assert meter.feed(chunk("a", usage=None)) == chunk("a")
    assert meter.feed(chunk(choices=False, usage=USAGE)) == b""
    assert meter.feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert meter.usage == Usage(9, 4)


def test_responses_api_usage_comes_from_response_completed() -> None:
    meter = StreamMeter(hide_usage=False)
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 2, "output_tokens": 3}}}
    event = b"event: response.completed\ndata: " + orjson.dumps(completed) + b"\n\n"
    assert meter.feed(event) == event
    assert meter.usage == Usage(2, 3)


def test_a_stream_without_usage_is_charged_from_the_relayed_text() -> None:
    meter = StreamMeter(hide_usage=True)
    meter.feed(chunk("x" * 40, usage=None) + chunk('say "hi"', usage=None))
    counted = meter.result(prompt_estimate=7)
    assert counted.estimated
    assert counted.prompt_tokens == 7
    assert counted.completion_tokens == 13  # ceil((40 + 10) / 4): `say \"hi\"` is 10 characters as relayed


def test_prompt_estimate_counts_message_text_and_parts() -> None:
    payload = {
        "messages": [
            {"role": "system", "content": "x" * 8},
            {"role": "user", "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url", "image_url": {}}]},
        ]
    }
    assert estimate_prompt_tokens(payload) == 4
    assert estimate_prompt_tokens({"input": "z" * 9, "instructions": "w" * 3}) == 3
