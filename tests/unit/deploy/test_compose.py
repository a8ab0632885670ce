"""The deployment files agree with the code: docker-compose.yml, deploy/k8s, deploy/systemd.

Every opscale container runs `opscale serve <name>` with a name the CLI serves, every environment
variable names a real settings field with a valid value, every URL points at a service and port that
exist, published and ops ports do not collide, and every health check hits its service's ops port.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from _paths import REPO

from opscale.cli import SERVICE_NAMES
from opscale.runtime.live.settings import SERVICE_SETTINGS, LiveSettings, load_settings

pytestmark = pytest.mark.unit

ROOT = REPO
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
K8S_DIR = ROOT / "deploy" / "k8s"


def _serve_name(command: list[str]) -> str:
    assert isinstance(command, list) and command[:2] == ["opscale", "serve"] and len(command) == 3, command
    return command[2]


OPSCALE_SERVICES = {name: spec for name, spec in SERVICES.items() if spec.get("command", [""])[0] == "opscale"}


def _settings_class(service: str) -> type[LiveSettings]:
    return SERVICE_SETTINGS[service.replace("-", "_")]


def _env_prefix(service: str) -> str:
    return f"OPSCALE_{service.upper().replace('-', '_')}_"


def _check_env_names(env: dict[str, Any], service: str, where: str) -> None:
    """Every OPSCALE_<SERVICE>_<FIELD>[__<SUB>] names a real field (a typo would be silently ignored)."""
    cls = _settings_class(service)
    prefix = _env_prefix(service)
    for key in env:
        if key == "OPSCALE_CONFIG":
            continue
        assert key.startswith(prefix), f"{where}: {key} does not start with {prefix}"
        path = key[len(prefix):].lower().split("__")
        model: Any = cls
        for part in path:
            assert part in model.model_fields, f"{where}: {key}: {cls.__name__} has no field {part!r}"
            model = model.model_fields[part].annotation


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OPSCALE_* variable of the test runner's environment leaks into the settings under test."""
    for key in list(os.environ):
        if key.startswith("OPSCALE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def _load_with_env(monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, Any]) -> LiveSettings:
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return load_settings(_settings_class(service))


# -- docker compose ---------------------------------------------------------------------------------


def test_every_opscale_service_runs_a_real_serve_command() -> None:
    names = {name: _serve_name(spec["command"]) for name, spec in OPSCALE_SERVICES.items()}
    for compose_name, serve_name in names.items():
        assert serve_name in SERVICE_NAMES, f"{compose_name}: `opscale serve {serve_name}` is not a service"
    assert set(names.values()) == set(SERVICE_NAMES)  # the whole stack
    assert sorted(n for n, s in names.items() if s == "node-agent") == ["node-agent-1", "node-agent-2"]
    for name in ("router", "aggregator", "forecaster", "planner"):
        assert names[name] == name


def test_one_image_from_deploy_dockerfile() -> None:
    dockerfile = ROOT / "deploy" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install( --\S+)* \.$", text, re.M)
    for name, spec in OPSCALE_SERVICES.items():
        assert spec["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
    assert len({spec["image"] for spec in OPSCALE_SERVICES.values()}) == 1


def test_infrastructure_images_and_jetstream() -> None:
    assert SERVICES["nats"]["image"].startswith("nats:2.10")
    assert "-js" in SERVICES["nats"]["command"]
    assert re.search(r"^jetstream\s*\{", (ROOT / "deploy" / "nats.conf").read_text(), re.M)
    assert SERVICES["redis"]["image"] == "redis:7"


@pytest.mark.parametrize("name", sorted(OPSCALE_SERVICES))
def test_environment_names_real_settings_with_valid_values(name: str, clean_env: pytest.MonkeyPatch) -> None:
    spec = OPSCALE_SERVICES[name]
    service = _serve_name(spec["command"])
    env = spec["environment"]
    _check_env_names(env, service, f"compose {name}")
    prefix = _env_prefix(service)
    for required in ("NATS_URL", "REDIS_URL", "OPS_PORT"):
        assert prefix + required in env, f"compose {name}: {prefix}{required} is not set"
    settings = _load_with_env(clean_env, service, env)  # raises SettingsError naming any bad value
    assert settings.nats_url == "nats://nats:4222" and settings.redis_url == "redis://redis:6379/0"


def test_node_agents_are_two_hosts_in_two_regions(clean_env: pytest.MonkeyPatch) -> None:
    agents = []
    for name in ("node-agent-1", "node-agent-2"):
        with pytest.MonkeyPatch.context() as mp:
            settings = _load_with_env(mp, "node-agent", SERVICES[name]["environment"])
        agents.append(settings)
        assert settings.agent_id == name
        assert settings.advertise_host == name  # the planner reaches the agent by its compose name
    assert [(a.region, a.sku, a.gpus) for a in agents] == [("eu-west", "H100-80GB", 8), ("us-east", "A100-80GB", 8)]


def _listening_ports() -> dict[str, set[int]]:
    """The ports each compose service listens on inside the network."""
    nats_conf = (ROOT / "deploy" / "nats.conf").read_text()
    ports: dict[str, set[int]] = {
        "nats": {int(p) for p in re.findall(r"^(?:port|http_port):\s*(\d+)", nats_conf, re.M)},
        "redis": {6379},
        "prometheus": {9090},
    }
    for name, spec in OPSCALE_SERVICES.items():
        ports[name] = {int(v) for k, v in spec["environment"].items() if k.endswith("_PORT")}
    return ports


def test_every_url_points_at_a_service_and_port_that_exist() -> None:
    ports = _listening_ports()
    urls = 0
    for name, spec in OPSCALE_SERVICES.items():
        for key, value in spec["environment"].items():
            if not isinstance(value, str) or "://" not in value:
                continue
            parts = urlsplit(value)
            assert parts.hostname in SERVICES, f"{name}: {key}={value}: no compose service {parts.hostname!r}"
            assert parts.port in ports[parts.hostname], f"{name}: {key}={value}: {parts.hostname} has no port {parts.port}"
            deps = spec.get("depends_on", {})
            assert deps.get(parts.hostname, {}).get("condition") == "service_healthy", (
                f"{name} uses {parts.hostname} but does not wait for it to be healthy")
            urls += 1
    assert urls == 2 * len(OPSCALE_SERVICES)


def test_published_and_ops_ports_do_not_collide() -> None:
    ports = _listening_ports()
    published: dict[int, str] = {}
    for name, spec in SERVICES.items():
        for mapping in spec.get("ports", []):
            host, _, container = str(mapping).rpartition(":")
            assert host, f"{name}: publish {mapping} as HOST:CONTAINER"
            assert int(host) not in published, f"host port {host} published by {published.get(int(host))} and {name}"
            published[int(host)] = name
            assert int(container) in ports[name], f"{name} publishes {container}, where nothing listens"
    ops_ports = [int(spec["environment"][_env_prefix(_serve_name(spec["command"])) + "OPS_PORT"])
                 for spec in OPSCALE_SERVICES.values()]
    assert len(ops_ports) == len(set(ops_ports))
    assert 8000 in published and published[8000] == "router"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_healthcheck_and_opscale_ones_hit_the_ops_port(name: str) -> None:
    spec = SERVICES[name]
    if spec.get("profiles"):
        return  # optional tools (Prometheus) are not depended on
    test = spec["healthcheck"]["test"]
    assert test[0] == "CMD"
    if name not in OPSCALE_SERVICES:
        return
    ops_port = spec["environment"][_env_prefix(_serve_name(spec["command"])) + "OPS_PORT"]
    urls = [u for arg in test for u in re.findall(r"https?://[^'\" ]+", arg)]
    assert urls == [f"http://127.0.0.1:{ops_port}/healthz"], f"{name}: healthcheck {test}"


def test_prometheus_scrapes_every_ops_port() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    expected = {f"{name}:{spec['environment'][_env_prefix(_serve_name(spec['command'])) + 'OPS_PORT']}"
                for name, spec in OPSCALE_SERVICES.items()}
    assert targets == expected
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])


# -- Kubernetes -------------------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


K8S = _k8s_documents()
WORKLOADS = [d for d in K8S if d["kind"] in ("Deployment", "DaemonSet")]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {d["kind"] for d in K8S} >= {"Namespace", "ConfigMap", "Deployment", "DaemonSet", "Service"}


def test_k8s_runs_every_service_with_a_real_command() -> None:
    served = []
    for workload in WORKLOADS:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        name = _serve_name(container["command"])
        assert name in SERVICE_NAMES, f"{workload['metadata']['name']}: `opscale serve {name}` is not a service"
        served.append((workload["kind"], name))
    assert sorted(served) == sorted([("DaemonSet", "node-agent")] + [
        ("Deployment", n) for n in ("router", "aggregator", "forecaster", "planner")])


def test_k8s_selectors_match_pod_labels_and_services_reach_declared_ports() -> None:
    pods = []
    for workload in WORKLOADS:
        template = workload["spec"]["template"]
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items(), workload["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]}
        pods.append((labels, ports))
    services = [d for d in K8S if d["kind"] == "Service"]
    assert len(services) == 4
    for service in services:
        matched = [ports for labels, ports in pods if service["spec"]["selector"].items() <= labels.items()]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} workloads"
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in matched[0] or target in matched[0].values(), (service["metadata"]["name"], target)


def _config_file(tmp_path: Path) -> Path:
    (configmap,) = [d for d in K8S if d["kind"] == "ConfigMap"]
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return path


def test_k8s_config_is_valid_for_every_service_and_ports_agree(tmp_path: Path,
                                                               clean_env: pytest.MonkeyPatch) -> None:
    config = _config_file(tmp_path)
    for workload in WORKLOADS:
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        service = _serve_name(container["command"])
        env = {e["name"]: e.get("value", "from-field") for e in container.get("env", [])}
        assert env["OPSCALE_CONFIG"] == "/etc/opscale/config.yaml"
        _check_env_names(env, service, workload["metadata"]["name"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        config_volume = next(n for n, p in mounts.items() if p == "/etc/opscale")
        assert volumes[config_volume]["configMap"]["name"] == "opscale-config"

        settings = load_settings(_settings_class(service), config_path=config)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["ops"] == settings.ops_port, workload["metadata"]["name"]
        if "grpc" in ports:
            assert ports["grpc"] == settings.grpc_port  # type: ignore[attr-defined]
        if "http" in ports:
            assert ports["http"] == settings.http_port  # type: ignore[attr-defined]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["port"] == "ops"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_k8s_node_agent_daemonset() -> None:
    (daemonset,) = [w for w in WORKLOADS if w["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["hostNetwork"] is False
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = {e["name"]: e for e in container["env"]}
    assert env["OPSCALE_NODE_AGENT_AGENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OPSCALE_NODE_AGENT_ADVERTISE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


# -- systemd ----------------------------------------------------------------------------------------


def test_systemd_unit_and_env_file(clean_env: pytest.MonkeyPatch) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((ROOT / "deploy" / "systemd" / "opscale-node-agent.service").read_text())
    service = unit["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[0].endswith("/opscale")
    assert _serve_name(["opscale", *exec_start[1:]]) == "node-agent"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["EnvironmentFile"] == "/etc/opscale/node-agent.env"

    env = {}
    for line in (ROOT / "deploy" / "systemd" / "node-agent.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    _check_env_names(env, "node-agent", "node-agent.env")
    settings = _load_with_env(clean_env, "node-agent", env)
    assert settings.agent_id == "gpu-host-1"


def test_the_image_gets_every_file_the_package_build_reads() -> None:
    """A Dockerfile that forgets setup.py builds an image without opscale_services (and no test sees it,
    because no Docker engine runs here): check the COPY lines against what the build needs."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {token.rstrip("/*") for line in dockerfile.splitlines() if line.startswith("COPY ")
              for token in line.split()[1:-1] if not token.startswith("--")}
    needed = {"pyproject.toml", "setup.py", "libs", "services", "loadgen"}
    assert needed <= copied, f"deploy/Dockerfile does not copy {sorted(needed - copied)}"
