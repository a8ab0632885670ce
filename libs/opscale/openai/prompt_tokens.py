"""A model's prompts as the token ids its vLLM server will compute from them, so the router can name a
prompt's KV blocks as the engines cache them (opscale.openai.prefix_blocks.token_block_hashes).

The model's Hugging Face tokenizer (`tokenizer.json`, read by the `tokenizers` library) encodes:
- a completion's prompt string with the tokenizer's special tokens (BOS), as vLLM's /v1/completions does;
  a token-array prompt is taken as is;
- a chat's messages rendered through the model's chat template first, as vLLM's /v1/chat/completions does
  (transformers' apply_chat_template): Jinja in a sandbox with trim_blocks and lstrip_blocks, the
  `loopcontrols` extension, `{% generation %}` blocks, a `tojson` filter, `raise_exception`, the
  tokenizer's special tokens (bos_token, eos_token, ...) as variables and `add_generation_prompt` true
  unless the body says otherwise (`chat_template_kwargs` are passed on); the rendered text is encoded
  without special tokens (the template writes them). A message's content is given as vLLM gives it: to a template that loops
  over a message's content (its Jinja source has a `for` over `...['content']`, or over a variable set
  from it), a list of text parts, a string content becoming one part; to any other, a string, text parts
  joined with newlines. Absent content is an empty list or string.

The template comes from settings, else from `chat_template.jinja` or `tokenizer_config.json` beside the
tokenizer. A body this cannot render (the template raises, e.g. roles that do not alternate) or encode
gives None: the router then hashes the prompt's text, and vLLM will refuse the request anyway.

Templates that print today's date call `strftime_now`; it is given the clock the caller passes (none:
such a template fails to render and the prompt's text is hashed), since nothing here reads time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from opscale.openai.prefix_blocks import prefix_block_hashes, token_block_hashes

_SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TokenizerLoadError(ValueError):
    """A tokenizer or chat template that cannot be loaded; the message names the file."""


class _GenerationBlocks(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`, which transformers' templates use to mark the assistant's
    tokens (for training masks): rendered as its body, as apply_chat_template renders it."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    return []


def _content(content: Any, as_parts: bool) -> str | list[dict[str, str]]:
    texts = _texts(content)
    return [{"type": "text", "text": t} for t in texts] if as_parts else "\n".join(texts)


def _peel(node: jinja2.nodes.Node) -> jinja2.nodes.Node:
    """The value under filters, tests and slices: `m['content'] | reverse` and `m['content'][1:]` loop
    over the content."""
    while True:
        if isinstance(node, jinja2.nodes.Filter | jinja2.nodes.Test) and node.node is not None:
            node = node.node
        elif isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice):
            node = node.node
        else:
            return node


def _is_content(node: jinja2.nodes.Node, names: set[str]) -> bool:
    node = _peel(node)
    if isinstance(node, jinja2.nodes.Getitem):
        return isinstance(node.arg, jinja2.nodes.Const) and node.arg.value == "content"
    if isinstance(node, jinja2.nodes.Getattr):
        return node.attr == "content"
    return isinstance(node, jinja2.nodes.Name) and node.name in names


def loops_over_content(env: jinja2.Environment, source: str) -> bool:
    """Whether a chat template iterates a message's content (it takes content as a list of parts, vLLM's
    "openai" content format) rather than printing it (a string)."""
    tree = env.parse(source)
    names: set[str] = set()  # variables set from a message's content
    for assign in tree.find_all(jinja2.nodes.Assign):
        if isinstance(assign.target, jinja2.nodes.Name) and _is_content(assign.node, names):
            names.add(assign.target.name)
    return any(_is_content(loop.iter, names) for loop in tree.find_all(jinja2.nodes.For))


class PromptTokenizer:
    """One model's tokenizer and chat template (see the module docstring)."""

    __slots__ = ("tokenizer", "template", "content_as_parts", "special_tokens", "_now")

    def __init__(self, tokenizer: Tokenizer, chat_template: str = "", special_tokens: Mapping[str, str] | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        self.tokenizer = tokenizer
        self.special_tokens = dict(special_tokens or {})
        self._now = now
        self.template: jinja2.Template | None = None
        self.content_as_parts = False
        if chat_template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols, _GenerationBlocks])
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _template_error
            env.globals["strftime_now"] = self._strftime_now
            try:
                self.template = env.from_string(chat_template)
                self.content_as_parts = loops_over_content(env, chat_template)
            except jinja2.TemplateSyntaxError as exc:
                raise TokenizerLoadError(f"chat template, line {exc.lineno}: {exc.message}") from exc

    def _strftime_now(self, fmt: str) -> str:
        if self._now is None:
            raise jinja2.TemplateError("strftime_now: no clock given")
        return self._now().strftime(fmt)

    @classmethod
    def from_files(cls, path: Path, chat_template: str = "", now: Callable[[], datetime] | None = None
                   ) -> PromptTokenizer:
        """Load a tokenizer: `path` a tokenizer.json or the folder holding it (a Hugging Face model folder,
        whose tokenizer_config.json gives the special tokens); `chat_template` a Jinja template, inline or
        as the path of a .jinja file ('': the folder's chat_template.jinja, else tokenizer_config.json's).
        A file that is absent or unreadable raises TokenizerLoadError naming it."""
        folder = path if path.is_dir() else path.parent
        tokenizer_json = folder / "tokenizer.json" if path.is_dir() else path
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the library raises its own Exception subclass for any bad file
            raise TokenizerLoadError(f"tokenizer {tokenizer_json}: {exc}") from exc
        config: dict[str, Any] = {}
        config_path = folder / "tokenizer_config.json"
        if config_path.is_file():
            try:
                loaded = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TokenizerLoadError(f"{config_path}: {exc}") from exc
            if not isinstance(loaded, dict):
                raise TokenizerLoadError(f"{config_path}: not a JSON object")
            config = loaded
        template = chat_template
        if template and "{" not in template:  # a path, not a template
            try:
                template = Path(template).read_text(encoding="utf-8")
            except OSError as exc:
                raise TokenizerLoadError(f"chat_template {chat_template}: {exc}") from exc
        elif not template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        elif not template:
            template = _config_template(config, config_path)
        special = {}
        for key in _SPECIAL_TOKEN_KEYS:
            value = config.get(key)
            if isinstance(value, Mapping):  # an AddedToken written out: {"content": "<s>", ...}
                value = value.get("content")
            if isinstance(value, str):
                special[key] = value
        return cls(tokenizer, template, special, now)

    def token_ids(self, body: Mapping[str, Any]) -> list[int] | None:
        """The token ids vLLM computes for a validated completion or chat body; None when this cannot tell
        (no chat template for a chat, a template that refuses the messages, a prompt of several strings)."""
        messages = body.get("messages")
        if isinstance(messages, list):
            text = self.render_chat(body)
            return None if text is None else self.tokenizer.encode(text, add_special_tokens=False).ids
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True).ids
        if isinstance(prompt, list) and all(type(t) is int for t in prompt):
            return prompt
        return None

    def render_chat(self, body: Mapping[str, Any]) -> str | None:
        """A chat body's messages through the chat template; None when there is no template or it refuses."""
        if self.template is None:
            return None
        parts = self.content_as_parts
        messages = [{**m, "content": _content(m.get("content"), parts)} for m in body.get("messages", ())
                    if isinstance(m, Mapping)]
        kwargs = body.get("chat_template_kwargs")
        variables: dict[str, Any] = {**self.special_tokens, **(kwargs if isinstance(kwargs, Mapping) else {})}
        generation = body.get("add_generation_prompt", True)
        variables.update(messages=messages, add_generation_prompt=generation if isinstance(generation, bool) else True,
                         tools=body.get("tools"), documents=None)
        try:
            return self.template.render(**variables)
        except Exception:  # a template is code from a config: whatever it raises, this prompt is not tokenized
            return None


def prompt_prefix_hashes(body: Mapping[str, Any], block_tokens: int, tokenizer: PromptTokenizer | None
                         ) -> tuple[tuple[int, ...], int | None]:
    """A validated body's prefix block hashes of `block_tokens` tokens and, when `tokenizer` tokenized it,
    its exact prompt length (None: not tokenized, the caller's estimate stands): the hashes of its token
    ids (token_block_hashes, as the node-agents rename vLLM's blocks) when the tokenizer can tell them,
    else of its text (prefix_block_hashes, as the simulated engines name theirs). ((), None) when
    `block_tokens` < 1."""
    if block_tokens < 1:
        return (), None
    if tokenizer is not None:
        ids = tokenizer.token_ids(body)
        if ids is not None:
            return token_block_hashes(ids, block_tokens), max(1, len(ids))
    return prefix_block_hashes(body, block_tokens), None


def _config_template(config: Mapping[str, Any], path: Path) -> str:
    template = config.get("chat_template", "")
    if isinstance(template, list):  # named templates: the default one
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default", "")
    if not isinstance(template, str):
        raise TokenizerLoadError(f"{path}: chat_template is neither a string nor a list of named templates")
    return template
