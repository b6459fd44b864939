"""Request bodies: parse errors a client can act on, and the rewrite for the agent's upstream."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.config.agents import Agent, AgentSpec, compile_agent
from gateway.errors import BadRequest, ValidationFailed
from gateway.jsonbody import MAX_DEPTH, ORJSON_WRITE_DEPTH, check_depth, parse
from gateway.protocols.openai.payload import Endpoint, Outbound, check, model_of, outbound, wants_stream


def make_agent(llm: dict[str, Any] | None = None, **fields: Any) -> Agent:
    spec = AgentSpec.model_validate(
        {"name": "bot", "llm": {"provider": "mock", "model": "up-model", **(llm or {})}, **fields}
    )
    return compile_agent(spec, {})


def chat(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "bot", "messages": list(messages), **fields}


USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "empty"),
        (b"{not json", "could not parse the JSON"),
        (b'{"model": "bot",}', "could not parse the JSON"),
        (b"[1, 2]", "must be a JSON object, not an array"),
        (b'"bot"', "must be a JSON object, not a string"),
        (b"42", "must be a JSON object, not a number"),
        (b"null", "must be a JSON object, not null"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_bad_request(body: bytes, words: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(body)

    assert words in info.value.message
    assert info.value.status == 400


def test_a_json_object_parses() -> None:
    assert parse(b'{"model": "bot", "stream": true}') == {"model": "bot", "stream": True}


def test_a_missing_model_is_a_bad_request_about_model() -> None:
    with pytest.raises(BadRequest) as info:
        model_of({"messages": []})

    assert info.value.param == "model"
    assert "model" in info.value.message


@pytest.mark.parametrize(
    ("model", "kind"), [(3, "a number"), ("", "not an empty string"), (["bot"], "an array"), (True, "a boolean")]
)
def test_a_model_that_is_not_a_non_empty_string_is_a_bad_request(model: Any, kind: str) -> None:
    with pytest.raises(BadRequest) as info:
        model_of({"model": model})

    assert info.value.param == "model"
    assert kind in info.value.message


def test_model_of_returns_the_model() -> None:
    assert model_of({"model": "bot"}) == "bot"


@pytest.mark.parametrize(
    ("body", "expected"), [({}, False), ({"stream": None}, False), ({"stream": False}, False), ({"stream": True}, True)]
)
def test_wants_stream_reads_the_stream_flag(body: dict[str, Any], expected: bool) -> None:
    assert wants_stream(body) is expected


@pytest.mark.parametrize("stream", ["true", 1, 0, {}])
def test_a_stream_flag_that_is_not_a_boolean_is_a_bad_request(stream: Any) -> None:
    with pytest.raises(BadRequest) as info:
        wants_stream({"stream": stream})

    assert info.value.param == "stream"


def prepare(endpoint: Endpoint, body: dict[str, Any], agent: Agent) -> dict[str, Any]:
    return outbound(endpoint, body, agent, stream=False, default_max_tokens=1024).body


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_prepare_sends_the_agents_upstream_model(endpoint: Endpoint) -> None:
    body = prepare(endpoint, {"model": "bot", "messages": [USER], "input": "hi", "prompt": "hi"}, make_agent())

    assert body["model"] == "up-model"


def test_agent_defaults_fill_fields_the_client_left_out() -> None:
    agent = make_agent({"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "defaults": {"presence_penalty": 0.5}})

    body = prepare(Endpoint.CHAT, chat(USER), agent)

    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 50
    assert body["presence_penalty"] == 0.5


def test_fields_the_client_set_win_over_agent_defaults() -> None:
    agent = make_agent({"temperature": 0.3, "top_p": 0.9, "max_tokens": 50, "defaults": {"presence_penalty": 0.5}})

    body = prepare(Endpoint.CHAT, chat(USER, temperature=0, top_p=1, max_tokens=7, presence_penalty=-1), agent)

    assert (body["temperature"], body["top_p"], body["max_tokens"], body["presence_penalty"]) == (0, 1, 7, -1)


def test_a_client_that_set_max_completion_tokens_gets_no_max_tokens_default() -> None:
    agent = make_agent({"temperature": 0.3, "max_tokens": 50})

    body = prepare(Endpoint.CHAT, chat(USER, max_completion_tokens=20), agent)

    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == 20
    assert body["temperature"] == 0.3


def test_responses_get_max_tokens_as_max_output_tokens() -> None:
    agent = make_agent({"max_tokens": 50, "temperature": 0.3})

    body = prepare(Endpoint.RESPONSES, {"model": "bot", "input": "hi"}, agent)

    assert body["max_output_tokens"] == 50
    assert "max_tokens" not in body
    assert body["temperature"] == 0.3


def test_responses_keep_the_clients_max_output_tokens() -> None:
    body = prepare(
        Endpoint.RESPONSES, {"model": "bot", "input": "hi", "max_output_tokens": 9}, make_agent({"max_tokens": 50})
    )

    assert body["max_output_tokens"] == 9


def test_completions_get_sampling_defaults() -> None:
    body = prepare(
        Endpoint.COMPLETIONS, {"model": "bot", "prompt": "hi"}, make_agent({"temperature": 0.3, "max_tokens": 50})
    )

    assert (body["temperature"], body["max_tokens"]) == (0.3, 50)


def test_embeddings_get_no_sampling_defaults() -> None:
    agent = make_agent({"temperature": 0.3, "top_p": 0.9, "max_tokens": 50})

    body = prepare(Endpoint.EMBEDDINGS, {"model": "bot", "input": "hi"}, agent)

    assert body == {"model": "up-model", "input": "hi"}


def test_the_system_prompt_goes_first_and_client_system_messages_follow() -> None:
    client_system = {"role": "system", "content": "Answer in French."}

    body = prepare(Endpoint.CHAT, chat(client_system, USER), make_agent(system_prompt="You are bot."))

    assert body["messages"] == [{"role": "system", "content": "You are bot."}, client_system, USER]


def test_without_a_system_prompt_messages_are_unchanged() -> None:
    body = prepare(Endpoint.CHAT, chat(USER), make_agent())

    assert body["messages"] == [USER]


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_session_id_is_never_sent_upstream(endpoint: Endpoint) -> None:
    body = {"model": "bot", "messages": [USER], "input": "hi", "prompt": "hi", "session_id": "s-1"}

    assert "session_id" not in prepare(endpoint, body, make_agent())


@pytest.mark.parametrize(("messages", "kind"), [("hi", "a string"), ({"role": "user"}, "an object"), (None, None)])
def test_messages_that_are_not_a_list_are_a_bad_request(messages: Any, kind: str | None) -> None:
    body = {"model": "bot"} if messages is None else {"model": "bot", "messages": messages}

    with pytest.raises(BadRequest) as info:
        prepare(Endpoint.CHAT, body, make_agent())

    assert info.value.param == "messages"
    if kind is not None:
        assert kind in info.value.message


def test_a_message_that_is_not_an_object_is_a_bad_request_naming_its_index() -> None:
    with pytest.raises(BadRequest) as info:
        prepare(Endpoint.CHAT, chat(USER, "hello"), make_agent())

    assert info.value.param == "messages[1]"
    assert "messages[1]" in info.value.message


def test_responses_instructions_get_the_system_prompt_prepended() -> None:
    body = {"model": "bot", "input": "hi", "instructions": "Be brief."}

    sent = prepare(Endpoint.RESPONSES, body, make_agent(system_prompt="You are bot."))

    assert sent["instructions"] == "You are bot.\n\nBe brief."


def test_responses_without_instructions_get_the_system_prompt_as_instructions() -> None:
    body = prepare(Endpoint.RESPONSES, {"model": "bot", "input": "hi"}, make_agent(system_prompt="You are bot."))

    assert body["instructions"] == "You are bot."


def test_responses_instructions_that_are_not_a_string_are_a_bad_request() -> None:
    with pytest.raises(BadRequest) as info:
        prepare(
            Endpoint.RESPONSES, {"model": "bot", "input": "hi", "instructions": ["x"]}, make_agent(system_prompt="S")
        )

    assert info.value.param == "instructions"


def nested(levels: int) -> bytes:
    """A body whose objects and arrays nest `levels` deep, the body itself counting as one."""
    inner = b"[" * (levels - 2) + b"]" * (levels - 2)
    return b'{"model": "bot", "messages": [], "metadata": {"x": ' + inner + b"}}"


def test_orjson_writes_exactly_as_deep_as_the_depth_check_assumes() -> None:
    orjson.dumps(orjson.loads(b"[" * ORJSON_WRITE_DEPTH + b"]" * ORJSON_WRITE_DEPTH))
    too_deep = orjson.loads(b"[" * (ORJSON_WRITE_DEPTH + 1) + b"]" * (ORJSON_WRITE_DEPTH + 1))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(too_deep)


@pytest.mark.parametrize("opening", [b"[", b'{"a": '])
def test_json_nested_to_the_limit_in_objects_or_arrays_parses_and_one_more_level_does_not(opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    inner = opening * (MAX_DEPTH - 1) + b"1" + closing * (MAX_DEPTH - 1)
    assert parse(b'{"x": ' + inner + b"}")["x"] is not None
    with pytest.raises(BadRequest, match="deeper than"):
        parse(b'{"x": ' + opening + inner + closing + b"}")


def test_json_nested_up_to_the_limit_parses() -> None:
    body = parse(nested(MAX_DEPTH))

    assert body["model"] == "bot"
    check_depth(nested(MAX_DEPTH))


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 255, 1024, 1025, 5000])
def test_json_nested_deeper_than_the_limit_is_a_bad_request_saying_so(levels: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse(nested(levels))

    assert f"deeper than {MAX_DEPTH} levels" in info.value.message
    with pytest.raises(ValidationFailed, match=f"deeper than {MAX_DEPTH} levels"):
        check_depth(nested(levels), ValidationFailed)


def test_many_brackets_in_strings_or_side_by_side_are_not_depth() -> None:
    wide = {"model": "bot", "messages": [{"role": "user", "content": "[{" * 500}] * 300, "tools": [[{}]] * 300}

    assert parse(orjson.dumps(wide)) == wide
    check_depth(orjson.dumps(wide))


def test_check_depth_leaves_what_is_not_json_to_the_parser_that_reads_it() -> None:
    check_depth(b"{" * 500)


def test_well_formed_messages_pass_the_check() -> None:
    messages = [
        {"role": "developer", "content": "Be brief.", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL], "refusal": None},
        {"role": "tool", "tool_call_id": "call_1", "content": "21"},
        {"role": "function", "name": "lookup", "content": "21"},
        # As the SDKs echo an answer's message back: unset fields as null.
        {"role": "assistant", "content": "ok", "tool_calls": None, "function_call": None, "audio": None, "name": None},
        {"role": "system", "content": "x"},
    ]

    check(Endpoint.CHAT, chat(*messages))


TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("message", "param", "words"),
    [
        ({"content": "x"}, "messages[1].role", "is required"),
        ({"role": {}, "content": "x"}, "messages[1].role", "must be a string, not an object"),
        ({"role": ["user"], "content": "x"}, "messages[1].role", "not an array"),
        ({"role": 1, "content": "x"}, "messages[1].role", "not a number"),
        ({"role": "robot", "content": "x"}, "messages[1].role", "one of system, developer, user, assistant, tool"),
        ({"role": "x" * 5000, "content": "x"}, "messages[1].role", "xxx..."),
        ({"role": "user", "content": 5}, "messages[1].content", "a string, an array of content parts or null"),
        ({"role": "user", "content": {"text": "x"}}, "messages[1].content", "not an object"),
        ({"role": "user", "content": ["hi"]}, "messages[1].content[0]", "must be an object, not a string"),
        ({"role": "user", "content": "x", "name": {}}, "messages[1].name", "must be a string"),
        ({"role": "tool", "content": "x", "tool_call_id": {}}, "messages[1].tool_call_id", "must be a string"),
        ({"role": "tool", "content": "x", "tool_call_id": 7}, "messages[1].tool_call_id", "not a number"),
        ({"role": "assistant", "tool_calls": {}}, "messages[1].tool_calls", "must be an array"),
        ({"role": "assistant", "tool_calls": ["x"]}, "messages[1].tool_calls[0]", "must be an object"),
        ({"role": "assistant", "tool_calls": [{"id": ["x"]}]}, "messages[1].tool_calls[0].id", "not an array"),
        ({"role": "assistant", "tool_calls": [{**TOOL_CALL, "type": 1}]}, "messages[1].tool_calls[0].type", "string"),
        (
            {"role": "assistant", "tool_calls": [TOOL_CALL, {**TOOL_CALL, "function": "f"}]},
            "messages[1].tool_calls[1].function",
            "must be an object",
        ),
        (
            {"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {"name": "f", "arguments": {}}}]},
            "messages[1].tool_calls[0].function.arguments",
            "must be a string, not an object",
        ),
        (
            {"role": "assistant", "tool_calls": [{**TOOL_CALL, "function": {"name": 1}}]},
            "messages[1].tool_calls[0].function.name",
            "not a number",
        ),
    ],
)
def test_a_message_of_the_wrong_shape_is_a_bad_request_naming_the_field(
    message: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(BadRequest) as info:
        check(Endpoint.CHAT, chat(USER, message))

    assert info.value.param == param
    assert param in info.value.message
    assert words in info.value.message
    assert len(info.value.message) < 300


def test_message_shapes_are_checked_on_chat_only() -> None:
    check(Endpoint.RESPONSES, {"model": "bot", "input": [{"role": {}, "content": "x"}]})


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
@pytest.mark.parametrize(
    ("value", "words"),
    [(0, "not 0"), (-1, "not -1"), (-(10**8), "not -100000000"), (1.5, "not a number"), (10.0, "not a number"),
     (True, "not a boolean"), ("100", "not a string"), ([1], "not an array")],
)  # fmt: skip
@pytest.mark.parametrize("endpoint", [Endpoint.CHAT, Endpoint.COMPLETIONS, Endpoint.RESPONSES])
def test_an_output_limit_below_one_or_not_an_integer_is_a_bad_request(
    endpoint: Endpoint, field: str, value: Any, words: str
) -> None:
    with pytest.raises(BadRequest) as info:
        check(endpoint, chat(USER, **{field: value}))

    assert info.value.param == field
    assert "must be an integer of at least 1" in info.value.message
    assert words in info.value.message


@pytest.mark.parametrize("value", [1, 4096, None, 2**63])
def test_an_output_limit_of_at_least_one_or_null_passes(value: Any) -> None:
    check(Endpoint.CHAT, chat(USER, max_tokens=value, max_completion_tokens=value))


def test_embeddings_have_no_output_limit_to_check() -> None:
    check(Endpoint.EMBEDDINGS, {"model": "bot", "input": "hi", "max_tokens": -1})


def test_the_clients_body_is_never_changed() -> None:
    body = chat({"role": "system", "content": "Be brief."}, USER, session_id="s-1", stream=True)
    before = copy.deepcopy(body)
    agent = make_agent({"temperature": 0.3, "max_tokens": 50}, system_prompt="You are bot.")

    sent = outbound(Endpoint.CHAT, body, agent, stream=True, default_max_tokens=1024, history=[ASSISTANT]).body

    assert body == before
    assert sent["messages"] == [{"role": "system", "content": "You are bot."}, ASSISTANT, *before["messages"]]
    assert sent["stream_options"] == {"include_usage": True}


def test_the_output_limit_is_the_requests_own_else_the_default_and_is_held_to_the_agents_ceiling() -> None:
    plain = make_agent()
    assert (
        outbound(Endpoint.CHAT, chat(USER, max_tokens=7), plain, stream=False, default_max_tokens=99).output_tokens == 7
    )
    assert outbound(Endpoint.CHAT, chat(USER), plain, stream=False, default_max_tokens=99).output_tokens == 99
    assert outbound(Endpoint.EMBEDDINGS, {"input": "x"}, plain, stream=False, default_max_tokens=99).output_tokens == 0

    clamp = make_agent(limits={"max_tokens_per_request": 5, "over_max_tokens": "clamp"})
    clamped = outbound(Endpoint.CHAT, chat(USER, max_tokens=50), clamp, stream=False, default_max_tokens=99)
    assert (clamped.output_tokens, clamped.body["max_tokens"]) == (5, 5)
    unstated = outbound(Endpoint.RESPONSES, {"input": "x"}, clamp, stream=False, default_max_tokens=99)
    assert (unstated.output_tokens, unstated.body["max_output_tokens"]) == (5, 5)

    refuse = make_agent(limits={"max_tokens_per_request": 5})
    with pytest.raises(BadRequest) as info:
        outbound(Endpoint.CHAT, chat(USER, max_completion_tokens=6), refuse, stream=False, default_max_tokens=99)
    assert info.value.param == "max_completion_tokens"
    assert outbound(Endpoint.CHAT, chat(USER), refuse, stream=False, default_max_tokens=99).output_tokens == 5


def test_the_gateway_asks_for_stream_usage_only_where_the_client_did_not() -> None:
    asked = outbound(Endpoint.CHAT, chat(USER, stream_options={"other": 1}), make_agent(), stream=True,
                     default_max_tokens=9)  # fmt: skip
    assert asked.hide_usage
    assert asked.body["stream_options"] == {"other": 1, "include_usage": True}
    own = chat(USER, stream_options={"include_usage": True})
    assert not outbound(Endpoint.CHAT, own, make_agent(), stream=True, default_max_tokens=9).hide_usage
    assert not outbound(Endpoint.RESPONSES, {"input": "x"}, make_agent(), stream=True, default_max_tokens=9).hide_usage
    assert not outbound(Endpoint.CHAT, chat(USER), make_agent(), stream=False, default_max_tokens=9).hide_usage


def test_an_agent_that_cannot_stream_gets_a_whole_request_to_replay() -> None:
    agent = make_agent({"supports_streaming": False})

    sent = outbound(Endpoint.CHAT, chat(USER, stream=True), agent, stream=True, default_max_tokens=9)

    assert (sent.simulated, sent.stream, sent.body["stream"]) == (True, False, False)
    assert "stream_options" not in sent.body
    with pytest.raises(BadRequest, match="does not stream"):
        outbound(Endpoint.EMBEDDINGS, {"input": "x", "stream": True}, agent, stream=True, default_max_tokens=9)


def test_each_target_gets_its_own_model_name() -> None:
    targets = [{"base_url": "http://a", "model": "m-a"}, {"base_url": "http://b", "model": "m-b"}]
    agent = make_agent({"provider": "openai-compatible", "targets": targets})
    sent: Outbound = outbound(Endpoint.CHAT, chat(USER), agent, stream=False, default_max_tokens=9)

    assert [sent.for_target(t)["model"] for t in agent.targets] == ["m-a", "m-b"]
    assert sent.body["model"] == "m-a"  # the first target's, unchanged by the second's
