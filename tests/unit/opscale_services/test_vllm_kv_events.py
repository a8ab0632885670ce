"""The node-agent's reader of vLLM's KV events (--kv-events-config): messages made in vLLM's exact wire
format (msgspec structs mirroring vllm/distributed/kv_events.py, msgpack-encoded, multipart [topic, seq,
payload]) decode into the same prefix-index updates as the equivalent opscale events, and sent over a
real ZMQ PUB socket on localhost arrive renamed into opscale's token hashes; bad messages, unknown tags,
repeats and sequence gaps are counted and dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from _vllm_kv_wire import ENCODER, AllBlocksCleared, BlockRemoved, BlockStored, EventBatch, Unknown, frames

from opscale.engine import kv_events as engine_events
from opscale.model import InstanceSpec
from opscale.model.kv_events import KvBlockEvent, KvEventBatch, KvEventKind
from opscale.openai.prefix_blocks import token_block_hashes
from opscale.openai.vllm_kv_events import VllmKvReader
from opscale.routing.prefix_index import PrefixIndex
from opscale.runtime.clock import WallClock
from opscale.runtime.live.settings import OpenAIEngineSettings

from opscale_services.node_agent.openai_engines import OpenAIEngines
from opscale_services.node_agent.vllm_kv_sub import VllmKvSubscriber

MODEL = "m"
# A sha256 block hash (newer vLLM) whose first 8 bytes read 5, and plain int hashes (older vLLM).
SHA_5 = (5).to_bytes(8, "big") + b"\xab" * 24
TOKENS = list(range(48))


# The same history in both forms: vLLM's messages and the opscale engine's events.
VLLM_MESSAGES = [
    [BlockStored([11, 12, 13], None, TOKENS, 16, None, "GPU")],
    [BlockStored([SHA_5], 13, TOKENS[:16], 16, None, None), BlockRemoved([12], "GPU")],
    [BlockRemoved([13], None), BlockStored([21, 22], None, TOKENS[:32], 16, None, "GPU")],
]
OPSCALE_EVENTS = [
    [engine_events.BlockStored((11, 12, 13), None, tuple(TOKENS), 16)],
    [engine_events.BlockStored((5,), 13, tuple(TOKENS[:16]), 16, medium=""),
     engine_events.BlockRemoved((12,))],
    [engine_events.BlockRemoved((13,), medium=""), engine_events.BlockStored((21, 22), None, tuple(TOKENS[:32]), 16)],
]


def index_of(batches: list[list[KvBlockEvent]]) -> PrefixIndex:
    index = PrefixIndex()
    for seq, events in enumerate(batches, start=1):
        index.apply(KvEventBatch("i1", MODEL, float(seq), seq, tuple(events)), known=True)
    return index


def same_index(a: PrefixIndex, b: PrefixIndex) -> None:
    assert len(a) == len(b) and a.stats == b.stats
    for probe in ([11, 12, 13, 5], [11], [12], [13], [5], [21, 22], [22]):
        assert a.matched_blocks(MODEL, probe) == b.matched_blocks(MODEL, probe), probe


async def wait_for(predicate: Any, timeout_s: float = 30.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)  # noqa: TID251 - waiting on a real socket
    await asyncio.wait_for(poll(), timeout_s)


def test_vllm_messages_decode_into_the_same_index_updates_as_opscale_events() -> None:
    reader = VllmKvReader()
    decoded = [list(reader.feed(frames(seq, *events))) for seq, events in enumerate(VLLM_MESSAGES)]
    expected = [[engine_events.as_block_event(e) for e in batch] for batch in OPSCALE_EVENTS]
    assert decoded == expected
    same_index(index_of(decoded), index_of(expected))
    assert index_of(decoded).matched_blocks(MODEL, [11, 12]) == {"i1": 1}  # 12 was removed
    assert reader.stats.gaps == 0 and reader.stats.malformed == 0


async def test_vllm_messages_over_zmq_arrive_renamed_into_opscale_token_hashes() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.XPUB)  # an XPUB sees the subscription arrive, so nothing is sent before it
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = VllmKvSubscriber(f"tcp://127.0.0.1:{port}", 16, topic="kv", context=ctx)
    try:
        assert (await asyncio.wait_for(pub.recv(), 30.0))[0] == 1  # the subscription
        for seq, events in enumerate(VLLM_MESSAGES):
            await pub.send_multipart(frames(seq, *events))
        await pub.send_multipart(frames(3, AllBlocksCleared(), topic=b"other"))  # another topic: not read
        await wait_for(lambda: sub.reader.stats.messages == len(VLLM_MESSAGES))
        taken = sub.take()
        assert sub.take() == []
    finally:
        await sub.close()
        pub.close()
        ctx.term()

    # Blocks are named by their tokens, chained: 21 and 22 hold the tokens of 11 and 12, so they get their
    # names, and the name of 11 stays held while 21 does.
    a, b, c = token_block_hashes(TOKENS, 16)
    [d] = token_block_hashes(TOKENS[:16], 16, parent=c)
    assert [(e.kind, e.block_hashes) for e in taken] == [
        (KvEventKind.STORED, (a, b, c)), (KvEventKind.STORED, (d,)), (KvEventKind.REMOVED, (b,)),
        (KvEventKind.REMOVED, (c,)), (KvEventKind.STORED, (a, b))]
    assert all(e.token_ids == () for e in taken)  # the router needs no tokens: they stay off the bus
    index = index_of([taken])
    assert index.matched_blocks(MODEL, [a, b, c]) == {"i1": 2} and index.matched_blocks(MODEL, [d]) == {"i1": 1}
    assert sub.rekeyer.stats.unknown_parent == 0 and sub.rekeyer.stats.unknown_removal == 0


def test_bad_messages_unknown_tags_and_sequence_gaps_are_counted_and_dropped() -> None:
    reader = VllmKvReader()
    stored = BlockStored([1, 2], None, [], 16, None, "GPU")
    # malformed: not three frames, a short seq, a negative seq (replay's end marker), an undecodable payload
    for bad in ([b"kv", b"\0" * 8], [b"kv", b"\0" * 7, b""], [b"kv", (-1).to_bytes(8, "big", signed=True), b""],
                [b"kv", b"\0" * 8, b"\xc1garbage"], [b"kv", b"\0" * 8, ENCODER.encode({"not": "a batch"})]):
        assert reader.feed(bad) == ()
    assert reader.stats.malformed == 5 and reader.stats.messages == 0

    # within a batch, an unknown tag and a known tag with bad fields are dropped; the rest is kept
    bad_fields = msgspec.Raw(ENCODER.encode(["BlockStored", "not a list", None, [], 16]))
    payload = ENCODER.encode(EventBatch(1.0, [stored, Unknown(3), bad_fields, BlockRemoved([2], None)]))
    events = reader.feed([b"kv", (0).to_bytes(8, "big"), payload])
    assert [e.kind for e in events] == [KvEventKind.STORED, KvEventKind.REMOVED]
    assert reader.stats.unknown_tag == 1 and reader.stats.malformed_events == 1

    # a gap: seq 0 then 3 (two lost), then a repeat of 3 (dropped)
    assert reader.feed(frames(3, stored)) != ()
    assert reader.stats.gaps == 2
    assert reader.feed(frames(3, stored)) == () and reader.stats.repeats == 1
    # the publisher restarts (seq from 0 again): its cache started empty
    restarted = reader.feed(frames(0, stored))
    assert [e.kind for e in restarted] == [KvEventKind.CLEARED, KvEventKind.STORED]
    assert reader.stats.restarts == 1 and reader.stats.messages == 3

    # newer vLLM appends fields (data_parallel_rank to the batch, more to events): ignored
    newer = ENCODER.encode([2.0, [["BlockStored", [7], None, [], 16, None, "GPU", "lora-name", []]], 0])
    assert reader.feed([b"kv", (1).to_bytes(8, "big"), newer])[0].block_hashes == (7,)


@pytest.mark.parametrize("h, expected", [(5, 5), (-3, -3), (2**64 - 1, -1), (2**63, -(2**63)), (SHA_5, 5)])
def test_block_hashes_fold_to_64_bit_signed(h: int | bytes, expected: int) -> None:
    reader = VllmKvReader()
    [event] = reader.feed(frames(0, BlockRemoved([h], None)))
    assert event.block_hashes == (expected,)


async def test_a_subscriber_past_its_bound_tells_the_router_to_forget_rather_than_keep_a_hole() -> None:
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = VllmKvSubscriber(f"tcp://127.0.0.1:{port}", 16, max_pending=3, context=ctx)
    try:
        await asyncio.wait_for(pub.recv(), 30.0)
        for seq in range(5):  # one event each: the 4th is past the bound of 3 waiting
            await pub.send_multipart(frames(seq, BlockStored([seq + 1], None, [seq] * 16, 16, None, "GPU")))
        await wait_for(lambda: sub.reader.stats.messages == 5)
        assert sub.overflows == 1
        assert [(e.kind, e.block_hashes) for e in sub.take()] == [(KvEventKind.CLEARED, ()),
                                                                  (KvEventKind.STORED, token_block_hashes([4] * 16, 16))]
    finally:
        await sub.close()
        pub.close()
        ctx.term()


async def test_an_openai_instance_forwards_its_servers_events_and_a_bad_endpoint_only_loses_them() -> None:
    ctx = zmq.asyncio.Context.instance()  # the one the engines' subscribers use
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    servers = [OpenAIEngineSettings(base_url="http://127.0.0.1:1", served_model_name="served-a",
                                    kv_events_endpoint="tcp://"),
               OpenAIEngineSettings(base_url="http://127.0.0.1:2", served_model_name="served-b",
                                    kv_events_endpoint=f"tcp://127.0.0.1:{port}")]
    engines = OpenAIEngines(servers, WallClock(), is_accepting=lambda _: True)
    try:
        engines.start(InstanceSpec("a1", "served-a", "H100-80GB"))  # ZMQ cannot parse its endpoint: no events
        engines.start(InstanceSpec("b1", "served-b", "H100-80GB"))
        await asyncio.wait_for(pub.recv(), 30.0)
        await pub.send_multipart(frames(0, BlockStored([1, 2], None, list(range(32)), 16, None, "GPU")))
        taken: list = []

        def arrived() -> bool:
            taken.extend(engines.take_kv_events())
            return bool(taken)

        await wait_for(arrived)
        [(instance_id, model, events)] = taken
        assert (instance_id, model, [e.block_hashes for e in events]) == (
            "b1", "served-b", [token_block_hashes(range(32), 16)])  # renamed: engines' blocks of 16 tokens
    finally:
        await engines.close()
        pub.close()
