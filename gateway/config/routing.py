"""The route config: agent files in, one immutable `RoutingTable` out (swapped whole on reload)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from gateway.config.agents import Agent, AgentFile, compile_agent


class ConfigError(Exception):
    """The config cannot be loaded; `problems` lists each one as `file: field.path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid route config:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Model name (agent name or alias) to agent. Built once; never mutated."""

    agents: tuple[Agent, ...]
    loaded_at: int = field(default_factory=lambda: int(time.time()))
    _by_model: Mapping[str, Agent] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_model = {}
        for agent in self.agents:
            for model in (agent.name, *agent.aliases):
                by_model[model] = agent
        object.__setattr__(self, "_by_model", by_model)

    def match(self, model: str) -> Agent | None:
        return self._by_model.get(model)

    def problems(self) -> list[str]:
        """What keeps an agent from serving (reported by `check` and `/readyz`)."""
        # An agent with one keyed target still serves (the others are skipped), so only none at all is a problem.
        return [
            f"agent '{a.name}': upstream key missing: set the environment variable {' or '.join(a.missing_keys())}"
            for a in self.agents
            if all(target.missing_key for target in a.targets)
        ]


def config_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError([f"{path}: no such file or directory"])


def load_routes(path: Path, environ: Mapping[str, str]) -> RoutingTable:
    """Read every agent file under `path`; raise `ConfigError` naming every problem at once."""
    problems: list[str] = []
    agents: list[Agent] = []
    files = config_files(path)
    if not files:
        raise ConfigError([f"{path}: no *.yaml agent files"])
    for file in files:
        problems.extend(_load_file(file, environ, agents))
    problems.extend(_duplicates(agents))
    if problems:
        raise ConfigError(problems)
    return RoutingTable(tuple(agents))


def _load_file(file: Path, environ: Mapping[str, str], into: list[Agent]) -> list[str]:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{file}: cannot read: {exc}"]
    except yaml.YAMLError as exc:
        return [f"{file}: not valid YAML: {exc}".replace("\n", " ")]
    if not isinstance(raw, dict):
        return [f"{file}: expected a mapping with `agent:` or `agents:` at the top"]
    try:
        parsed = AgentFile.model_validate(raw)
    except ValidationError as exc:
        return [f"{file}: {_field_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
    into.extend(compile_agent(spec, environ, str(file)) for spec in parsed.specs())
    return []


def _field_path(loc: Iterable[int | str]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "(top level)"


def _duplicates(agents: list[Agent]) -> list[str]:
    seen: dict[str, Agent] = {}
    problems = []
    for agent in agents:
        for model in (agent.name, *agent.aliases):
            if model in seen:
                first = seen[model]
                problems.append(
                    f"{agent.source}: model name '{model}' of agent '{agent.name}' is already used by "
                    f"agent '{first.name}' ({first.source})"
                )
            else:
                seen[model] = agent
    return problems
