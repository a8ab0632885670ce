"""The Kubernetes VM actuator: GPU node pools through the Kubernetes API, with its official asynchronous
client (`kubernetes_asyncio`: custom objects for Karpenter and Cluster API, AppsV1 for the DaemonSet).

A pool (region, SKU, purchase) maps to one node-pool object in the region's cluster:

- `karpenter`: a Karpenter `karpenter.sh/v1` NodePool with static capacity (`spec.replicas`, Karpenter
  >= 1.8 with the StaticCapacity feature gate; EKS Auto Mode has it). `ensure` sets `spec.replicas` and
  raises `spec.limits.nodes` to at least replicas + `surge_nodes` (room for drift replacement). VMs are
  the pool's NodeClaims.
- `machinedeployment`: a Cluster API `cluster.x-k8s.io/v1beta1` MachineDeployment, scaled through its
  `/scale` subresource. VMs are its Machines.

Every `ensure` also makes sure the node-agent DaemonSet's node selector holds `agent_node_label`, the
label the pools' node templates put on every node opscale manages, so that exactly those nodes run an
agent. `ensure` is level-triggered: it reads the object and patches only what differs. Which node goes
on scale-in is the cluster's choice; `release(vm_id)` picks one (Cluster API: the `delete-machine`
annotation, then one replica fewer; Karpenter: delete the NodeClaim, then one replica fewer). Events
come from comparing successive listings (`opscale.cloud.diff_events`); a spot interruption shows as the
NodeClaim or Machine being deleted (TERMINATING), and the node-agent gets SIGTERM and drains.

Settings come from `OPSCALE_K8S_*` environment variables (`K8sSettings`); the defaults are the
in-cluster service account. docs/cloud.md lists the RBAC rules needed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, AppsV1Api, Configuration, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from opscale.cloud import CloudEvent, EnsureResult, diff_events
from opscale.cloud.actuator import check_count
from opscale.model import Purchase, Vm, VmState
from opscale.runtime.live.cloud_k8s_settings import (
    SERVICE_ACCOUNT_DIR,
    K8sActuatorError,
    K8sPool,
    K8sSettings,
    PoolKind,
    load_pools,
    parse_pools,
)

__all__ = ["SERVICE_ACCOUNT_DIR", "K8sActuatorError", "K8sPool", "K8sSettings", "KubernetesActuator", "PoolKind",
           "load_pools", "parse_pools"]
MERGE_PATCH = "application/merge-patch+json"
KARPENTER_GROUP, KARPENTER_VERSION = "karpenter.sh", "v1"
CAPI_GROUP, CAPI_VERSION = "cluster.x-k8s.io", "v1beta1"
KARPENTER = f"/apis/{KARPENTER_GROUP}/{KARPENTER_VERSION}"  # the paths name API calls in error messages
CAPI = f"/apis/{CAPI_GROUP}/{CAPI_VERSION}"
DELETE_MACHINE_ANNOTATION = "cluster.x-k8s.io/delete-machine"


class KubernetesActuator:
    """The asynchronous actuator contract (`opscale.cloud.AsyncVmActuator`) over one cluster."""

    def __init__(self, settings: K8sSettings, pools: list[K8sPool] | None = None,
                 api_client: ApiClient | None = None) -> None:
        self.settings = settings
        if pools is None:
            if settings.pools_file is None:
                raise K8sActuatorError("no pools: set OPSCALE_K8S_POOLS_FILE or pass pools")
            pools = load_pools(settings.pools_file)
        self.pools = pools
        self.api_url = settings.resolved_api_url()
        self._client = api_client
        self._owns_client = api_client is None
        self._seen: dict[str, Vm] = {}
        self._vm_pool: dict[str, K8sPool] = {}
        self._daemonset_ok = False

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.close()
            self._client = None

    # -- the contract -------------------------------------------------------------------------------

    async def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        check_count(count)
        pool = self.pool(region, sku, purchase)
        await self._ensure_daemonset_selector()
        custom = self._custom()
        if pool.kind is PoolKind.KARPENTER:
            path = f"{KARPENTER}/nodepools/{pool.name}"
            nodepool = await self._call("GET", path, custom.get_cluster_custom_object(
                KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", pool.name, **self._opts()))
            spec = nodepool.get("spec", {})
            before = spec.get("replicas")
            if before is None:
                raise K8sActuatorError(f"NodePool {pool.name!r} has no spec.replicas: it is not a static-capacity "
                                       "pool (create it with replicas; Karpenter cannot switch a pool's mode)")
            patch: dict[str, Any] = {}
            if before != count:
                patch["replicas"] = count
            limit = _quantity(spec.get("limits", {}).get("nodes"))
            if limit is None or limit < count + pool.surge_nodes:
                patch["limits"] = {"nodes": str(count + pool.surge_nodes)}
            if patch:
                await self._call("PATCH", path, custom.patch_cluster_custom_object(
                    KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", pool.name, {"spec": patch},
                    **self._opts(MERGE_PATCH)))
        else:
            before = await self._md_replicas(pool)
            if before != count:
                await self._scale_md(pool, count)
        return EnsureResult(region, pool.sku, purchase, count, int(before),
                            reason="" if before == count else f"{pool.kind.value} {pool.name}: replicas {before} -> {count}")

    async def release(self, vm_id: str, now_s: float) -> None:
        """Give back one chosen node, and the pool's replica count with it."""
        pool = self._vm_pool.get(vm_id)
        if pool is None:
            raise K8sActuatorError(f"unknown VM {vm_id!r}: call current() first (known: {', '.join(self._vm_pool)})")
        custom = self._custom()
        if pool.kind is PoolKind.KARPENTER:
            # Delete first: if Karpenter replaces it before the lower count lands, it then removes a surplus
            # node (a short-lived extra), rather than picking a second, serving node to remove.
            await self._call("DELETE", f"{KARPENTER}/nodeclaims/{vm_id}", custom.delete_cluster_custom_object(
                KARPENTER_GROUP, KARPENTER_VERSION, "nodeclaims", vm_id, **self._opts()))
            path = f"{KARPENTER}/nodepools/{pool.name}"
            nodepool = await self._call("GET", path, custom.get_cluster_custom_object(
                KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", pool.name, **self._opts()))
            replicas = nodepool.get("spec", {}).get("replicas", 0)
            if replicas > 0:
                await self._call("PATCH", path, custom.patch_cluster_custom_object(
                    KARPENTER_GROUP, KARPENTER_VERSION, "nodepools", pool.name, {"spec": {"replicas": replicas - 1}},
                    **self._opts(MERGE_PATCH)))
        else:
            # Cluster API deletes machines carrying this annotation first when its replicas drop.
            await self._call("PATCH", f"{CAPI}/namespaces/{pool.namespace}/machines/{vm_id}",
                             custom.patch_namespaced_custom_object(
                                 CAPI_GROUP, CAPI_VERSION, pool.namespace, "machines", vm_id,
                                 {"metadata": {"annotations": {DELETE_MACHINE_ANNOTATION: "yes"}}},
                                 **self._opts(MERGE_PATCH)))
            replicas = await self._md_replicas(pool)
            if replicas > 0:
                await self._scale_md(pool, replicas - 1)

    async def current(self, now_s: float) -> tuple[Vm, ...]:
        vms: list[Vm] = []
        custom = self._custom()
        for pool in self.pools:
            if pool.kind is PoolKind.KARPENTER:
                listing = await self._call("GET", f"{KARPENTER}/nodeclaims", custom.list_cluster_custom_object(
                    KARPENTER_GROUP, KARPENTER_VERSION, "nodeclaims",
                    label_selector=f"karpenter.sh/nodepool={pool.name}", **self._opts()))
                found = [_nodeclaim_vm(item, pool) for item in listing.get("items", [])]
            else:
                listing = await self._call(
                    "GET", f"{CAPI}/namespaces/{pool.namespace}/machines", custom.list_namespaced_custom_object(
                        CAPI_GROUP, CAPI_VERSION, pool.namespace, "machines",
                        label_selector=f"cluster.x-k8s.io/deployment-name={pool.name}", **self._opts()))
                found = [_machine_vm(item, pool) for item in listing.get("items", [])]
            for vm in found:
                self._vm_pool[vm.vm_id] = pool
            vms.extend(found)
        return tuple(vms)

    async def poll_events(self, now_s: float) -> list[CloudEvent]:
        now = {vm.vm_id: vm for vm in await self.current(now_s)}
        events = diff_events(self._seen, now, now_s, vanished_reason="deleted from the cluster")
        self._seen = {k: v for k, v in now.items() if v.state is not VmState.TERMINATED}
        return events

    def pool(self, region: str, sku: str, purchase: Purchase) -> K8sPool:
        for pool in self.pools:
            if (pool.region, pool.sku.casefold(), pool.purchase) == (region, sku.casefold(), purchase):
                return pool
        known = "; ".join(f"{p.region}/{p.sku}/{p.purchase.value}" for p in self.pools)
        raise K8sActuatorError(f"no node pool configured for {region}/{sku}/{purchase.value}; configured: {known}")

    # -- internals ----------------------------------------------------------------------------------

    async def _md_replicas(self, pool: K8sPool) -> int:
        """A MachineDeployment's replicas, through its `/scale` subresource."""
        scale = await self._call("GET", _scale_path(pool), self._custom().get_namespaced_custom_object_scale(
            CAPI_GROUP, CAPI_VERSION, pool.namespace, "machinedeployments", pool.name, **self._opts()))
        return int(scale.get("spec", {}).get("replicas", 0))

    async def _scale_md(self, pool: K8sPool, replicas: int) -> None:
        await self._call("PATCH", _scale_path(pool), self._custom().patch_namespaced_custom_object_scale(
            CAPI_GROUP, CAPI_VERSION, pool.namespace, "machinedeployments", pool.name,
            {"spec": {"replicas": replicas}}, **self._opts(MERGE_PATCH)))

    async def _ensure_daemonset_selector(self) -> None:
        wanted = self.settings.agent_node_label
        if not wanted or self._daemonset_ok:
            return
        namespace, name = self.settings.daemonset_namespace, self.settings.daemonset_name
        path = f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"
        apps = AppsV1Api(self._api())
        daemonset = await self._call("GET", path, apps.read_namespaced_daemon_set(name, namespace, **self._opts()))
        selector = daemonset.spec.template.spec.node_selector or {}
        if any(selector.get(k) != v for k, v in wanted.items()):
            await self._call("PATCH", path, apps.patch_namespaced_daemon_set(
                name, namespace, {"spec": {"template": {"spec": {"nodeSelector": dict(wanted)}}}},
                **self._opts(MERGE_PATCH)))
        self._daemonset_ok = True

    def _api(self) -> ApiClient:
        if self._client is None:
            self._client = ApiClient(self._configuration())
        return self._client

    def _custom(self) -> CustomObjectsApi:
        return CustomObjectsApi(self._api())

    def _configuration(self) -> Configuration:
        config = Configuration(host=self.api_url)
        config.api_key_prefix["BearerToken"] = "Bearer"
        config.api_key["BearerToken"] = ""
        config.refresh_api_key_hook = self._refresh_token
        config.verify_ssl = self.settings.verify_tls
        ca = self.settings.ca_file
        if ca is not None and ca.exists():
            config.ssl_ca_cert = str(ca)
        return config

    def _opts(self, content_type: str | None = None) -> dict[str, Any]:
        opts: dict[str, Any] = {"_request_timeout": self.settings.request_timeout_s}
        if content_type is not None:
            opts["_content_type"] = content_type
        return opts

    async def _call(self, method: str, path: str, call: Awaitable[Any]) -> Any:
        """Await one API call, turning the client's failures into a K8sActuatorError naming the call."""
        try:
            return await call
        except ApiException as exc:
            raise K8sActuatorError(_api_error(method, path, int(exc.status or 0), _text(exc.body))) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise K8sActuatorError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def _refresh_token(self, config: Configuration) -> None:
        """The client's hook before every call: re-read the token, as projected service-account tokens rotate."""
        config.api_key["BearerToken"] = self._token()

    def _token(self) -> str:
        if self.settings.token is not None:
            return self.settings.token.get_secret_value()
        try:
            return self.settings.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise K8sActuatorError(f"cannot read the bearer token {self.settings.token_file}: "
                                   f"{exc.strerror or exc} (set OPSCALE_K8S_TOKEN_FILE)") from None


def _scale_path(pool: K8sPool) -> str:
    return f"{CAPI}/namespaces/{pool.namespace}/machinedeployments/{pool.name}/scale"


def _text(body: Any) -> str:
    if isinstance(body, bytes | bytearray):
        return bytes(body).decode("utf-8", errors="replace")
    return "" if body is None else str(body)


def _api_error(method: str, path: str, status: int, text: str) -> str:
    try:
        message = json.loads(text).get("message", text)
    except (ValueError, AttributeError, RecursionError):
        message = text[:200]
    hint = ""
    if status in (401, 403):
        hint = " (check the token and the RBAC rules in docs/cloud.md)"
    elif status == 404:
        hint = " (check the pool's name and namespace, and that the CRD is installed)"
    return f"{method} {path}: HTTP {status}: {message}{hint}"


def _quantity(value: Any) -> int | None:
    """A plain integer quantity ("3" or 3); None when absent or not a plain integer."""
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _epoch_s(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _condition(item: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in item.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == kind:
            return condition
    return None


def _gpus(item: Mapping[str, Any], pool: K8sPool) -> int:
    found = _quantity(item.get("status", {}).get("capacity", {}).get("nvidia.com/gpu"))
    return found if found else pool.gpus_per_node


def _nodeclaim_vm(item: Mapping[str, Any], pool: K8sPool) -> Vm:
    meta = item.get("metadata", {})
    ready = _condition(item, "Ready")
    deleting = _epoch_s(meta.get("deletionTimestamp"))
    running_s = _epoch_s(ready.get("lastTransitionTime")) if ready and ready.get("status") == "True" else None
    state = (VmState.TERMINATING if deleting is not None else
             VmState.RUNNING if running_s is not None else VmState.PROVISIONING)
    return Vm(meta.get("name", ""), pool.region, pool.sku, _gpus(item, pool), pool.purchase, state,
              _epoch_s(meta.get("creationTimestamp")) or 0.0, running_s, released_s=deleting)


_MACHINE_PHASES = {"Pending": VmState.PROVISIONING, "Provisioning": VmState.PROVISIONING,
                   "Provisioned": VmState.PROVISIONING, "Running": VmState.RUNNING, "Deleting": VmState.TERMINATING,
                   "Deleted": VmState.TERMINATED, "Failed": VmState.TERMINATED}


def _machine_vm(item: Mapping[str, Any], pool: K8sPool) -> Vm:
    meta = item.get("metadata", {})
    state = _MACHINE_PHASES.get(item.get("status", {}).get("phase", "Pending"), VmState.PROVISIONING)
    ready = _condition(item, "Ready")
    running_s = _epoch_s(ready.get("lastTransitionTime")) if ready and ready.get("status") == "True" else None
    if state is VmState.RUNNING and running_s is None:
        running_s = _epoch_s(item.get("status", {}).get("lastUpdated"))
    return Vm(meta.get("name", ""), pool.region, pool.sku, pool.gpus_per_node, pool.purchase, state,
              _epoch_s(meta.get("creationTimestamp")) or 0.0, running_s,
              released_s=_epoch_s(meta.get("deletionTimestamp")))
