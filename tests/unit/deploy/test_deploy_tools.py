"""The deployment files checked with Kubernetes' and Docker's own tools, offline.

- Every object in deploy/k8s passes the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown
  or misspelt field fails too), for the oldest Kubernetes release opscale supports.
- The Helm chart (deploy/helm/opscale) renders, with `helm template` where the helm CLI is installed,
  else through Helm's own Go library (the `helm-python-sdk` package, the `chart` extra) where that is
  installed, else the tests skip. Its objects pass the same schemas and are the objects of deploy/k8s.
  These tests are marked `chart`; the nightly target (.ci/nightly) installs the renderer and runs them.
- docker-compose.yml parses with `docker compose config` where Docker Compose is installed (the file's
  structure is checked in test_compose.py everywhere).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from _paths import REPO
from test_compose import _check_env_names, _serve_name, _settings_class, clean_env  # noqa: F401 (a fixture)

from opscale.runtime.live.settings import load_settings

pytestmark = pytest.mark.unit

K8S_DIR = REPO / "deploy" / "k8s"
CHART = REPO / "deploy" / "helm" / "opscale"
# The Kubernetes release whose schemas the manifests must pass: an old one still in the clouds' extended
# support, so the objects use nothing newer; kubernetes-validate ships the schemas of each release.
KUBERNETES_VERSION = "1.30"


def _kustomize_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":  # kustomize's own file, not a Kubernetes object
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return objects


def _validate(obj: dict[str, Any]) -> None:
    where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.caught.path)
        pytest.fail(f"{where}: {path}: {exc.caught.message}")


@pytest.mark.parametrize("obj", _kustomize_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_k8s_manifests_pass_the_kubernetes_schemas(obj: dict[str, Any]) -> None:
    _validate(obj)


def test_schema_validation_catches_what_kubectl_would_refuse() -> None:
    """The validator is not a rubber stamp: a misspelt field and a wrong type fail."""
    deployment = next(o for o in _kustomize_objects() if o["kind"] == "Deployment")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


# -- the Helm chart ---------------------------------------------------------------------------------


HAS_RENDERER = shutil.which("helm") is not None or importlib.util.find_spec("helm_python") is not None


def chart(test: Any) -> Any:
    """A test that renders the chart: marked `chart`, and skipped where neither renderer is installed."""
    skip = pytest.mark.skipif(not HAS_RENDERER, reason="neither the helm CLI nor helm-python-sdk is installed "
                              "(pip install -e '.[chart]')")
    return pytest.mark.chart(skip(test))


def _render(tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's objects as `helm template opscale deploy/helm/opscale -n opscale [-f values]` gives them."""
    if shutil.which("helm"):
        command = ["helm", "template", "opscale", str(CHART), "--namespace", "opscale"]
        if values:
            values_file = tmp_path / "values.yaml"
            values_file.write_text(yaml.safe_dump(values))
            command += ["-f", str(values_file)]
        text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    else:
        import helm_python

        rendered = helm_python.Chart.load(CHART).render(values, name="opscale", namespace="opscale")
        text = "\n---\n".join(rendered[name] for name in sorted(rendered) if name.endswith(".yaml"))
    return [d for d in yaml.safe_load_all(text) if d]


@chart
def test_the_chart_renders_objects_that_pass_the_kubernetes_schemas(tmp_path: Path) -> None:
    objects = _render(tmp_path)
    assert objects
    for obj in objects:
        _validate(obj)


def _workload_shape(obj: dict[str, Any]) -> dict[str, Any]:
    """What a workload runs and how, without the labels Helm adds."""
    pod = obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return {
        "replicas": obj["spec"].get("replicas"),
        "strategy": obj["spec"].get("strategy"),
        "updateStrategy": obj["spec"].get("updateStrategy"),
        "selector": obj["spec"]["selector"],
        "pod": {k: v for k, v in pod.items() if k != "containers"},
        "container": {k: v for k, v in container.items() if k != "imagePullPolicy" and k != "image"},
        "scrape": {k: v for k, v in obj["spec"]["template"]["metadata"]["annotations"].items()
                   if k.startswith("prometheus.io/")},
    }


@chart
def test_the_chart_renders_the_objects_of_deploy_k8s(tmp_path: Path) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]): o for o in _render(tmp_path)}
    kustomized = {(o["kind"], o["metadata"]["name"]): o for o in _kustomize_objects() if o["kind"] != "Namespace"}
    assert set(rendered) == set(kustomized)  # the release's namespace is Helm's (--namespace)
    for key, expected in kustomized.items():
        got = rendered[key]
        if key[0] == "ConfigMap":
            assert yaml.safe_load(got["data"]["config.yaml"]) == yaml.safe_load(expected["data"]["config.yaml"])
        elif key[0] == "Service":
            assert got["spec"]["selector"] == expected["spec"]["selector"], key
            assert got["spec"]["ports"] == expected["spec"]["ports"], key
        else:
            assert _workload_shape(got) == _workload_shape(expected), key
        assert expected["metadata"].get("labels", {}).items() <= got["metadata"]["labels"].items(), key


def _workloads(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each service's pod spec and container, checked for what the API server or the settings would refuse:
    a misnamed environment variable, a volume without its mount, two mounts at one path."""
    workloads = {}
    for obj in objects:
        _validate(obj)
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        service = _serve_name(container["command"])
        _check_env_names({e["name"]: e.get("value") for e in container["env"]}, service, obj["metadata"]["name"])
        assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in container["volumeMounts"]}, service
        paths = [m["mountPath"] for m in container["volumeMounts"]]
        assert len(paths) == len(set(paths)), (service, paths)
        workloads[service] = (pod, container)
    return workloads


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key) it is read from."""
    return {e["name"]: (ref["name"], ref["key"]) for e in container["env"]
            if (ref := e.get("valueFrom", {}).get("secretKeyRef"))}


@chart
def test_the_chart_references_secrets_it_does_not_write(tmp_path: Path) -> None:
    values = {
        "secrets": {"apiKeys": {"existingSecret": "opscale-api-keys"},
                    "tls": {"existingSecrets": {"planner": "planner-cert"}},
                    "nats": {"existingSecret": "nats-passwords", "users": {"nodeAgent": "agent"}},
                    "mounts": [{"name": "extra", "secretName": "opscale-extra", "mountPath": "/etc/opscale-extra",
                                "services": ["planner", "node-agent"]}]},
        "router": {"env": [{"name": "OPSCALE_ROUTER_LOG_LEVEL", "value": "DEBUG"}]},
        "config": {"planner": {"grpc_tls": {"server_name": "gpu-agent"}}},
    }
    objects = _render(tmp_path, values)
    assert not [o for o in objects if o["kind"] == "Secret"]  # referenced, never written
    workloads = _workloads(objects)
    mounted = {service: {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
               for service, (pod, _) in workloads.items()}
    assert mounted == {"router": {"opscale-api-keys", "opscale-router-tls"},
                       "aggregator": {"opscale-aggregator-tls"}, "forecaster": {"opscale-forecaster-tls"},
                       "planner": {"planner-cert", "opscale-extra"},
                       "node-agent": {"opscale-node-agent-tls", "opscale-extra"}}
    router_env = {e["name"]: e.get("value") for e in workloads["router"][1]["env"]}
    assert router_env["OPSCALE_ROUTER_AUTH__KEYS_FILE"] == "/etc/opscale-auth/keys.yaml"
    assert router_env["OPSCALE_ROUTER_LOG_LEVEL"] == "DEBUG"
    agent_env = {e["name"]: e.get("value") for e in workloads["node-agent"][1]["env"]}
    assert agent_env["OPSCALE_NODE_AGENT_NATS_AUTH__USER"] == "agent"
    assert _secret_refs(workloads["node-agent"][1]) == {
        "OPSCALE_NODE_AGENT_NATS_AUTH__PASSWORD": ("nats-passwords", "agent"),
        "OPSCALE_NODE_AGENT_REDIS_AUTH__PASSWORD": ("opscale-redis-credentials", "password")}
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["planner"]["grpc_tls"] == {"server_name": "gpu-agent"}  # the user's config wins
    assert config["grpc_tls"]["ca_file"] == "/etc/opscale-tls/ca.crt"


@chart
@pytest.mark.usefixtures("clean_env")  # no OPSCALE_* variable of the runner's environment in the settings
def test_the_chart_without_tls_or_credentials_mounts_and_sets_none(tmp_path: Path) -> None:
    """TLS and the NATS and Redis credentials can be turned off (a development cluster); the services then
    start only where config.grpc_tls says how (here the demo's plain text, asked for by name)."""
    values = {"secrets": {"tls": {"enabled": False}, "nats": {"existingSecret": ""}, "redis": {"existingSecret": ""}},
              "config": {"grpc_tls": {"insecure": True}}}
    objects = _render(tmp_path, values)
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    config_file = tmp_path / "config.yaml"
    config_file.write_text(configmap["data"]["config.yaml"])
    config = yaml.safe_load(config_file.read_text())
    assert config["grpc_tls"] == {"insecure": True}
    assert "nats_auth" not in config and "grpc_tls" not in config["planner"]
    for service, (pod, container) in _workloads(objects).items():
        assert not [v for v in pod["volumes"] if "secret" in v], service
        assert not _secret_refs(container), service
        settings = load_settings(_settings_class(service), config_path=config_file)
        settings.grpc_tls.require(service)
        assert settings.nats_auth.tls_ca_file is None, service


# -- docker compose ---------------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_parses() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("Docker Compose is not installed (test_compose.py checks the file's structure)")
    result = subprocess.run([*command, "-f", str(REPO / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
