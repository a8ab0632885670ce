"""A live prompt's prefix blocks: a follow-up turn of a conversation repeats the earlier turns' block
hashes and adds its own; only whole blocks are hashed; chained, so a block's hash names its prefix."""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from opscale.openai.prefix_blocks import prefix_block_hashes, token_block_hashes

BLOCK = 16  # tokens: 64 characters a block


def chat(*turns: str) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
                                       for i, t in enumerate(turns)]}


def test_a_follow_up_turn_shares_the_conversations_blocks_and_adds_its_own() -> None:
    first = chat("a" * 1000)
    follow = chat("a" * 1000, "b" * 300, "c" * 500)
    h1, h2 = prefix_block_hashes(first, BLOCK), prefix_block_hashes(follow, BLOCK)
    assert len(h1) == len("<|user|>" + "a" * 1000 + "<|end|>") // 64  # whole blocks only
    assert len(h2) > len(h1)
    assert h2[:len(h1)] == h1  # the first turn's text is the head of the follow-up's
    assert all(-(2**63) <= h < 2**63 for h in h2)


def test_hashes_are_chained_and_the_block_size_and_prompt_form_matter() -> None:
    x = prefix_block_hashes({"prompt": "x" * 640}, BLOCK)
    y = prefix_block_hashes({"prompt": "y" * 64 + "x" * 576}, BLOCK)
    assert len(x) == 10 and len(set(x)) == 10  # the same text in each block, a different prefix each time
    assert not set(x) & set(y)  # a different first block changes every later hash
    assert prefix_block_hashes({"prompt": "x" * 63}, BLOCK) == ()
    assert len(prefix_block_hashes({"prompt": [1] * 40}, BLOCK)) == 2  # token ids: 16 a block
    assert prefix_block_hashes({"prompt": "x" * 640}, 0) == ()
    assert prefix_block_hashes({"nothing": 1}, BLOCK) == ()
    # text parts are joined as the schema joins them
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 100},
                                                       {"type": "text", "text": "z" * 100}]}]}
    assert prefix_block_hashes(parts, BLOCK) == prefix_block_hashes(chat("z" * 200), BLOCK)


# -- token ids (a tokenizing router, vLLM's renamed events) --------------------------------------------

token_lists = st.lists(st.integers(0, 2**32 - 1), max_size=80)


@given(token_lists, token_lists, st.integers(1, 8))
def test_token_hashes_chain_a_split_sequence_to_the_same_names(head: list[int], tail: list[int], size: int) -> None:
    head = head[:len(head) - len(head) % size]  # whole blocks, as a stored event's are
    whole = token_block_hashes(head + tail, size)
    first = token_block_hashes(head, size)
    rest = token_block_hashes(tail, size, parent=first[-1] if first else None)
    assert whole == first + rest
    assert len(whole) == len(head + tail) // size
    assert all(-(2**63) <= h < 2**63 for h in whole)
    assert token_block_hashes(head + tail, size, limit=1) == whole[:1]


def test_token_hashes_name_the_whole_prefix_and_a_token_array_prompt_is_hashed_the_same() -> None:
    a = token_block_hashes(list(range(64)), 16)
    b = token_block_hashes([99] + list(range(1, 64)), 16)
    assert len(a) == 4 and not set(a) & set(b)  # one token differs in the first block: every name differs
    assert prefix_block_hashes({"prompt": list(range(64))}, 16) == a
    assert token_block_hashes(list(range(64)), 0) == ()
    # hostile ids outside 32 bits are taken by their low 32 bits, never raised
    assert token_block_hashes([2**32 + 5, -1] * 8, 16) == token_block_hashes([5, 2**32 - 1] * 8, 16)


def test_token_hashes_are_the_same_in_another_process() -> None:
    # Python's hash() differs per process (PYTHONHASHSEED); these must not, or the router and the agents
    # would name blocks differently.
    code = ("from opscale.openai.prefix_blocks import token_block_hashes; "
            "print(token_block_hashes(list(range(100)), 16, parent=-7))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str(token_block_hashes(list(range(100)), 16, parent=-7))
