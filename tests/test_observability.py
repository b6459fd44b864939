"""The access log line: the same shape as the other log lines, JSON or text, one per request."""

from __future__ import annotations

import orjson
import pytest

from gateway.exchange import Exchange
from gateway.observability.logs import AccessLog


def finished() -> Exchange:
    return Exchange(
        request_id="r-1",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        duration_ms=2.345,
        key_id="key_1",
        agent="demo",
        upstream_status=200,
        prompt_tokens=12,
        completion_tokens=30,
    )


def test_json_access_line_has_the_log_shape_and_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("json").write(finished())
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    line = orjson.loads(lines[0])
    assert line["level"] == "INFO"
    assert line["logger"] == "gateway.access"
    assert line["message"] == "POST /v1/chat/completions 200 2.3ms"
    assert {k: line[k] for k in finished().log_fields()} == finished().log_fields()
    assert line["time"][:2] == "20"


def test_text_access_line_names_the_useful_fields(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("text").write(finished())
    line = capsys.readouterr().err
    assert line.endswith(
        "INFO gateway.access: POST /v1/chat/completions 200 2.3ms request_id=r-1 key_id=key_1 agent=demo "
        "upstream_status=200 prompt_tokens=12 completion_tokens=30\n"
    )
