"""Router workers: each is a replica of its own (id and ops port), and 0 workers means one per core."""

from __future__ import annotations

import pytest

from opscale.runtime.live.settings import RouterSettings

from opscale_services.router.workers import as_worker, usable_cores, worker_count

pytestmark = pytest.mark.unit


def test_a_worker_has_its_own_id_and_ops_port_and_a_plain_router_is_unchanged() -> None:
    parent = RouterSettings(workers=4, ops_port=9100, core={"router_id": "edge"})
    assert as_worker(parent) is parent
    third = as_worker(parent.model_copy(update={"worker_index": 2}))
    assert (third.core.router_id, third.ops_port) == ("edge-w2", 9102)
    assert parent.core.router_id == "edge"  # the parent's settings are not changed
    any_port = as_worker(RouterSettings(workers=2, ops_port=0, worker_index=1, core={"router_id": "edge"}))
    assert any_port.ops_port == 0


def test_zero_workers_means_one_per_usable_core() -> None:
    assert worker_count(RouterSettings(workers=0)) == len(usable_cores()) >= 1
    assert worker_count(RouterSettings(workers=3)) == 3
