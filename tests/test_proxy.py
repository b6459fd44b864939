"""End to end with the OpenAI SDK: a real gateway process in front of a real upstream process, no streaming."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY
from tests.support.processes import Process


def behave(**behaviour: Any) -> dict[str, str]:
    """Headers that tell the test upstream how to answer, with a fresh request id to look the request up by."""
    return {"x-test-behaviour": json.dumps(behaviour), "x-request-id": f"t-{uuid.uuid4().hex}"}


def seen_upstream(upstream: Process, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{upstream.url}/_requests/{request_id}")
    response.raise_for_status()
    return dict(response.json())


def test_chat_completion_reaches_upstream_rewritten_for_the_agent(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave()
    completion = client.chat.completions.create(
        model="test-chat",
        messages=[{"role": "system", "content": "client system"}, {"role": "user", "content": "hi"}],
        extra_headers=headers,
    )
    assert completion.choices[0].message.content == "upstream heard 3 messages; last: hi"
    sent = seen_upstream(upstream, headers["x-request-id"])
    body = sent["body"]
    assert sent["path"] == "/v1/chat/completions"
    assert body["model"] == "upstream-model"
    assert [m["content"] for m in body["messages"]] == ["You are a test agent.", "client system", "hi"]
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 50


def test_client_fields_win_over_agent_defaults(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave()
    client.chat.completions.create(
        model="test-chat",
        messages=[{"role": "user", "content": "hi"}],
        temperature=1.5,
        max_completion_tokens=7,
        extra_headers=headers,
    )
    body = seen_upstream(upstream, headers["x-request-id"])["body"]
    assert body["temperature"] == 1.5
    assert body["max_completion_tokens"] == 7
    assert "max_tokens" not in body


def test_upstream_gets_the_agent_key_never_the_client_key(client: openai.OpenAI, upstream: Process) -> None:
    headers = behave()
    session = client.post("/sessions", body={"model": "test-chat"}, cast_to=dict)
    client.chat.completions.create(
        model="test-alias",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={**headers, "x-custom-header": "kept", "cookie": "session=secret"},
        extra_body={"session_id": session["session_id"]},
    )
    sent = seen_upstream(upstream, headers["x-request-id"])
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["headers"]["x-custom-header"] == "kept"
    assert "cookie" not in sent["headers"]
    assert "session_id" not in sent["body"]


def test_response_carries_request_ids_and_upstream_headers(client: openai.OpenAI) -> None:
    headers = behave()
    raw = client.chat.completions.with_raw_response.create(
        model="test-chat", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
    )
    assert raw.headers["x-request-id"] == headers["x-request-id"]
    assert raw.headers["x-upstream-request-id"] == "up-" + headers["x-request-id"]


def test_completions_embeddings_and_responses_are_forwarded(client: openai.OpenAI, upstream: Process) -> None:
    completion = client.completions.create(model="test-chat", prompt="once upon")
    assert completion.choices[0].text == "upstream heard 0 messages; last: once upon"

    embedding = client.embeddings.create(model="test-chat", input="hello", encoding_format="float")
    assert embedding.data[0].embedding == [0.5, -0.5]

    headers = behave()
    response = client.responses.create(model="test-chat", input="hello", instructions="be brief", extra_headers=headers)
    assert response.output_text == "upstream heard instructions='You are a test agent.\\n\\nbe brief'"
    assert "temperature" in seen_upstream(upstream, headers["x-request-id"])["body"]


def test_models_lists_the_agents(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids[:4] == ["test-chat", "test-slow", "test-dead", "test-nokey"]
    assert ids[-1] == "demo"
    assert "test-nostream" in ids
    assert client.models.retrieve("test-alias").id == "test-alias"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert "gpt-nope" in caught.value.message


def test_upstream_error_status_and_body_pass_through(client: openai.OpenAI) -> None:
    upstream_error = {"error": {"message": "context too long", "type": "invalid_request_error", "code": "ctx"}}
    headers = behave(status=400, body=json.dumps(upstream_error))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=headers)  # fmt: skip
    assert caught.value.body == upstream_error["error"]


def test_upstream_rate_limit_passes_through_with_retry_after(client: openai.OpenAI) -> None:
    headers = behave(status=429, headers={"retry-after": "7", "x-ratelimit-remaining-requests": "0"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=headers)  # fmt: skip
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_upstream_html_error_becomes_openai_shaped(client: openai.OpenAI) -> None:
    headers = behave(status=502, body="<html><h1>Bad Gateway</h1></html>", content_type="text/html")
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=headers)  # fmt: skip
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_http_502"
    assert "Bad Gateway" in caught.value.message


def test_upstream_success_that_is_not_json_is_a_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=behave(not_json=True))  # fmt: skip
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_bad_response"


def test_dead_upstream_is_a_502(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-dead", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unreachable"


def test_slow_upstream_is_a_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-slow", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=behave(hang=3))  # fmt: skip
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"


def test_agent_without_its_key_is_a_503_naming_the_variable(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="test-nokey", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503
    assert "TEST_KEY_NOT_SET" in caught.value.message


def test_readyz_reports_the_missing_key(gateway: Process) -> None:
    response = httpx.get(gateway.url + "/readyz")
    assert response.status_code == 503
    assert any("TEST_KEY_NOT_SET" in problem for problem in response.json()["problems"])
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_mock_agent_answers_without_network(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "ping"}])
    assert completion.choices[0].message.content.startswith('You said: "ping".')
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0


def test_gateway_log_never_holds_secrets(client: openai.OpenAI, gateway: Process) -> None:
    client.chat.completions.create(model="test-chat", messages=[{"role": "user", "content": "x"}])
    log = gateway.log()
    assert "POST /v1/chat/completions 200" in log
    assert UPSTREAM_KEY not in log
    assert "sk-client-key" not in log


def test_the_mock_provider_answers_as_the_agent(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "demo"
    assert completion.choices[0].message.content is not None
