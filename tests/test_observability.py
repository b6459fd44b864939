"""The access log line: the same shape as the other log lines, JSON or text, one per request."""

from __future__ import annotations

import logging

import orjson
import pytest

from gateway.exchange import Exchange
from gateway.observability.logs import AccessLog, configure_logging


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


def test_a_path_cannot_end_a_text_access_line_and_forge_another(capsys: pytest.CaptureFixture[str]) -> None:
    forged = "/v1/models/x\n2026-12-03T00:00:00+0000 INFO gateway.access: GET /admin/keys 200\r\x1b[2J\u2028"
    exchange = finished()
    exchange.path = forged

    AccessLog("text").write(exchange)

    line = capsys.readouterr().err
    assert line.count("\n") == 1
    assert "\r" not in line
    assert "\x1b" not in line
    assert "\u2028" not in line
    assert "/v1/models/x\\x0a2026-12-03" in line


def test_text_access_line_names_the_useful_fields(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("text").write(finished())
    line = capsys.readouterr().err
    assert line.endswith(
        "INFO gateway.access: POST /v1/chat/completions 200 2.3ms request_id=r-1 key_id=key_1 agent=demo "
        "upstream_status=200 prompt_tokens=12 completion_tokens=30\n"
    )


def test_a_text_log_line_cannot_be_split_by_what_a_client_sent(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info", "text")
    try:
        logging.getLogger("gateway.test").warning("store unavailable on %s: %s", "/v1/x\nFAKE", "boom")
    finally:
        root.handlers[:], root.level = handlers, level
    line = capsys.readouterr().err
    assert line.count("\n") == 1
    assert "/v1/x\\x0aFAKE" in line
