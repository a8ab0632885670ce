"""The router's tokenizers come from its settings, one per model: a folder's chat template and special
tokens are found, and a path that does not exist or a file that is not a tokenizer is named at start-up;
a prompt of a model with a tokenizer is hashed by its token ids, with its exact length, others by text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _tiny_tokenizer import write_model_folder

from opscale.openai.prefix_blocks import prefix_block_hashes, token_block_hashes
from opscale.openai.prompt_tokens import prompt_prefix_hashes
from opscale.openai.schema import ParsedRequest, parse_completion
from opscale.runtime.live.settings import RouterSettings, SettingsError, load_settings

from opscale_services.router.main import load_tokenizers

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opscale.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_router_takes_a_tokenizer_per_model_and_names_a_bad_one(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "llama")
    router = load_settings(RouterSettings, write(tmp_path, f"router: {{tokenizers: {{Llama-3-8B: {{path: {folder}}}}}}}\n"))
    assert router.tokenizers["Llama-3-8B"].path == folder and router.tokenizers["Llama-3-8B"].chat_template == ""
    assert load_tokenizers(router)["Llama-3-8B"].template is not None  # the folder's tokenizer_config.json's
    with pytest.raises(SettingsError, match=r"router.tokenizers.Llama-3-8B.path.*does not exist"):
        load_settings(RouterSettings, write(tmp_path, f"router: {{tokenizers: {{Llama-3-8B: {{path: {tmp_path}/no}}}}}}\n"))
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"router.tokenizers.m: tokenizer .*broken.json"):
        load_tokenizers(RouterSettings(tokenizers={"m": {"path": tmp_path / "broken.json"}}))


def parsed(kind: str, body: dict[str, object]) -> ParsedRequest:
    result = parse_completion(json.dumps(body).encode(), kind)
    assert isinstance(result, ParsedRequest), result
    return result


def test_a_tokenized_models_prompts_are_hashed_by_token_ids_and_others_by_text(tmp_path: Path) -> None:
    tokenizer = load_tokenizers(RouterSettings(tokenizers={"tok": {"path": write_model_folder(tmp_path / "m")}}))["tok"]
    text = "how long by train to rome and paris " * 3
    ids = tokenizer.token_ids({"prompt": text})
    assert ids is not None
    assert prompt_prefix_hashes(parsed("completion", {"model": "tok", "prompt": text}).body, 4, tokenizer) == (
        token_block_hashes(ids, 4), len(ids))
    assert prompt_prefix_hashes({"prompt": text}, 4, None) == (prefix_block_hashes({"prompt": text}, 4), None)
    # a chat the template refuses falls back to its text
    refused = parsed("chat", {"model": "tok", "messages": [{"role": "tool", "content": text}]}).body
    assert prompt_prefix_hashes(refused, 4, tokenizer) == (prefix_block_hashes(refused, 4), None)
    assert prompt_prefix_hashes({"prompt": text}, 0, tokenizer) == ((), None)
