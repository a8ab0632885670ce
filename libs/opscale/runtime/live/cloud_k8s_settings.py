"""Settings of the Kubernetes VM actuator (opscale.runtime.live.cloud_k8s): the API server, the node
pools, the node-agent DaemonSet. Apart from the actuator so that the live settings can name them without
importing the Kubernetes client; no I/O but reading the pools file when asked.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from opscale.model import Purchase

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class K8sActuatorError(RuntimeError):
    """A Kubernetes API call failed, or the configuration does not match the cluster."""


class PoolKind(StrEnum):
    KARPENTER = "karpenter"
    MACHINE_DEPLOYMENT = "machinedeployment"


class K8sPool(BaseModel):
    """One GPU node pool of the cluster and the (region, SKU, purchase) it provides."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    region: str = Field(min_length=1, description="opscale region the cluster is in")
    sku: str = Field(min_length=1, description="GPU SKU of the pool's nodes (opscale/data/skus.yaml)")
    purchase: Purchase = Field(description="on_demand or spot, as the pool's capacity type")
    kind: PoolKind = Field(description="karpenter (NodePool) or machinedeployment (Cluster API)")
    name: str = Field(min_length=1, description="name of the NodePool or MachineDeployment")
    namespace: str = Field("default", min_length=1, description="namespace of a MachineDeployment")
    gpus_per_node: int = Field(8, ge=1, description="GPUs of one node, when the object does not say")
    surge_nodes: int = Field(1, ge=0, description="Karpenter: limits.nodes headroom over replicas")


class K8sSettings(BaseSettings):
    """Where the API server is and who we are. Environment: OPSCALE_K8S_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="OPSCALE_K8S_", extra="forbid")

    api_url: str = Field("", description="API server URL; default https://$KUBERNETES_SERVICE_HOST:$..._PORT")
    token_file: Path = Field(SERVICE_ACCOUNT_DIR / "token", description="bearer token (re-read per call: "
                             "projected service-account tokens rotate)")
    token: SecretStr | None = Field(None, description="bearer token given inline (prefer env or a mounted "
                                    "Secret); set: used in place of token_file")
    ca_file: Path | None = Field(SERVICE_ACCOUNT_DIR / "ca.crt", description="CA bundle of the API server")
    verify_tls: bool = Field(True, description="verify the API server's certificate")
    pools_file: Path | None = Field(None, description="YAML list of pools (K8sPool fields)")
    daemonset_namespace: str = Field("opscale", description="namespace of the node-agent DaemonSet")
    daemonset_name: str = Field("opscale-node-agent", description="name of the node-agent DaemonSet")
    agent_node_label: dict[str, str] = Field(default_factory=lambda: {"opscale.io/node-agent": "true"},
                                             description="label on managed nodes; empty: leave the DaemonSet")
    request_timeout_s: float = Field(10.0, gt=0, description="timeout of one API call")

    def resolved_api_url(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise K8sActuatorError("no API server: set OPSCALE_K8S_API_URL (outside a cluster) or run in a pod")
        return f"https://{host}:{port}"


def load_pools(path: Path) -> list[K8sPool]:
    """Pools from a YAML file holding a list of K8sPool mappings; errors name the entry and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise K8sActuatorError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise K8sActuatorError(f"{path}: invalid YAML: {exc}") from None
    return parse_pools(raw, str(path))


def parse_pools(raw: Any, source: str = "<pools>") -> list[K8sPool]:
    if not isinstance(raw, list) or not raw:
        raise K8sActuatorError(f"{source}: expected a non-empty list of pools")
    pools = []
    for index, entry in enumerate(raw, 1):
        try:
            pools.append(K8sPool.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(entry)"
            raise K8sActuatorError(f"{source}: pool {index}: field {field!r}: {first['msg']}") from None
    keys = [(p.region, p.sku, p.purchase) for p in pools]
    if len(set(keys)) != len(keys):
        raise K8sActuatorError(f"{source}: two pools serve the same (region, sku, purchase)")
    return pools


