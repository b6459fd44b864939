"""The `gateway` command, run in process: `version` and `check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import main

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CONFIG = ROOT / "config"
REFERENCE_AGENTS = ROOT.parent / "shared" / "reference-agents"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty working directory (no stray `.env`) and no upstream key or config from the caller's shell."""
    monkeypatch.chdir(tmp_path)
    for name in ("OPENAI_API_KEY", "GATEWAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0

    assert capsys.readouterr().out == f"agent-gateway {__version__}\n"


def test_check_prints_the_route_table_of_the_bundled_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config", str(BUNDLED_CONFIG)])

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["AGENT", "ALIASES", "PROVIDER", "UPSTREAM", "MODEL", "BASE", "URL", "FEATURES"]
    assert lines[1].split() == ["demo", "demo-mock", "mock", "-", "(built", "in)", "streaming,system-prompt"]
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
