"""The deployment files checked with Kubernetes' and Docker's own tools, offline.

- Every object in deploy/k8s passes the Kubernetes JSON schemas (kubernetes-validate, strict: an unknown
  or misspelt field fails too), for the oldest Kubernetes release opscale supports.
- The Helm chart (deploy/helm/opscale) renders, with `helm template` where the helm CLI is installed,
  else through Helm's own Go library (the `helm-python-sdk` package) where that is installed, else the
  tests skip. Its objects pass the same schemas and are the objects of deploy/k8s.
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
from test_compose import _check_env_names, _serve_name

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


def _render(tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's objects as `helm template opscale deploy/helm/opscale -n opscale [-f values]` gives them."""
    if shutil.which("helm"):
        command = ["helm", "template", "opscale", str(CHART), "--namespace", "opscale"]
        if values:
            values_file = tmp_path / "values.yaml"
            values_file.write_text(yaml.safe_dump(values))
            command += ["-f", str(values_file)]
        text = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120).stdout
    elif importlib.util.find_spec("helm_python") is not None:
        import helm_python

        rendered = helm_python.Chart.load(CHART).render(values, name="opscale", namespace="opscale")
        text = "\n---\n".join(rendered[name] for name in sorted(rendered) if name.endswith(".yaml"))
    else:
        pytest.skip("neither the helm CLI nor helm-python-sdk is installed")
    return [d for d in yaml.safe_load_all(text) if d]


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


def test_the_chart_references_secrets_it_does_not_write(tmp_path: Path) -> None:
    values = {
        "secrets": {"apiKeys": {"existingSecret": "opscale-api-keys"},
                    "mounts": [{"name": "tls", "secretName": "opscale-tls", "mountPath": "/etc/opscale-tls",
                                "services": ["planner", "node-agent"]}]},
        "router": {"env": [{"name": "OPSCALE_ROUTER_LOG_LEVEL", "value": "DEBUG"}]},
    }
    objects = _render(tmp_path, values)
    assert not [o for o in objects if o["kind"] == "Secret"]  # referenced, never written
    mounted: dict[str, set[str]] = {}
    for obj in objects:
        _validate(obj)
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        service = _serve_name(container["command"])
        _check_env_names({e["name"]: e.get("value") for e in container["env"]}, service, obj["metadata"]["name"])
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert {v["name"] for v in pod["volumes"]} == mounts, service
        mounted[service] = secrets
        if service == "router":
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["OPSCALE_ROUTER_AUTH__KEYS_FILE"] == "/etc/opscale-auth/keys.yaml"
            assert env["OPSCALE_ROUTER_LOG_LEVEL"] == "DEBUG"
    assert mounted == {"router": {"opscale-api-keys"}, "aggregator": set(), "forecaster": set(),
                       "planner": {"opscale-tls"}, "node-agent": {"opscale-tls"}}


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
