"""The route config: agent files load into a `RoutingTable`, and every mistake is named by file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.agents import AgentSpec, compile_agent
from gateway.config.routing import ConfigError, RoutingTable, load_routes

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CONFIG = ROOT / "config"
REFERENCE_AGENTS = Path(__file__).resolve().parent / "fixtures" / "reference-agents"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"

# A missing or empty reference folder becomes a parameter of its own, so the load test fails instead of skipping.
MOCK_A = "agents:\n  - name: a\n    llm: {provider: mock}\n"

AGENT_FILES = sorted(BUNDLED_CONFIG.glob("*.yaml")) + (sorted(REFERENCE_AGENTS.glob("*.yaml")) or [REFERENCE_AGENTS])


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_routes(path, environ or {})
    return info.value.problems


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_bundled_and_reference_file_loads(path: Path) -> None:
    table = load_routes(path, {})

    assert table.agents
    for agent in table.agents:
        assert agent.source == str(path)
        assert table.match(agent.name) is agent


def test_the_reference_folder_holds_the_five_reference_agents() -> None:
    table = load_routes(REFERENCE_AGENTS, {})

    assert sorted(a.name for a in table.agents) == [
        "chat_assistant",
        "full_featured_assistant",
        "my_assistant",
        "rate_limited_assistant",
        "streaming_assistant",
    ]


def test_the_complete_reference_agent_keeps_its_defaults_and_system_prompt() -> None:
    agent = load_routes(REFERENCE_AGENTS / "04-complete.yaml", {}).agents[0]

    assert agent.upstream_model == "gpt-4"
    assert dict(agent.defaults) == {"temperature": 0.7, "max_tokens": 2000}
    assert agent.system_prompt == "You are a helpful AI assistant."
    assert agent.features() == ["sessions", "streaming", "rate-limit", "limits", "system-prompt"]


def test_a_file_with_several_agents_loads_them_all() -> None:
    table = load_routes(FIXTURES / "multi" / "agents.yaml", {})

    assert [a.name for a in table.agents] == ["writer", "local-llama"]
    llama = table.match("local-llama")
    assert llama is not None
    assert llama.provider == "openai-compatible"
    assert llama.base_url == "http://localhost:11434/v1"


def test_a_directory_loads_every_yaml_and_yml_file_and_ignores_others() -> None:
    table = load_routes(FIXTURES / "dir", {})

    assert [a.name for a in table.agents] == ["chat", "summarize"]
    assert table.match("sum") is table.match("summarize")


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path)

    assert len(problems) == 1
    assert str(tmp_path) in problems[0]
    assert "no *.yaml agent files" in problems[0]


def test_a_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    assert problems_of(missing) == [f"{missing}: no such file or directory"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("agent:\n  name: a\n  llm: {provider: mock, temprature: 0.2}\n", "agent.llm.temprature"),
        ("agent:\n  name: a\n  llm: {provider: mock}\n  colour: blue\n", "agent.colour"),
        ("agent:\n  name: a\n  llm: {provider: mock}\n  session: {enabled: true, ttl: 5}\n", "agent.session.ttl"),
        ('version: "1.0"\nagnet:\n  name: a\n', "agnet"),
        (MOCK_A + "  - name: b\n    llm: {provider: mock, modle: x}\n", "agents[1].llm.modle"),
        (MOCK_A + "  - name: b\n    llm: {provider: openai, model: [gpt-4]}\n", "agents[1].llm.model"),
        (
            MOCK_A + "  - name: b\n    llm: {provider: mock}\n    streaming: {chunk_size: 0}\n",
            "agents[1].streaming.chunk_size",
        ),
    ],
)
def test_a_bad_field_is_an_error_naming_the_file_and_the_field_path(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)

    problems = problems_of(path)

    assert any(p.startswith(f"{path}: {field}: ") for p in problems), problems


def test_an_unknown_provider_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK_A + "  - name: b\n    llm: {provider: opneai, model: x}\n")

    problems = problems_of(path)

    assert any(
        p.startswith(f"{path}: agents[1].llm.provider: ")
        and "unknown provider 'opneai'" in p
        and "openai-compatible" in p
        for p in problems
    ), problems


def test_an_agent_without_llm_is_an_error_naming_that_agent(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK_A + "  - name: b\n    colour: blue\n")

    problems = problems_of(path)

    assert any(p.startswith(f"{path}: agents[1].llm") for p in problems), problems
    assert any(p.startswith(f"{path}: agents[1].colour: ") for p in problems), problems


def test_invalid_yaml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  name: [unclosed\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: not valid YAML")
    assert "\n" not in problems[0]


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_a_file_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    assert problems_of(path) == [f"{path}: expected a mapping with `agent:` or `agents:` at the top"]


@pytest.mark.parametrize(
    "text",
    [
        'version: "1.0"\n',
        "agent: {name: a, llm: {provider: mock}}\nagents: [{name: b, llm: {provider: mock}}]\n",
    ],
    ids=["neither", "both"],
)
def test_a_file_needs_exactly_one_of_agent_and_agents(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: ")
    assert "`agent:` or `agents:`" in problems[0]


def test_duplicate_agent_names_across_files_name_both_files() -> None:
    folder = FIXTURES / "duplicate-names"

    problems = problems_of(folder)

    assert len(problems) == 1
    assert str(folder / "a.yaml") in problems[0]
    assert str(folder / "b.yaml") in problems[0]
    assert "'helper'" in problems[0]


def test_duplicate_aliases_across_files_name_both_files() -> None:
    folder = FIXTURES / "duplicate-aliases"

    problems = problems_of(folder)

    assert len(problems) == 1
    assert str(folder / "a.yaml") in problems[0]
    assert str(folder / "b.yaml") in problems[0]
    assert "'default'" in problems[0]


def test_openai_compatible_without_base_url_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "agent:\n  name: local\n  llm: {provider: openai-compatible, model: llama3}\n")

    problems = problems_of(path)

    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: agent.llm: ")
    assert "base_url" in problems[0]


def test_several_problems_across_files_are_reported_at_once() -> None:
    folder = FIXTURES / "several-problems"

    problems = problems_of(folder)

    assert len(problems) == 3
    assert problems[0].startswith(f"{folder / 'a-unknown-key.yaml'}: agent.sesion: ")
    assert problems[1].startswith(f"{folder / 'b-not-yaml.yaml'}: not valid YAML")
    assert problems[2].startswith(f"{folder / 'c-no-base-url.yaml'}: agent.llm: ")


def test_the_config_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_routes(FIXTURES / "several-problems", {})

    message = str(info.value)
    for problem in info.value.problems:
        assert problem in message


def test_openai_provider_defaults_base_url_and_key_variable() -> None:
    agent = load_routes(FIXTURES / "openai-no-key", {"OPENAI_API_KEY": "sk-from-env"}).agents[0]

    assert agent.base_url == "https://api.openai.com/v1"
    assert agent.primary.api_key_env == "OPENAI_API_KEY"
    assert agent.primary.api_key == "sk-from-env"


def test_the_api_key_comes_from_the_given_environ_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-process-env")

    table = load_routes(FIXTURES / "openai-no-key", {})

    assert table.agents[0].primary.api_key is None
    assert table.agents[0].primary.missing_key


def test_a_missing_upstream_key_is_a_problem_of_the_table() -> None:
    table = load_routes(FIXTURES / "openai-no-key", {})

    assert table.problems() == [
        "agent 'gpt': upstream key missing: set the environment variable OPENAI_API_KEY",
    ]


def test_a_table_with_every_key_present_has_no_problems() -> None:
    table = load_routes(FIXTURES / "openai-no-key", {"OPENAI_API_KEY": "sk-x"})

    assert table.problems() == []


def test_a_mock_agent_needs_no_key() -> None:
    table = load_routes(BUNDLED_CONFIG, {})

    assert table.problems() == []


def test_a_custom_key_variable_is_read_from_environ() -> None:
    spec = AgentSpec.model_validate(
        {
            "name": "local",
            "llm": {
                "provider": "openai-compatible",
                "model": "llama3",
                "base_url": "http://localhost:8000/v1",
                "api_key_env": "LOCAL_KEY",
            },
        }
    )

    assert compile_agent(spec, {"LOCAL_KEY": "sk-local"}).primary.api_key == "sk-local"
    assert RoutingTable((compile_agent(spec, {}),)).problems() == [
        "agent 'local': upstream key missing: set the environment variable LOCAL_KEY",
    ]


@pytest.mark.parametrize("model", ["writer", "w", "local-llama"])
def test_match_finds_agents_by_name_and_alias(model: str) -> None:
    table = load_routes(FIXTURES / "multi" / "agents.yaml", {})

    agent = table.match(model)

    assert agent is not None
    assert model in (agent.name, *agent.aliases)


@pytest.mark.parametrize("model", ["gpt-4", "Writer", "", "llama3"])
def test_match_returns_none_for_an_unknown_model(model: str) -> None:
    table = load_routes(FIXTURES / "multi" / "agents.yaml", {})

    assert table.match(model) is None


def test_the_agent_repr_never_shows_the_api_key() -> None:
    secret = "sk-very-secret-123"
    table = load_routes(FIXTURES / "openai-no-key", {"OPENAI_API_KEY": secret})

    assert table.agents[0].primary.api_key == secret
    assert secret not in repr(table.agents[0])
    assert secret not in str(table.agents[0])
    assert secret not in repr(table)
