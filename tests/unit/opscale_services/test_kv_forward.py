"""The node-agent's KV-event forwarder: each instance's events of a tick go out in order, at most
batch_max a batch, numbered from 1 per instance on the agent's subject; a failed publish loses that
batch only."""

from __future__ import annotations

from opscale.model.kv_events import KvBlockEvent, KvEventBatch, KvEventKind
from opscale.services import subjects

from opscale_services.node_agent.kv_forward import KvForwarder


def stored(h: int) -> KvBlockEvent:
    return KvBlockEvent(KvEventKind.STORED, (h,), block_size=16)


async def test_events_are_batched_per_instance_in_order_and_bounded() -> None:
    sent: list[tuple[str, KvEventBatch]] = []
    fail = {"on": False}

    async def publish(subject: str, batch: KvEventBatch) -> None:
        if fail["on"]:
            raise ConnectionError("bus down")
        sent.append((subject, batch))

    fwd = KvForwarder("eu", "agent.1", publish, batch_max=2)
    await fwd.forward([("i1", "m", [stored(h) for h in range(5)]), ("i2", "m", [stored(9)])], 1.0)
    assert {s for s, _ in sent} == {subjects.kv_events("eu", "agent.1")}
    i1 = [b for _, b in sent if b.instance_id == "i1"]
    assert [b.seq for b in i1] == [1, 2, 3] and [len(b.events) for b in i1] == [2, 2, 1]
    assert [e.block_hashes[0] for b in i1 for e in b.events] == [0, 1, 2, 3, 4]
    assert [(b.seq, b.model, b.at_s) for _, b in sent if b.instance_id == "i2"] == [(1, "m", 1.0)]

    fail["on"] = True
    await fwd.forward([("i1", "m", [stored(7)])], 2.0)
    fail["on"] = False
    await fwd.forward([("i1", "m", [stored(8)])], 3.0)
    assert fwd.failed_batches == 1 and sent[-1][1].seq == 5  # the lost batch keeps its number
    assert fwd.published_events == 7

    # an agent that restarts numbers its batches above everything it sent before
    later = KvForwarder("eu", "agent.1", publish, seq_base=1_000)
    await later.forward([("i1", "m", [stored(1)])], 4.0)
    assert sent[-1][1].seq == 1_001
