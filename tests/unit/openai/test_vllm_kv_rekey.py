"""vLLM's KV events renamed into opscale's token hashes: a prompt the router tokenizes and hashes names
the same blocks as vLLM's BlockStored messages (msgspec-encoded as vLLM sends them) for the same tokens,
so a follow-up turn matches the blocks its first turn left; what cannot be renamed (an unknown parent, an
unknown removal, another block size, a flood past the bound) is counted and dropped, never raised; the
router's index always holds exactly the names of the blocks vLLM holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _tiny_tokenizer import write_model_folder
from _vllm_kv_wire import AllBlocksCleared, BlockRemoved, BlockStored, frames
from hypothesis import example, given
from hypothesis import strategies as st

from opscale.model.kv_events import KvBlockEvent, KvEventBatch, KvEventKind
from opscale.openai.prefix_blocks import token_block_hashes
from opscale.openai.prompt_tokens import PromptTokenizer
from opscale.openai.vllm_kv_events import VllmKvReader
from opscale.openai.vllm_kv_rekey import VllmKvRekeyer
from opscale.routing.prefix_index import PrefixIndex

BLOCK = 4
MODEL = "m"


def vllm_hash(*parts: object) -> bytes:
    """A block hash as newer vLLM makes them (sha256 bytes): nothing opscale could recompute."""
    return hashlib.sha256(repr(parts).encode()).digest()


class VllmServer:
    """The publishing side of one vLLM server: stores a sequence's whole blocks under its own hashes and
    sends them as vLLM does, numbered messages of msgpack batches."""

    def __init__(self) -> None:
        self.seq = 0

    def store(self, tokens: list[int], start_block: int = 0, salt: str = "") -> tuple[list[bytes], list[bytes]]:
        """The message that stores blocks start_block.. of `tokens` (`salt`: a LoRA or cache salt, folded
        into vLLM's hashes); returns the message and the blocks' hashes."""
        n = len(tokens) // BLOCK
        hashes = [vllm_hash(salt, tuple(tokens[:(i + 1) * BLOCK])) for i in range(n)]
        parent = hashes[start_block - 1] if start_block else None
        message = self.send(BlockStored(hashes[start_block:], parent, tokens[start_block * BLOCK:n * BLOCK], BLOCK,
                                        None, "GPU"))
        return message, hashes

    def send(self, *events: object) -> list[bytes]:
        self.seq += 1
        return frames(self.seq - 1, *events)


class Agent:
    """The node-agent's side for one instance: reader, renamer, and the router's index it feeds."""

    def __init__(self, index: PrefixIndex, instance_id: str = "i1", max_blocks: int = 1_000_000) -> None:
        self.reader = VllmKvReader()
        self.rekeyer = VllmKvRekeyer(BLOCK, max_blocks)
        self.index = index
        self.instance_id = instance_id
        self.batches = 0

    def feed(self, message: list[bytes]) -> list[KvBlockEvent]:
        events = self.rekeyer.rekey(self.reader.feed(message))
        self.batches += 1
        self.index.apply(KvEventBatch(self.instance_id, MODEL, 0.0, self.batches, tuple(events)), known=True)
        return events


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_files(write_model_folder(tmp_path / "model"))


FIRST = [{"role": "system", "content": "you help with travel"},
         {"role": "user", "content": "how long by train to rome and paris"}]
FOLLOW = [*FIRST, {"role": "assistant", "content": "here is a plan for day one two three"},
          {"role": "user", "content": "tell me more about berlin please"}]


def test_the_routers_token_hashes_are_the_names_of_vllms_blocks_of_the_same_tokens(
        tokenizer: PromptTokenizer) -> None:
    ids = tokenizer.token_ids({"messages": FIRST})
    assert ids is not None and len(ids) >= 3 * BLOCK
    router_hashes = token_block_hashes(ids, BLOCK)

    index = PrefixIndex()
    agent = Agent(index)
    server = VllmServer()
    # vLLM stores the prompt's first two blocks in one event and the rest in a second, chained to the first
    head, _ = server.store(ids[:2 * BLOCK])
    rest, _ = server.store(ids, start_block=2)
    stored = agent.feed(head) + agent.feed(rest)
    assert [h for e in stored for h in e.block_hashes] == list(router_hashes)
    assert index.matched_blocks(MODEL, router_hashes) == {"i1": len(router_hashes)}

    # the follow-up turn repeats the first turn's tokens: its hashes start with the same names
    follow = tokenizer.token_ids({"messages": FOLLOW})
    assert follow is not None
    follow_hashes = token_block_hashes(follow, BLOCK)
    assert index.matched_blocks(MODEL, follow_hashes) == {"i1": len(ids) // BLOCK}
    # another instance that holds another conversation matches nothing of this one
    other = Agent(index, "i2")
    other_ids = tokenizer.token_ids({"messages": [{"role": "user", "content": "how long do i boil an egg"}]})
    assert other_ids is not None
    other.feed(VllmServer().store(other_ids)[0])
    assert index.matched_blocks(MODEL, follow_hashes) == {"i1": len(ids) // BLOCK}


def test_removals_go_through_the_map_and_a_name_stays_while_any_vllm_block_holds_it() -> None:
    index = PrefixIndex()
    agent = Agent(index)
    tokens = list(range(3 * BLOCK))
    a, b, c = token_block_hashes(tokens, BLOCK)
    server = VllmServer()
    message, (v1, v2, v3) = server.store(tokens)
    agent.feed(message)
    # the same tokens under another LoRA or cache salt: other vLLM hashes, the same opscale names
    salted, (w1, w2) = server.store(tokens[:2 * BLOCK], salt="lora")
    agent.feed(salted)
    removed = agent.feed(server.send(BlockRemoved([v3, v2], "GPU")))
    assert [e.block_hashes for e in removed] == [(c,)]  # b is still held under w2
    assert index.matched_blocks(MODEL, [a, b, c]) == {"i1": 2}
    removed = agent.feed(server.send(BlockRemoved([w2, w1, v1], "GPU")))
    assert [e.block_hashes for e in removed] == [(b, a)]
    assert len(index) == 0 and len(agent.rekeyer) == 0


def test_hostile_events_are_counted_and_dropped_never_raised() -> None:
    index = PrefixIndex()
    agent = Agent(index, max_blocks=10)
    server = VllmServer()
    tokens = list(range(2 * BLOCK))
    stats = agent.rekeyer.stats
    # a parent this instance never stored (events lost): not renamed
    assert agent.feed(server.send(BlockStored([vllm_hash("c")], vllm_hash("p"), tokens[:BLOCK], BLOCK, None,
                                              "GPU"))) == []
    assert stats.unknown_parent == 1
    # a removal of a block never stored
    assert agent.feed(server.send(BlockRemoved([vllm_hash("nope"), 12345], "GPU"))) == []
    assert stats.unknown_removal == 2
    # another block size, and token ids that do not fill the blocks
    agent.feed(server.send(BlockStored([1], None, tokens, 2 * BLOCK, None, "GPU"),
                           BlockStored([1, 2], None, tokens[:BLOCK], BLOCK, None, "GPU")))
    assert stats.block_size_mismatch == 1 and stats.malformed == 1
    # a flood: a million blocks' hashes and tokens, past the bound of 10: 10 renamed, the rest refused
    huge = 1_000_000
    flood = agent.feed(server.send(BlockStored(list(range(huge)), None, [7] * (huge * BLOCK), BLOCK, None, "GPU")))
    assert [len(e.block_hashes) for e in flood] == [10] and stats.overflow == huge - 10
    assert len(agent.rekeyer) == 10 and len(index) == 10
    # ids beyond 32 bits are hashed by their low bits, as the router hashes them
    assert agent.feed(server.send(AllBlocksCleared()))[0].kind is KvEventKind.CLEARED
    wide = agent.feed(server.send(BlockStored([5], None, [2**40 + 1] * BLOCK, BLOCK, None, "GPU")))
    assert wide[0].block_hashes == token_block_hashes([1] * BLOCK, BLOCK)
    # after a clear (or a publisher restart), a child of a block stored before it is unknown
    assert agent.feed(server.send(BlockStored([6], 0, tokens[:BLOCK], BLOCK, None, "GPU"))) == []
    assert stats.unknown_parent == 2 and stats.cleared == 1 and len(agent.rekeyer) == 1
    assert index.stats.malformed == 0


# A vLLM cache as a model: copies of each block of a few token chains. `store` extends a chain past the
# blocks held; `copy` caches a chain's first blocks again (two requests filled them at once: vLLM keeps
# both, under one hash); `remove` evicts one copy of a chain's last blocks (vLLM evicts a sequence's
# tail first); `clear` drops everything. Copies stay non-increasing along a chain, so what is held is a
# prefix of it.
ops = st.lists(st.tuples(st.sampled_from(["store", "copy", "remove", "clear"]), st.integers(0, 1),
                         st.integers(1, 4)), max_size=40)


@given(ops)
@example([("store", 0, 2), ("copy", 0, 2), ("remove", 0, 1), ("store", 1, 1), ("remove", 0, 2)])
def test_the_index_holds_exactly_the_names_of_the_blocks_vllm_holds(steps: list[tuple[str, int, int]]) -> None:
    chains = [[c * 100 + t for t in range(6 * BLOCK)] for c in range(2)]
    index = PrefixIndex()
    agent = Agent(index)
    server = VllmServer()
    copies = [[0] * 6 for _ in chains]
    for op, chain, count in steps:
        tokens, n = chains[chain], copies[chain]
        hashes = [vllm_hash(chain, i) for i in range(6)]
        held = sum(1 for c in n if c)
        if op == "store" and held < 6:
            end = min(6, held + count)
            agent.feed(server.send(BlockStored(hashes[held:end], hashes[held - 1] if held else None,
                                               tokens[held * BLOCK:end * BLOCK], BLOCK, None, "GPU")))
            n[held:end] = [1] * (end - held)
        elif op == "copy" and held:
            end = min(held, count)
            agent.feed(server.send(BlockStored(hashes[:end], None, tokens[:end * BLOCK], BLOCK, None, "GPU")))
            n[:end] = [c + 1 for c in n[:end]]
        elif op == "remove" and held:
            evicted = []
            for _ in range(count):
                last = max((i for i, c in enumerate(n) if c), default=None)
                if last is None:
                    break
                n[last] -= 1
                evicted.append(hashes[last])
            agent.feed(server.send(BlockRemoved(evicted, "GPU")))
        elif op == "clear":
            agent.feed(server.send(AllBlocksCleared()))
            copies = [[0] * 6 for _ in chains]
    held_blocks = [sum(1 for c in n if c) for n in copies]
    for chain, held in enumerate(held_blocks):
        names = token_block_hashes(chains[chain], BLOCK)
        assert index.matched_blocks(MODEL, names) == ({"i1": held} if held else {})
    assert len(index) == sum(held_blocks) == len(agent.rekeyer)
    assert agent.rekeyer.stats.unknown_parent == 0 and agent.rekeyer.stats.unknown_removal == 0
