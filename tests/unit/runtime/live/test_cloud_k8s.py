"""The Kubernetes VM actuator against a tiny local API server replaying recorded, real-shaped responses
(tests/unit/fixtures/k8s): the requests it sends (paths, verbs, merge patches, bearer token), the VMs it
reads from NodeClaims and Machines, the events it derives, and its errors. No cluster is involved."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from opscale.cloud import AsyncVmActuator, CloudEventKind
from opscale.model import Purchase, VmState
from opscale.runtime.live.cloud_k8s import (
    K8sActuatorError,
    K8sPool,
    K8sSettings,
    KubernetesActuator,
    PoolKind,
    load_pools,
    parse_pools,
)

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "k8s"
DS = "/apis/apps/v1/namespaces/opscale/daemonsets/opscale-node-agent"
NODEPOOL = "/apis/karpenter.sh/v1/nodepools/gpu-h100-spot"
NODECLAIMS = "/apis/karpenter.sh/v1/nodeclaims"
CAPI_NS = "/apis/cluster.x-k8s.io/v1beta1/namespaces/capi-clusters"
SCALE = f"{CAPI_NS}/machinedeployments/gpu-a100-ondemand/scale"
MACHINES = f"{CAPI_NS}/machines"
POOLS = [
    K8sPool(region="us-east", sku="H100-80GB", purchase=Purchase.SPOT, kind=PoolKind.KARPENTER, name="gpu-h100-spot"),
    K8sPool(region="eu-west", sku="A100-80GB", purchase=Purchase.ON_DEMAND, kind=PoolKind.MACHINE_DEPLOYMENT,
            name="gpu-a100-ondemand", namespace="capi-clusters"),
]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    """Holds objects by path and lists by collection path; records every request."""

    def __init__(self) -> None:
        self.objects: dict[str, Any] = {DS: fixture("daemonset_node_agent.json"),
                                        NODEPOOL: fixture("nodepool_gpu_spot.json"),
                                        SCALE: fixture("machinedeployment_scale.json")}
        self.lists: dict[str, Any] = {NODECLAIMS: fixture("nodeclaims_gpu_spot.json"),
                                      MACHINES: fixture("machines_gpu_a100.json")}
        self.forbidden: set[tuple[str, str]] = set()
        self.requests: list[dict[str, Any]] = []

    def writes(self) -> list[tuple[str, str, Any]]:
        return [(r["method"], r["path"], r["body"]) for r in self.requests if r["method"] != "GET"]

    async def handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        self.requests.append({"method": request.method, "path": request.path, "query": dict(request.query),
                              "auth": request.headers.get("Authorization"),
                              "content_type": request.headers.get("Content-Type"),
                              "body": json.loads(text) if text else None})
        if (request.method, request.path) in self.forbidden:
            return web.json_response(fixture("status_forbidden.json"), status=403)
        path, method = request.path, request.method
        if path in self.lists and method == "GET":
            return web.json_response(self.lists[path])
        collection, _, name = path.rpartition("/")
        if collection in self.lists:
            items = self.lists[collection]["items"]
            item = next((i for i in items if i["metadata"]["name"] == name), None)
            if item is None:
                return self.not_found(name)
            if method == "DELETE":
                items.remove(item)
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
            if method == "PATCH":
                items[items.index(item)] = item = merge_patch(item, json.loads(text))
            return web.json_response(item)
        if path not in self.objects:
            return self.not_found(path)
        if method == "PATCH":
            self.objects[path] = merge_patch(self.objects[path], json.loads(text))
        return web.json_response(self.objects[path])

    @staticmethod
    def not_found(name: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                  "message": f"{name!r} not found", "code": 404}, status=404)


@pytest.fixture
async def api():  # type: ignore[no-untyped-def]
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    yield fake
    await server.close()


@pytest.fixture
async def actuator(api: FakeApiServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    token = tmp_path / "token"
    token.write_text("test-token\n")
    act = KubernetesActuator(K8sSettings(api_url=api.url, token_file=token, ca_file=None), POOLS)  # type: ignore[attr-defined]
    yield act
    await act.close()


async def test_it_satisfies_the_async_actuator_contract(actuator: KubernetesActuator) -> None:
    assert isinstance(actuator, AsyncVmActuator)


async def test_karpenter_ensure_patches_replicas_and_limits_and_the_daemonset_selector(
        api: FakeApiServer, actuator: KubernetesActuator) -> None:
    result = await actuator.ensure("us-east", "H100-80GB", Purchase.SPOT, 4, 0.0)
    assert (result.live_before, result.desired, result.converging) == (2, 4, True)
    assert api.writes() == [
        ("PATCH", DS, {"spec": {"template": {"spec": {"nodeSelector": {"opscale.io/node-agent": "true"}}}}}),
        ("PATCH", NODEPOOL, {"spec": {"replicas": 4, "limits": {"nodes": "5"}}}),
    ]
    assert all(r["auth"] == "Bearer test-token" for r in api.requests)
    assert {r["content_type"] for r in api.requests if r["method"] == "PATCH"} == {"application/merge-patch+json"}
    selector = api.objects[DS]["spec"]["template"]["spec"]["nodeSelector"]
    assert selector == {"nvidia.com/gpu.present": "true", "opscale.io/node-agent": "true"}

    api.requests.clear()
    again = await actuator.ensure("us-east", "H100-80GB", Purchase.SPOT, 4, 1.0)  # level-triggered: no change
    assert again.live_before == 4 and api.writes() == []
    assert [r["path"] for r in api.requests] == [NODEPOOL]
    await actuator.ensure("us-east", "H100-80GB", Purchase.SPOT, 1, 2.0)
    assert api.writes() == [("PATCH", NODEPOOL, {"spec": {"replicas": 1}})]  # the limit stays as it is


async def test_machine_deployment_ensure_uses_the_scale_subresource(api: FakeApiServer,
                                                                    actuator: KubernetesActuator) -> None:
    result = await actuator.ensure("eu-west", "a100-80gb", Purchase.ON_DEMAND, 5, 0.0)
    assert result.live_before == 3 and "replicas 3 -> 5" in result.reason
    assert api.writes()[-1] == ("PATCH", SCALE, {"spec": {"replicas": 5}})
    assert api.objects[SCALE]["spec"]["replicas"] == 5


async def test_current_reads_vms_from_nodeclaims_and_machines(api: FakeApiServer,
                                                             actuator: KubernetesActuator) -> None:
    vms = {vm.vm_id: vm for vm in await actuator.current(0.0)}
    queries = [r["query"] for r in api.requests if r["path"] in (NODECLAIMS, MACHINES)]
    assert queries == [{"labelSelector": "karpenter.sh/nodepool=gpu-h100-spot"},
                       {"labelSelector": "cluster.x-k8s.io/deployment-name=gpu-a100-ondemand"}]
    ready = vms["gpu-h100-spot-7xk2p"]
    assert (ready.state, ready.gpus, ready.purchase, ready.region) == (VmState.RUNNING, 8, Purchase.SPOT, "us-east")
    assert ready.running_s == datetime.fromisoformat("2025-09-02T09:05:10+00:00").timestamp()
    assert ready.requested_s == datetime.fromisoformat("2025-09-02T09:00:00+00:00").timestamp()
    assert vms["gpu-h100-spot-m4q9d"].state is VmState.PROVISIONING
    assert vms["gpu-a100-ondemand-5c8f7-abcde"].state is VmState.RUNNING
    assert vms["gpu-a100-ondemand-5c8f7-fghij"].state is VmState.PROVISIONING
    deleting = vms["gpu-a100-ondemand-5c8f7-klmno"]
    assert deleting.state is VmState.TERMINATING and deleting.released_s is not None and not deleting.live


async def test_release_and_events_follow_the_cluster(api: FakeApiServer, actuator: KubernetesActuator) -> None:
    first = await actuator.poll_events(100.0)
    kinds = [(e.vm.vm_id, e.kind) for e in first]
    assert ("gpu-h100-spot-7xk2p", CloudEventKind.RUNNING) in kinds
    assert ("gpu-a100-ondemand-5c8f7-klmno", CloudEventKind.TERMINATING) in kinds
    assert await actuator.poll_events(101.0) == []  # nothing changed

    api.requests.clear()
    await actuator.release("gpu-h100-spot-7xk2p", 102.0)
    await actuator.release("gpu-a100-ondemand-5c8f7-abcde", 102.0)
    assert api.writes() == [
        ("DELETE", f"{NODECLAIMS}/gpu-h100-spot-7xk2p", None),
        ("PATCH", NODEPOOL, {"spec": {"replicas": 1}}),
        ("PATCH", f"{MACHINES}/gpu-a100-ondemand-5c8f7-abcde",
         {"metadata": {"annotations": {"cluster.x-k8s.io/delete-machine": "yes"}}}),
        ("PATCH", SCALE, {"spec": {"replicas": 2}}),
    ]
    events = await actuator.poll_events(103.0)
    gone = [e for e in events if e.kind is CloudEventKind.TERMINATED]
    assert [(e.vm.vm_id, e.reason) for e in gone] == [("gpu-h100-spot-7xk2p", "deleted from the cluster")]
    with pytest.raises(K8sActuatorError, match="unknown VM 'node-x'"):
        await actuator.release("node-x", 104.0)


async def test_api_errors_are_named_with_the_servers_message_and_a_hint(api: FakeApiServer,
                                                                       actuator: KubernetesActuator) -> None:
    api.forbidden.add(("PATCH", NODEPOOL))
    with pytest.raises(K8sActuatorError, match=r"PATCH .*gpu-h100-spot: HTTP 403: .*cannot patch resource "
                                               r"\"nodepools\".*RBAC"):
        await actuator.ensure("us-east", "H100-80GB", Purchase.SPOT, 3, 0.0)
    with pytest.raises(K8sActuatorError, match="no node pool configured for us-east/H100-80GB/on_demand; "
                                               "configured: us-east/H100-80GB/spot; eu-west/A100-80GB/on_demand"):
        await actuator.ensure("us-east", "H100-80GB", Purchase.ON_DEMAND, 1, 0.0)
    dynamic = copy.deepcopy(api.objects[NODEPOOL])
    del dynamic["spec"]["replicas"]
    api.objects[NODEPOOL] = dynamic
    api.forbidden.clear()
    with pytest.raises(K8sActuatorError, match="not a static-capacity pool"):
        await actuator.ensure("us-east", "H100-80GB", Purchase.SPOT, 3, 0.0)
    del api.objects[SCALE]
    with pytest.raises(K8sActuatorError, match="HTTP 404: .*not found.*CRD is installed"):
        await actuator.ensure("eu-west", "A100-80GB", Purchase.ON_DEMAND, 3, 0.0)


async def test_a_daemonset_that_already_selects_managed_nodes_is_left_alone(api: FakeApiServer,
                                                                           actuator: KubernetesActuator) -> None:
    api.objects[DS]["spec"]["template"]["spec"]["nodeSelector"]["opscale.io/node-agent"] = "true"
    await actuator.ensure("eu-west", "A100-80GB", Purchase.ON_DEMAND, 3, 0.0)
    assert api.writes() == []


async def test_a_missing_token_is_named(api: FakeApiServer, tmp_path: Path) -> None:
    act = KubernetesActuator(K8sSettings(api_url=api.url, token_file=tmp_path / "absent",  # type: ignore[attr-defined]
                                         ca_file=None), POOLS)
    try:
        with pytest.raises(K8sActuatorError, match="cannot read the bearer token .*OPSCALE_K8S_TOKEN_FILE"):
            await act.current(0.0)
    finally:
        await act.close()


def test_pools_file_errors_name_the_pool_and_field(tmp_path: Path) -> None:
    good = [{"region": "us-east", "sku": "H100-80GB", "purchase": "spot", "kind": "karpenter", "name": "p"}]
    assert parse_pools(good)[0].gpus_per_node == 8
    with pytest.raises(K8sActuatorError, match="pool 1: field 'purchase'"):
        parse_pools([{**good[0], "purchase": "reserved"}])
    with pytest.raises(K8sActuatorError, match="pool 2: field 'kind'"):
        parse_pools(good + [{**good[0], "purchase": "on_demand", "kind": "asg"}])
    with pytest.raises(K8sActuatorError, match="pool 1: field 'colour'"):
        parse_pools([{**good[0], "colour": "blue"}])
    with pytest.raises(K8sActuatorError, match="same \\(region, sku, purchase\\)"):
        parse_pools(good * 2)
    path = tmp_path / "pools.yaml"
    path.write_text("- {region: us-east, sku: H100-80GB, purchase: spot, kind: karpenter, name: p, gpus_per_node: 0}\n")
    with pytest.raises(K8sActuatorError, match="pools.yaml: pool 1: field 'gpus_per_node'"):
        load_pools(path)


def test_the_api_server_defaults_to_the_in_cluster_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(K8sActuatorError, match="no API server: set OPSCALE_K8S_API_URL"):
        K8sSettings(api_url="").resolved_api_url()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert K8sSettings(api_url="").resolved_api_url() == "https://10.96.0.1:443"
    monkeypatch.setenv("OPSCALE_K8S_API_URL", "https://api.example.com:6443/")
    assert K8sSettings().resolved_api_url() == "https://api.example.com:6443"


async def test_the_token_is_read_again_for_every_call(api: FakeApiServer, tmp_path: Path) -> None:
    """Projected service-account tokens rotate: a call after the file changed sends the new token."""
    token = tmp_path / "token"
    token.write_text("first\n")
    act = KubernetesActuator(K8sSettings(api_url=api.url, token_file=token, ca_file=None), POOLS)  # type: ignore[attr-defined]
    try:
        await act.current(0.0)
        token.write_text("second\n")
        await act.current(1.0)
    finally:
        await act.close()
    assert [r["auth"] for r in api.requests] == ["Bearer first"] * 2 + ["Bearer second"] * 2
