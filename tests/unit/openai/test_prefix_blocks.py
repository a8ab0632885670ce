"""A live prompt's prefix blocks: a follow-up turn of a conversation repeats the earlier turns' block
hashes and adds its own; only whole blocks are hashed; chained, so a block's hash names its prefix."""

from __future__ import annotations

from opscale.openai.prefix_blocks import prefix_block_hashes

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
