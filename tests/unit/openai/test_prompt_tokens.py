"""The router's tokenizer: a completion's prompt gets the tokenizer's BOS, a chat is rendered through the
model's chat template (special tokens, generation prompt) and encoded as the template wrote it; a
follow-up turn's tokens start with the first turn's; what cannot be rendered gives None, never an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from _tiny_tokenizer import TEMPLATE, build_tokenizer, write_model_folder

from opscale.openai.prompt_tokens import PromptTokenizer, TokenizerLoadError

SYSTEM = {"role": "system", "content": "you help with travel"}


@pytest.fixture
def tokenizer(tmp_path: Path) -> PromptTokenizer:
    return PromptTokenizer.from_files(write_model_folder(tmp_path / "model"))


def test_a_chat_is_rendered_through_its_template_with_the_generation_prompt(tokenizer: PromptTokenizer) -> None:
    body = {"messages": [SYSTEM, {"role": "user", "content": "how long by train to rome"}]}
    text = tokenizer.render_chat(body)
    assert text == ("<s><|system|> you help with travel </s><|user|> how long by train to rome </s>"
                    "<|assistant|>")
    ids = tokenizer.token_ids(body)
    assert ids is not None
    t = tokenizer.tokenizer
    # the template wrote the BOS: encoding adds no second one
    assert ids[:2] == [t.token_to_id("<s>"), t.token_to_id("<|system|>")]
    assert ids[-1] == t.token_to_id("<|assistant|>")
    assert tokenizer.render_chat({**body, "add_generation_prompt": False}).endswith("rome </s>")
    # text parts are joined with newlines, as vLLM joins them for a string template
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "paris"},
                                                       {"type": "text", "text": "berlin"}]}]}
    assert "<|user|> paris\nberlin </s>" in tokenizer.render_chat(parts)


def test_a_completion_prompt_gets_the_tokenizers_bos_and_token_arrays_pass_as_they_are(
        tokenizer: PromptTokenizer) -> None:
    t = tokenizer.tokenizer
    assert tokenizer.token_ids({"prompt": "train to rome"}) == [t.token_to_id(w) for w in
                                                                 ("<s>", "train", "to", "rome")]
    assert tokenizer.token_ids({"prompt": [5, 6, 7]}) == [5, 6, 7]
    assert tokenizer.token_ids({"prompt": ["two", "prompts"]}) is None


def test_a_follow_up_turn_starts_with_the_first_turns_tokens(tokenizer: PromptTokenizer) -> None:
    first = [SYSTEM, {"role": "user", "content": "how long by train to rome"}]
    follow = [*first, {"role": "assistant", "content": "here is a plan for day one"},
              {"role": "user", "content": "and paris"}]
    a, b = tokenizer.token_ids({"messages": first}), tokenizer.token_ids({"messages": follow})
    assert a is not None and b is not None
    assert b[:len(a)] == a and len(b) > len(a)


def test_what_the_template_refuses_or_cannot_render_gives_none(tmp_path: Path) -> None:
    tokenizer = PromptTokenizer.from_files(write_model_folder(tmp_path / "model"))
    assert tokenizer.token_ids({"messages": [{"role": "tool", "content": "x"}]}) is None  # raise_exception
    # no template anywhere: chats are not tokenized, completions are
    bare = PromptTokenizer.from_files(write_model_folder(tmp_path / "bare", template=None) / "tokenizer.json")
    assert bare.template is None and bare.token_ids({"messages": [SYSTEM]}) is None
    assert bare.token_ids({"prompt": "rome"}) is not None
    # a template that prints the date needs a clock: without one it does not render
    dated = PromptTokenizer(build_tokenizer(), "{{ strftime_now('%Y') }}{{ messages[0]['content'] }}")
    assert dated.token_ids({"messages": [SYSTEM]}) is None


def test_a_template_given_in_settings_wins_and_bad_files_are_named(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "model")
    jinja = tmp_path / "other.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}", encoding="utf-8")
    assert PromptTokenizer.from_files(folder, str(jinja)).render_chat({"messages": [SYSTEM]}) == \
        "you help with travel "
    assert PromptTokenizer.from_files(folder, TEMPLATE).render_chat({"messages": [SYSTEM]}).startswith("<s>")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerLoadError, match="broken"):
        PromptTokenizer.from_files(tmp_path / "broken")
    with pytest.raises(TokenizerLoadError, match="missing.jinja"):
        PromptTokenizer.from_files(folder, str(tmp_path / "missing.jinja"))
    with pytest.raises(TokenizerLoadError, match="line 1"):
        PromptTokenizer.from_files(folder, "{% for m in messages %}")


PARTS_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% for p in m['content'] %} {{ p['text'] }}"
                  "{% endfor %} </s>{% endfor %}")


@pytest.mark.parametrize("template, loops", [
    (TEMPLATE, False),
    (PARTS_TEMPLATE, True),
    ("{% for m in messages %}{% set c = m.content %}{% for p in c | list %}{{ p.text }}{% endfor %}{% endfor %}", True),
    ("{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% endif %}{% endfor %}", False),
    # transformers' assistant-mask blocks render as their body
    ("{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}", False),
])
def test_a_template_that_loops_over_content_gets_text_parts_as_vllm_gives_them(template: str, loops: bool) -> None:
    tokenizer = PromptTokenizer(build_tokenizer(), template)
    assert tokenizer.content_as_parts is loops
    assert tokenizer.render_chat({"messages": [{"role": "user", "content": "rome"}]}) is not None
    if loops and template == PARTS_TEMPLATE:
        two_parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "paris"},
                                                                {"type": "text", "text": "berlin"}]},
                                  {"role": "assistant", "content": "rome"}, {"role": "user", "content": None}]}
        assert tokenizer.render_chat(two_parts) == "<|user|> paris berlin </s><|assistant|> rome </s><|user|> </s>"
