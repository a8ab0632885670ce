"""A real Hugging Face tokenizer built offline for tests: a word-level vocabulary trained on a few
sentences, a BOS added to single prompts (as Llama's post-processor does), chat-marker special tokens,
and a chat template in the shape of the common ones (special tokens written by the template)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
CORPUS = [
    "you help with travel cooking and gardening questions",
    "question answer details about the trip to rome paris and berlin by train or plane",
    "how long do i boil an egg for a soft yolk and what about pasta",
    "tell me more please thanks ok sure here is a plan for day one two three",
]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role ' + m['role']) }}"
    "{% endif %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok


def write_model_folder(folder: Path, template: str | None = TEMPLATE) -> Path:
    """A Hugging Face model folder: tokenizer.json and tokenizer_config.json (with the chat template,
    and bos_token written as an AddedToken object, as some models do)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    config: dict[str, object] = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
