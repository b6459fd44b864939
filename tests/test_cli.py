"""The `gateway` command, run in process: `version`, `check`, and `keys` against a mocked admin API."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from gateway import __version__
from gateway.cli.main import main
from tests.support.processes import Process, free_port, start_gateway

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CONFIG = ROOT / "config"
REFERENCE_AGENTS = Path(__file__).resolve().parent / "fixtures" / "reference-agents"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty working directory (no stray `.env`) and no upstream key, config or admin settings from the caller's
    shell."""
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "GATEWAY_CONFIG", "GATEWAY_ADMIN_KEY", "GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0

    assert capsys.readouterr().out == f"agent-gateway {__version__}\n"


@pytest.mark.parametrize(
    ("env", "kept_apart"),
    [
        ({}, "keys and usage (GATEWAY_STORE), rate limits (RATE_LIMIT_STORAGE), sessions (SESSION_STORAGE)"),
        ({"GATEWAY_STORE": "redis", "SESSION_STORAGE": "memory"}, "sessions (SESSION_STORAGE)"),
    ],
)
def test_several_workers_without_shared_state_are_refused(
    env: dict[str, str], kept_apart: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    root = logging.getLogger()
    # `serve` points logging at this test's captured stderr; the next tests must not write to it once closed.
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)

    code = main(["serve", "--workers", "2", "--config", str(BUNDLED_CONFIG)])

    assert code == 2
    assert f"2 workers would each keep their own {kept_apart}; set GATEWAY_STORE=redis" in capsys.readouterr().err


def test_check_prints_the_route_table_of_the_bundled_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(BUNDLED_CONFIG)])

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["AGENT", "ALIASES", "PROVIDER", "UPSTREAM", "MODEL", "BASE", "URL", "FEATURES"]
    assert lines[1].split() == ["demo", "demo-mock", "mock", "-", "(built", "in)", "sessions,streaming,system-prompt"]
    assert f"1 agent(s) loaded from {BUNDLED_CONFIG}" in out
    assert err == ""


def test_check_reads_gateway_config_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(FIXTURES / "dir"))

    assert main(["check"]) == 0

    out = capsys.readouterr().out
    assert "chat" in out
    assert "summarize" in out


def test_check_on_a_broken_file_fails_naming_the_file_and_field(capsys: pytest.CaptureFixture[str]) -> None:
    broken = FIXTURES / "broken" / "agent.yaml"

    code = main(["check", "--config", str(broken)])

    out, err = capsys.readouterr()
    assert code == 1
    assert f"{broken}: agent.llm.temprature" in err
    assert out == ""


def test_check_on_a_missing_path_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(tmp_path / "nowhere")])

    assert code == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_a_missing_upstream_key_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(FIXTURES / "openai-no-key")])

    out, err = capsys.readouterr()
    assert code == 0
    assert "gpt" in out
    assert "with problems" in out
    assert "warning: agent 'gpt': upstream key missing: set the environment variable OPENAI_API_KEY" in err


def test_a_missing_upstream_key_fails_with_strict(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--strict", "--config", str(FIXTURES / "openai-no-key")])

    assert code == 1
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_strict_passes_when_the_key_is_set(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")

    code = main(["check", "--strict", "--config", str(FIXTURES / "openai-no-key")])

    out, err = capsys.readouterr()
    assert code == 0
    assert "with problems" not in out
    assert err == ""
    assert "sk-test" not in out


def test_the_key_may_come_from_a_dotenv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-from-dotenv\n", encoding="utf-8")

    code = main(["check", "--strict", "--config", str(FIXTURES / "openai-no-key")])

    assert code == 0
    assert capsys.readouterr().err == ""


def test_check_lists_all_five_reference_agents(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(REFERENCE_AGENTS)])

    out = capsys.readouterr().out
    agents = [line.split()[0] for line in out.splitlines()[1:] if line.strip() and "loaded from" not in line]
    assert code == 0
    assert sorted(agents) == [
        "chat_assistant",
        "full_featured_assistant",
        "my_assistant",
        "rate_limited_assistant",
        "streaming_assistant",
    ]
    assert f"5 agent(s) loaded from {REFERENCE_AGENTS}" in out


def test_python_dash_m_gateway_runs_the_same_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "version"], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0
    assert done.stdout == f"agent-gateway {__version__}\n"


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bogus"])

    out, err = capsys.readouterr()
    assert code == 2
    assert "bogus" in err
    assert out == ""


def test_no_command_shows_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code = main([])

    out = capsys.readouterr().out
    assert code == 2
    for command in ("serve", "check", "keys", "version"):
        assert command in out


def test_invalid_settings_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "loud")

    assert main(["serve"]) == 2
    assert "invalid settings" in capsys.readouterr().err


BASE = "http://gateway.test:8080"
ADMIN_KEY = "gw-admin-key-that-must-never-be-printed"
SECRET = "sk-gw-Qx3f9aT0pS3cr3tT0pS3cr3tT0pS3cr3tT0pS3cr3"
KEY_ID = "key_1a2b3c4d5e6f7a8b"


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": KEY_ID,
        "name": "search-team",
        "prefix": "sk-gw-Qx3f9a",
        "created_at": "2030-01-02T03:04:05.678901Z",
        "expires_at": "2099-01-01T00:00:00Z",
        "revoked": False,
        "revoked_at": None,
        "models": ["gpt-4o*", "support-bot"],
        "limits": {"rpm": 60, "rpm_burst": 120, "tpm": 100000, "tpm_burst": None, "max_concurrent": 4},
        "quotas": {"tokens_per_day": 1000000, "tokens_per_month": None},
        "metadata": {"team": "search", "owner": "ana"},
        "rotated_at": None,
        "grace_until": None,
    }
    return {**base, **changes}


KEYS_PAGE = {
    "object": "list",
    "data": [
        record(),
        record(
            id="key_99887766554433aa",
            name="nightly-batch",
            prefix="sk-gw-Zz81Lm",
            expires_at=None,
            revoked=True,
            revoked_at="2030-02-01T00:00:00Z",
            models=[],
            limits={"rpm": None, "rpm_burst": None, "tpm": None, "tpm_burst": None, "max_concurrent": None},
        ),
        record(id="key_00aa00aa00aa00aa", name="old-demo", prefix="sk-gw-OldDem", expires_at="2020-06-30T12:00:00Z"),
    ],
    "total": 3,
    "offset": 0,
    "limit": 20,
}

USAGE = {
    "key_id": KEY_ID,
    "from": "2030-03-01",
    "to": "2030-03-07",
    "totals": {
        "requests": 42,
        "prompt_tokens": 9000,
        "completion_tokens": 3000,
        "total_tokens": 12000,
        "errors": 2,
        "cancelled": 1,
        "cost_usd": 0.00315,
    },
    "by_agent": {
        "support-bot": {
            "requests": 40,
            "prompt_tokens": 8000,
            "completion_tokens": 2900,
            "total_tokens": 10900,
            "errors": 1,
            "cancelled": 1,
        },
        "gpt-4o-mini": {
            "requests": 2,
            "prompt_tokens": 1000,
            "completion_tokens": 100,
            "total_tokens": 1100,
            "errors": 1,
            "cancelled": 0,
        },
    },
    "by_day": [
        {
            "day": "2030-03-05",
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "errors": 0,
            "cancelled": 0,
        },
        {
            "day": "2030-03-06",
            "requests": 30,
            "prompt_tokens": 6000,
            "completion_tokens": 2000,
            "total_tokens": 8000,
            "errors": 0,
            "cancelled": 1,
        },
        {
            "day": "2030-03-07",
            "requests": 12,
            "prompt_tokens": 3000,
            "completion_tokens": 1000,
            "total_tokens": 4000,
            "errors": 2,
            "cancelled": 0,
        },
    ],
    "quotas": {
        "tokens_per_day": {"limit": 1000000, "used": 4000, "remaining": 996000, "resets_at": "2030-03-08T00:00:00Z"},
        "tokens_per_month": None,
    },
}


@pytest.fixture
def admin_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    """The admin API, mocked at `GATEWAY_URL`, with the admin key in the environment as an operator would set it."""
    monkeypatch.setenv("GATEWAY_URL", BASE)
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        yield mock


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`gateway keys ...` in process: its exit code, stdout and stderr, none of which may show the admin key."""
    code = main(["keys", *argv])
    out, err = capsys.readouterr()
    assert ADMIN_KEY not in out
    assert ADMIN_KEY not in err
    return code, out, err


def body(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


def fields_of(out: str) -> dict[str, str]:
    """The `field: value` lines of a record, up to the first blank line."""
    block = out.split("\n\n", 1)[0]
    return {field: value.strip() for field, value in (line.split(":", 1) for line in block.splitlines())}


def test_keys_list_prints_an_aligned_table(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    route = admin_api.get("/admin/keys").respond(json=KEYS_PAGE)

    code, out, err = run(capsys, "list")

    lines = out.splitlines()
    assert code == 0
    assert err == ""
    assert route.calls.last.request.headers["authorization"] == f"Bearer {ADMIN_KEY}"
    assert lines[0].split() == ["ID", "NAME", "PREFIX", "MODELS", "RPM", "TPM", "EXPIRES", "STATUS"]
    assert lines[1].split() == [
        KEY_ID,
        "search-team",
        "sk-gw-Qx3f9a",
        "gpt-4o*,support-bot",
        "60",
        "100000",
        "2099-01-01T00:00:00Z",
        "active",
    ]
    assert lines[2].split() == [
        "key_99887766554433aa",
        "nightly-batch",
        "sk-gw-Zz81Lm",
        "all",
        "-",
        "-",
        "never",
        "revoked",
    ]
    assert lines[3].split()[-1] == "expired"
    assert {line.index(line.split()[-1]) for line in lines[:4]} == {lines[0].index("STATUS")}
    assert lines[-1] == "3 of 3 key(s)"


def test_keys_list_sends_the_filters(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    route = admin_api.get("/admin/keys").respond(json={**KEYS_PAGE, "data": [], "total": 7, "offset": 5, "limit": 2})

    code, out, _ = run(capsys, "list", "--name", "search", "--metadata", "team=search", "--limit", "2", "--offset", "5")

    assert code == 0
    assert dict(route.calls.last.request.url.params) == {
        "name": "search",
        "metadata.team": "search",
        "limit": "2",
        "offset": "5",
    }
    assert out.splitlines()[0] == "no keys"


def test_keys_list_json_prints_the_raw_answer(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    admin_api.get("/admin/keys").respond(json=KEYS_PAGE)

    code, out, _ = run(capsys, "list", "--json")

    assert code == 0
    assert json.loads(out) == KEYS_PAGE
    assert out.startswith('{\n  "object": "list"')


def test_keys_show_prints_field_value_lines(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    admin_api.get(f"/admin/keys/{KEY_ID}").respond(json=record())

    code, out, _ = run(capsys, "show", KEY_ID)

    fields = fields_of(out)
    assert code == 0
    assert fields["id"] == KEY_ID
    assert fields["status"] == "active"
    assert fields["models"] == "gpt-4o*, support-bot"
    assert fields["created_at"] == "2030-01-02T03:04:05Z"
    assert fields["revoked_at"] == "-"
    assert fields["limits.rpm"] == "60"
    assert fields["limits.tpm_burst"] == "-"
    assert fields["quotas.tokens_per_day"] == "1000000"
    assert fields["metadata.team"] == "search"


def test_keys_create_sends_every_option_and_shows_the_secret_once(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.post("/admin/keys").respond(201, json={**record(), "secret": SECRET})

    code, out, err = run(
        capsys,
        "create",
        "--name", "search-team",
        "--model", "gpt-4o*",
        "--model", "support-bot",
        "--expires-at", "2099-01-01T00:00:00Z",
        "--rpm", "60",
        "--rpm-burst", "120",
        "--tpm", "100000",
        "--max-concurrent", "4",
        "--tokens-per-day", "1000000",
        "--metadata", "team=search",
        "--metadata", "owner=ana",
    )  # fmt: skip

    assert code == 0
    assert err == ""
    assert body(route) == {
        "name": "search-team",
        "models": ["gpt-4o*", "support-bot"],
        "expires_at": "2099-01-01T00:00:00Z",
        "limits": {"rpm": 60, "rpm_burst": 120, "tpm": 100000, "max_concurrent": 4},
        "quotas": {"tokens_per_day": 1000000},
        "metadata": {"team": "search", "owner": "ana"},
    }
    lines = out.splitlines()
    assert fields_of(out)["id"] == KEY_ID
    assert lines.count(f"secret: {SECRET}") == 1
    assert out.count(SECRET) == 1
    assert "shown only this once" in lines[lines.index(f"secret: {SECRET}") + 1]


def test_keys_create_expires_in_is_sent_as_a_utc_time(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.post("/admin/keys").respond(201, json={**record(), "secret": SECRET})
    before = datetime.now(UTC).replace(microsecond=0)

    code, _, _ = run(capsys, "create", "--name", "temp", "--expires-in", "30d")

    after = datetime.now(UTC)
    sent = body(route)
    assert code == 0
    assert sent["expires_at"].endswith("Z")
    assert before + timedelta(days=30) <= datetime.fromisoformat(sent["expires_at"]) <= after + timedelta(days=30)
    assert sent == {"name": "temp", "expires_at": sent["expires_at"]}


def test_keys_create_expires_at_without_a_zone_is_utc(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.post("/admin/keys").respond(201, json={**record(), "secret": SECRET})

    assert run(capsys, "create", "--name", "x", "--expires-at", "2031-05-06T07:08:09")[0] == 0
    assert body(route)["expires_at"] == "2031-05-06T07:08:09Z"
    assert run(capsys, "create", "--name", "x", "--expires-at", "2031-05-06T09:08:09+02:00")[0] == 0
    assert body(route)["expires_at"] == "2031-05-06T07:08:09Z"


def test_keys_create_json_prints_the_answer_with_the_secret(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {**record(), "secret": SECRET}
    admin_api.post("/admin/keys").respond(201, json=answer)

    code, out, _ = run(capsys, "create", "--name", "search-team", "--json")

    assert code == 0
    assert json.loads(out) == answer


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name", "x", "--expires-in", "3 weeks"], "not a duration"),
        (["create", "--name", "x", "--expires-in", "1d", "--expires-at", "2031-01-01"], "either"),
        (["create", "--name", "x", "--expires-at", "next tuesday"], "not an ISO 8601 time"),
        (["create", "--name", "x", "--metadata", "team"], "not KEY=VALUE"),
        (["create", "--name", "x", "--rpm", "many"], "--rpm"),
        (["create"], "--name"),
        (["update", KEY_ID], "nothing to change"),
        (["update", KEY_ID, "--model", "a", "--clear-models"], "either"),
        (["update", KEY_ID, "--no-expiry", "--expires-in", "1d"], "either"),
    ],
)
def test_bad_options_are_usage_errors_and_send_nothing(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)

    assert code == 2
    assert message in err
    assert out == ""


def test_keys_update_sends_only_the_options_given(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.patch(f"/admin/keys/{KEY_ID}").respond(json=record(limits={**record()["limits"], "tpm": 5000}))

    code, out, _ = run(capsys, "update", KEY_ID, "--tpm", "5000", "--tokens-per-month", "9000000")

    assert code == 0
    assert body(route) == {"limits": {"tpm": 5000}, "quotas": {"tokens_per_month": 9000000}}
    assert fields_of(out)["limits.tpm"] == "5000"


def test_keys_update_can_clear_the_expiry_and_the_models(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.patch(f"/admin/keys/{KEY_ID}").respond(json=record(expires_at=None, models=[]))

    code, out, _ = run(capsys, "update", KEY_ID, "--no-expiry", "--clear-models", "--name", "renamed")

    assert code == 0
    assert body(route) == {"name": "renamed", "models": [], "expires_at": None}
    assert fields_of(out)["expires_at"] == "never"
    assert fields_of(out)["models"] == "all"


def test_keys_revoke_shows_the_revoked_record(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    route = admin_api.delete(f"/admin/keys/{KEY_ID}").respond(
        json=record(revoked=True, revoked_at="2030-03-07T10:00:00Z")
    )

    code, out, _ = run(capsys, "revoke", KEY_ID)

    assert code == 0
    assert route.called
    assert fields_of(out)["status"] == "revoked"
    assert fields_of(out)["revoked_at"] == "2030-03-07T10:00:00Z"


def test_keys_rotate_sends_the_grace_and_shows_the_new_secret(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = {**record(rotated_at="2030-03-07T10:00:00Z", grace_until="2030-03-07T10:05:00Z"), "secret": SECRET}
    route = admin_api.post(f"/admin/keys/{KEY_ID}/rotate").respond(json=answer)

    code, out, _ = run(capsys, "rotate", KEY_ID, "--grace", "300")

    lines = out.splitlines()
    assert code == 0
    assert body(route) == {"grace_seconds": 300}
    assert f"secret: {SECRET}" in lines
    assert any("shown only this once" in line for line in lines)
    assert "the previous secret keeps working until 2030-03-07T10:05:00Z" in lines


def test_keys_usage_prints_totals_agents_days_and_quotas(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    route = admin_api.get(f"/admin/keys/{KEY_ID}/usage").respond(json=USAGE)

    code, out, _ = run(capsys, "usage", KEY_ID, "--days", "7")

    sections = {part.splitlines()[0]: part.splitlines()[1:] for part in out.strip().split("\n\n")}
    assert code == 0
    assert route.calls.last.request.url.params["days"] == "7"
    assert f"usage of {KEY_ID} from 2030-03-01 to 2030-03-07" in sections
    counters = ["REQUESTS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "TOTAL_TOKENS", "ERRORS", "CANCELLED", "COST_USD"]
    totals = ["42", "9000", "3000", "12000", "2", "1", "0.00315"]
    assert [row.split() for row in sections["Totals"]] == [counters, totals]
    assert [row.split() for row in sections["By agent"]] == [  # a gateway that counts no cost: 0
        ["AGENT", *counters],
        ["gpt-4o-mini", "2", "1000", "100", "1100", "1", "0", "0"],
        ["support-bot", "40", "8000", "2900", "10900", "1", "1", "0"],
    ]
    assert [row.split()[:2] for row in sections["By day"]] == [
        ["DAY", "REQUESTS"],
        ["2030-03-06", "30"],
        ["2030-03-07", "12"],
    ]
    assert [row.split() for row in sections["Quotas"]] == [
        ["QUOTA", "LIMIT", "USED", "REMAINING", "RESETS", "AT"],
        ["tokens_per_day", "1000000", "4000", "996000", "2030-03-08T00:00:00Z"],
        ["tokens_per_month", "none", "-", "-", "-"],
    ]


def test_keys_usage_json_prints_the_raw_answer(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    admin_api.get(f"/admin/keys/{KEY_ID}/usage").respond(json=USAGE)

    code, out, _ = run(capsys, "usage", KEY_ID, "--json")

    assert code == 0
    assert json.loads(out) == USAGE


def test_an_api_error_exits_1_with_its_message_on_stderr(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"message": "no key with id 'key_nope'", "type": "invalid_request_error", "param": None}
    admin_api.get("/admin/keys/key_nope").respond(404, json={"error": {**error, "code": "key_not_found"}})

    code, out, err = run(capsys, "show", "key_nope")

    assert code == 1
    assert out == ""
    assert err == "gateway: no key with id 'key_nope' (HTTP 404, key_not_found)\n"


def test_a_validation_error_names_the_field(admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]) -> None:
    error = {"message": "must be at least 1", "type": "invalid_request_error", "param": "limits.rpm"}
    admin_api.post("/admin/keys").respond(422, json={"error": {**error, "code": "validation_error"}})

    code, _, err = run(capsys, "create", "--name", "x", "--rpm", "0")

    assert code == 1
    assert "must be at least 1" in err
    assert "param: limits.rpm" in err


def test_a_wrong_admin_key_exits_1_without_showing_the_key(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    error = {"message": f"invalid admin key: {ADMIN_KEY}", "type": "authentication_error", "param": None, "code": None}
    admin_api.get("/admin/keys").respond(401, json={"error": error})

    code, out, err = run(capsys, "list")

    assert code == 1
    assert out == ""
    assert "invalid admin key" in err
    assert "HTTP 401" in err


def test_a_missing_admin_key_exits_2_and_sends_nothing(
    admin_api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_KEY")

    code, out, err = run(capsys, "list")

    assert code == 2
    assert out == ""
    assert err == "gateway: no admin key: set GATEWAY_ADMIN_KEY or pass --admin-key\n"


def test_the_admin_key_may_come_from_a_dotenv_file(
    admin_api: respx.MockRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_KEY")
    (tmp_path / ".env").write_text(f"GATEWAY_ADMIN_KEY={ADMIN_KEY}\n", encoding="utf-8")
    route = admin_api.get("/admin/keys").respond(json=KEYS_PAGE)

    assert run(capsys, "list")[0] == 0
    assert route.calls.last.request.headers["authorization"] == f"Bearer {ADMIN_KEY}"


def test_url_and_admin_key_options_win_over_the_environment(
    admin_api: respx.MockRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "http://other-gateway.test:9000"
    route = admin_api.get(url=f"{other}/admin/keys").respond(json=KEYS_PAGE)

    code, _, _ = run(capsys, "list", "--url", other, "--admin-key", "another-admin-key")

    assert code == 0
    assert route.calls.last.request.headers["authorization"] == "Bearer another-admin-key"


def test_an_unreachable_gateway_exits_1_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)

    code, out, err = run(capsys, "list", "--url", url)

    assert code == 1
    assert out == ""
    assert err.startswith(f"gateway: cannot reach the gateway at {url}: ")


@pytest.fixture
def real_gateway(tmp_path: Path) -> Iterator[Process]:
    """A real gateway with the admin API on, serving the bundled demo agent."""
    env = {"GATEWAY_ADMIN_KEY": ADMIN_KEY, "GATEWAY_STATE_DIR": str(tmp_path / "state")}
    process = start_gateway(BUNDLED_CONFIG, tmp_path, env)
    yield process
    process.stop()


def test_keys_commands_against_a_real_gateway(
    real_gateway: Process, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_URL", real_gateway.url)
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)

    code, out, _ = run(capsys, "create", "--name", "e2e", "--model", "demo", "--rpm", "5", "--expires-in", "1d",
                       "--tokens-per-day", "1000", "--metadata", "team=qa")  # fmt: skip
    assert code == 0
    created = fields_of(out)
    secret = next(line.removeprefix("secret: ") for line in out.splitlines() if line.startswith("secret: "))
    key_id = created["id"]
    assert secret.startswith(created["prefix"])
    assert (created["models"], created["limits.rpm"], created["metadata.team"]) == ("demo", "5", "qa")

    chat = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{real_gateway.url}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"}
    )
    assert answer.status_code == 200

    code, out, _ = run(capsys, "list", "--metadata", "team=qa")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == [key_id, "e2e", created["prefix"], "demo"]
    assert out.splitlines()[1].split()[-1] == "active"

    code, out, _ = run(capsys, "update", key_id, "--no-expiry", "--clear-models", "--tpm", "100")
    assert code == 0
    updated = fields_of(out)
    assert (updated["expires_at"], updated["models"], updated["limits.tpm"], updated["limits.rpm"]) == (
        "never",
        "all",
        "100",
        "5",
    )

    code, out, _ = run(capsys, "rotate", key_id, "--grace", "60")
    assert code == 0
    assert f"secret: {secret}" not in out
    assert fields_of(out)["grace_until"] != "-"

    code, out, _ = run(capsys, "usage", key_id, "--days", "2")
    assert code == 0
    assert "Quotas" in out
    assert "tokens_per_day" in out

    code, out, _ = run(capsys, "revoke", key_id)
    assert code == 0
    assert fields_of(out)["status"] == "revoked"

    code, out, err = run(capsys, "show", "key_nope")
    assert code == 1
    assert "key_not_found" in err

    code, out, err = run(capsys, "list", "--admin-key", "not-the-admin-key")
    assert (code, out) == (1, "")
    assert "HTTP 401" in err
