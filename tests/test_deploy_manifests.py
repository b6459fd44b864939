"""The Helm chart's values and the sidecar example, checked without rendering (tests/test_helm_chart.py renders
the chart with a real helm):

- every environment's values (values.yaml with the overlay merged over it, as helm merges them) against
  values.schema.json, and values the schema must refuse, each with the message that names it;
- deploy/k8s/sidecar.yaml against Kubernetes' own schemas (kubernetes-validate) and for what it promises;
- the agent files in the values and in the sidecar example, with the gateway's own config loader;
- the plain YAML files with yamllint;
- the templates as text: every `.Values` path they read exists, and every value is read;
- the chart README documents every value.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices
from yamllint import linter
from yamllint.config import YamlLintConfig

from gateway.config.routing import load_routes
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "agent-gateway"
TEMPLATES = CHART / "templates"
SIDECAR = ROOT / "deploy" / "k8s" / "sidecar.yaml"
KUBERNETES_VERSION = "1.30"
ENVIRONMENTS = ["development", "staging", "production"]
# Variables the templates set that are not gateway settings: read by prometheus-client, or by agents (api_key_env).
OTHER_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "OPENAI_API_KEY", "OPENAI_BASE_URL"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def coalesce(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Values as helm merges `-f overlay` over the chart's values.yaml: maps merge key by key, anything else is
    replaced, and a null removes the key."""
    merged = dict(base)
    for key, value in overlay.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = coalesce(merged[key], value)
        else:
            merged[key] = value
    return merged


def environment(name: str) -> dict[str, Any]:
    return coalesce(load(CHART / "values.yaml"), load(CHART / f"values-{name}.yaml"))


def schema_errors(values: Mapping[str, Any]) -> list[str]:
    """Each error as `dotted.path: message` (the path of the value to change)."""
    validator = jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text(encoding="utf-8")))
    return sorted(
        f"{'.'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(values)
    )


def setting(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    *parents, last = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[last] = value
    return changed


def sidecar_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(SIDECAR.read_text(encoding="utf-8")) if doc]


def sidecar_pod() -> dict[str, Any]:
    (deployment,) = (doc for doc in sidecar_documents() if doc["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def template_texts() -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(TEMPLATES.iterdir())}


# The values schema


def test_the_schema_is_a_valid_draft_07_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_each_environment_s_values_satisfy_the_schema(name: str) -> None:
    assert schema_errors(environment(name)) == []


def test_values_yaml_alone_is_refused_naming_what_is_missing() -> None:
    # The defaults name no agent and no Secret: installing them alone must stop at the schema, not start a
    # gateway that refuses to serve.
    errors = schema_errors(load(CHART / "values.yaml"))
    assert "config.files: {} should be non-empty" in errors
    assert "secrets.values: 'GATEWAY_ADMIN_KEY' is a required property" in errors


# Each case changes the staging values (valid, see the test after this one) and names the error it must cause.
REFUSED = {
    # Several processes on the memory store would each keep their own keys, buckets and usage.
    "workers without redis": ({"redis.mode": ""}, "gateway.workers: 2 is greater than the maximum of 1"),
    "replicas without redis": ({"redis.mode": ""}, "replicaCount: 2 is greater than the maximum of 1"),
    "autoscaling without redis": (
        {"redis.mode": "", "gateway.workers": 1, "replicaCount": 1, "autoscaling.enabled": True},
        "autoscaling.enabled: False was expected",
    ),
    "no sentinels": ({"redis.sentinel.sentinels": []}, "redis.sentinel.sentinels: [] should be non-empty"),
    "no master name": ({"redis.sentinel.masterName": ""}, "redis.sentinel.masterName: '' should be non-empty"),
    "sentinels in one string": ({"redis.sentinel.sentinels": ["r-0:26379,r-1:26379"]}, "redis.sentinel.sentinels.0: "),
    "writable root": ({"containerSecurityContext.readOnlyRootFilesystem": False}, "containerSecurityContext.read"),
    "escalation": ({"containerSecurityContext.allowPrivilegeEscalation": True}, "containerSecurityContext.allow"),
    "capabilities kept": (
        {"containerSecurityContext.capabilities": {"drop": ["NET_RAW"]}},
        "containerSecurityContext.c",
    ),
    "capabilities added": (
        {"containerSecurityContext.capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
        "containerSecurityContext.capabilities: Additional properties are not allowed ('add' was unexpected)",
    ),
    "root allowed": ({"podSecurityContext.runAsNonRoot": False}, "podSecurityContext.runAsNonRoot"),
    "no seccomp": ({"podSecurityContext.seccompProfile": {"type": "Unconfined"}}, "podSecurityContext.seccompProfile"),
    "unknown auth": ({"gateway.auth": "basic"}, "gateway.auth: 'basic' is not one of"),
    "misspelled key": (
        {"gateway.wokers": 2},
        "gateway: Additional properties are not allowed ('wokers' was unexpected)",
    ),
    "pdb on one replica": ({"replicaCount": 1}, "replicaCount: 1 is less than the minimum of 2"),
    "probe endpoint": (
        {"livenessProbe.httpGet": {"path": "/"}},
        "livenessProbe: Additional properties are not allowed",
    ),
    "agent file name": ({"config.files": {"agent.json": {"agent": {}}}}, "config.files: 'agent.json' does not match"),
    "not an agent file": (
        {"config.files": {"a.yaml": {"name": "x"}}},
        "config.files.a.yaml: {'name': 'x'} is not valid",
    ),
    "no agent file": ({"config.files": {}}, "config.files: {} should be non-empty"),
    "redis egress to anywhere": (
        {"networkPolicy.egress.redis.namespace": "", "networkPolicy.egress.redis.podLabels": {}},
        "networkPolicy.egress.redis: ",
    ),
    "ingress from nobody": (
        {"networkPolicy.ingress.sameNamespace": False, "networkPolicy.ingress.namespaces": []},
        "networkPolicy.ingress.namespaces: [] should be non-empty",
    ),
    "grace as a string": (
        {"terminationGracePeriodSeconds": "90"},
        "terminationGracePeriodSeconds: '90' is not of type",
    ),
    # A Secret you manage cannot be read; one the chart creates must hold what the settings need.
    "created secret, short admin key": (
        {"secrets.existingSecret": "", "secrets.values": {"GATEWAY_ADMIN_KEY": "short"}},
        "secrets.values.GATEWAY_ADMIN_KEY: 'short' is too short",
    ),
    "created secret, no admin key": (
        {"secrets.existingSecret": "", "secrets.values": {"OPENAI_API_KEY": "sk-x"}},
        "secrets.values: 'GATEWAY_ADMIN_KEY' is a required property",
    ),
    "created secret, no redis url": (
        {
            "secrets.existingSecret": "",
            "secrets.values": {"GATEWAY_ADMIN_KEY": "a-long-admin-key"},
            "redis.mode": "url",
        },
        "secrets.values: 'REDIS_URL' is a required property",
    ),
    "created secret, not a variable name": (
        {
            "secrets.existingSecret": "",
            "secrets.values": {"openai-key": "sk-x", "GATEWAY_ADMIN_KEY": "a-long-admin-key"},
        },
        "secrets.values: 'openai-key' does not match",
    ),
}


@pytest.mark.parametrize(("changes", "error"), REFUSED.values(), ids=REFUSED.keys())
def test_the_schema_refuses_unsafe_or_mistyped_values(changes: dict[str, Any], error: str) -> None:
    values = environment("staging")
    for path, value in changes.items():
        values = setting(values, path, value)
    errors = schema_errors(values)
    assert any(message.startswith(error) for message in errors), errors


def test_the_staging_values_the_refusals_start_from_are_valid() -> None:
    # So that each refusal above is caused by its own changes, not by the starting point.
    values = environment("staging")
    assert (values["replicaCount"], values["gateway"]["workers"], values["redis"]["mode"]) == (2, 2, "sentinel")
    assert values["podDisruptionBudget"]["enabled"]
    assert values["networkPolicy"]["enabled"]
    assert schema_errors(values) == []


def test_the_sidecar_rendering_needs_neither_an_admin_key_nor_redis() -> None:
    # The values of the chart README's sidecar example.
    overlay = {
        "sidecar": {"enabled": True},
        "secrets": {"existingSecret": "my-app-gateway-keys"},
        "config": {"files": {"assistant.yaml": {"version": "1.0", "agent": {"name": "assistant"}}}},
    }
    values = coalesce(load(CHART / "values.yaml"), overlay)
    assert schema_errors(values) == []
    values["secrets"]["existingSecret"] = ""
    assert schema_errors(values) == []
    values["sidecar"]["enabled"] = False
    assert schema_errors(values) == ["secrets.values: 'GATEWAY_ADMIN_KEY' is a required property"]


def test_null_defaults_may_be_dropped_as_helm_drops_them() -> None:
    values = environment("production")
    del values["terminationGracePeriodSeconds"]
    del values["podDisruptionBudget"]["maxUnavailable"]
    assert schema_errors(values) == []


# The agent files


def agent_files(files: Mapping[str, Any], into: Path) -> Path:
    into.mkdir()
    for file_name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump(content)
        (into / file_name).write_text(text, encoding="utf-8")
    return into


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_each_environment_s_agents_load_in_the_gateway(name: str, tmp_path: Path) -> None:
    routes = load_routes(agent_files(environment(name)["config"]["files"], tmp_path / name), {"OPENAI_API_KEY": "sk"})
    assert routes.agents
    assert routes.problems() == []


def test_the_sidecar_example_s_agents_load_in_the_gateway(tmp_path: Path) -> None:
    (config_map,) = (doc for doc in sidecar_documents() if doc["kind"] == "ConfigMap")
    routes = load_routes(agent_files(config_map["data"], tmp_path / "sidecar"), {"OPENAI_API_KEY": "sk"})
    assert [agent.name for agent in routes.agents] == ["assistant"]
    assert routes.problems() == []


# Plain YAML: lint and Kubernetes schemas

YAMLLINT = YamlLintConfig("extends: relaxed\nrules:\n  line-length: {max: 140}\n  truthy: {check-keys: false}\n")


@pytest.mark.parametrize(
    "path",
    [*sorted(CHART.glob("values*.yaml")), CHART / "Chart.yaml", SIDECAR],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_the_plain_yaml_files_pass_yamllint(path: Path) -> None:
    problems = list(linter.run(path.read_text(encoding="utf-8"), YAMLLINT, str(path)))
    assert [f"{p.line}:{p.column} {p.rule}: {p.desc}" for p in problems] == []


def test_yamllint_reports_what_it_should() -> None:
    problems = list(linter.run("key: value\nkey: again\n", YAMLLINT))
    assert [p.rule for p in problems] == ["key-duplicates"]


def test_the_sidecar_example_is_valid_kubernetes() -> None:
    documents = sidecar_documents()
    assert [doc["kind"] for doc in documents] == ["ConfigMap", "Deployment"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_sidecar_example_runs_the_gateway_on_localhost_for_the_app_alone() -> None:
    pod = sidecar_pod()
    (gateway,) = pod["initContainers"]
    (app,) = pod["containers"]
    gateway_env = env_of(gateway)
    assert gateway["restartPolicy"] == "Always"  # a native sidecar: up before the app, down after it
    assert gateway_env["GATEWAY_HOST"] == "127.0.0.1"
    assert gateway_env["GATEWAY_AUTH"] == "none"
    assert gateway_env["GATEWAY_CONFIG"] == "/etc/gateway"
    assert gateway_env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "my-app-gateway-keys", "key": "OPENAI_API_KEY"}}
    assert env_of(app)["OPENAI_BASE_URL"] == f"http://127.0.0.1:{gateway_env['GATEWAY_PORT']}/v1"
    assert gateway["ports"][0]["containerPort"] == int(gateway_env["GATEWAY_PORT"])
    assert "ports" not in app or all(p["containerPort"] != int(gateway_env["GATEWAY_PORT"]) for p in app["ports"])


def test_the_sidecar_example_has_the_chart_s_security_context_and_probes() -> None:
    pod = sidecar_pod()
    (gateway,) = pod["initContainers"]
    values = load(CHART / "values.yaml")
    assert gateway["securityContext"] == values["containerSecurityContext"]
    assert pod["securityContext"] == values["podSecurityContext"]
    port = env_of(gateway)["GATEWAY_PORT"]
    probes = {
        kind: " ".join(gateway[kind]["exec"]["command"]) for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert f"http://127.0.0.1:{port}/healthz" in probes["livenessProbe"]
    assert f"http://127.0.0.1:{port}/readyz" in probes["readinessProbe"]
    assert f"http://127.0.0.1:{port}/readyz" in probes["startupProbe"]


def test_the_sidecar_example_gives_the_read_only_gateway_somewhere_to_write() -> None:
    pod = sidecar_pod()
    (gateway,) = pod["initContainers"]
    mounts = {mount["mountPath"]: mount for mount in gateway["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts[env_of(gateway)["GATEWAY_STATE_DIR"]]["name"]]
    config = mounts["/etc/gateway"]
    assert "subPath" not in config  # a subPath mount never sees ConfigMap updates, so hot reload would not either
    assert volumes[config["name"]]["configMap"]["name"] == "my-app-gateway-config"


def test_the_sidecar_example_s_pod_waits_for_the_drain() -> None:
    pod = sidecar_pod()
    (gateway,) = pod["initContainers"]
    gateway_env = env_of(gateway)
    drain = float(gateway_env["GATEWAY_DRAIN_TIMEOUT"]) + float(gateway_env["GATEWAY_SHUTDOWN_DELAY"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_the_variables_the_manifests_set_are_ones_the_gateway_reads() -> None:
    known = set(OTHER_VARIABLES)
    for name, field in Settings.model_fields.items():
        known.add(f"GATEWAY_{name.upper()}")
        if isinstance(field.validation_alias, AliasChoices):
            known.update(str(choice) for choice in field.validation_alias.choices)
    (gateway,) = sidecar_pod()["initContainers"]
    assert set(env_of(gateway)) - known == set()
    helper = (TEMPLATES / "_helpers.tpl").read_text(encoding="utf-8")
    in_chart = set(re.findall(r"name: ([A-Z][A-Z0-9_]+)", helper))
    assert {"GATEWAY_CONFIG", "REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"} <= in_chart
    assert in_chart - known == set()


# The templates, read as text

VALUES_PATH = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
OPENING = re.compile(r"\{\{-?\s*(if|range|with|define|block)\b")
CLOSING = re.compile(r"\{\{-?\s*end\b")


def resolves(values: Mapping[str, Any], path: str) -> bool:
    node: Any = values
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def test_every_value_the_templates_read_exists_in_values_yaml() -> None:
    values = load(CHART / "values.yaml")
    read = {match for text in template_texts().values() for match in VALUES_PATH.findall(text)}
    assert read
    assert sorted(path.lstrip(".") for path in read if not resolves(values, path.lstrip("."))) == []


def test_every_value_in_values_yaml_is_read_by_a_template() -> None:
    read = " ".join(p.lstrip(".") for text in template_texts().values() for p in VALUES_PATH.findall(text))
    unread = [key for key in load(CHART / "values.yaml") if not re.search(rf"(^| ){key}(\.| |$)", read)]
    assert unread == []


@pytest.mark.parametrize("name", ["default", *ENVIRONMENTS])
def test_each_environment_s_explicit_grace_period_outlasts_the_drain(name: str) -> None:
    values = load(CHART / "values.yaml") if name == "default" else environment(name)
    needed = values["preStopSleepSeconds"] + values["gateway"]["shutdownDelay"] + values["gateway"]["drainTimeout"]
    grace = values.get("terminationGracePeriodSeconds")
    assert grace is None or grace > needed


# The chart's README


def documented_paths(values: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Each value, down to the objects the schema closes (the chart's own); open ones are passed on as they are."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            yield from documented_paths(value, node, f"{path}.")
        else:
            yield path


def test_the_chart_readme_documents_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    paths = list(documented_paths(load(CHART / "values.yaml"), schema))
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert "gateway.workers" in paths
    assert [path for path in paths if f"| `{path}` |" not in readme] == []
