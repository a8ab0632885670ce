"""The OpenAI-compatible wire schema: request validation, error bodies, response and stream-chunk bodies.

Role: turn the raw bytes of a `POST /v1/completions` or `POST /v1/chat/completions` body into a typed
`ParsedRequest`, or into an `ApiError` whose body has OpenAI's exact shape
`{"error": {"message", "type", "param", "code"}}`; build the JSON bodies (whole responses and the
streamed chunks) that the router and the node-agent's engine server send back. Framing those chunks as
server-sent events is `opscale.openai.sse`'s job.

It does no I/O and imports no network library, so the router, the node-agent and the load generator
share one definition of the format. `parse_completion` never raises on bad input: every rejection is an
`ApiError` that names the field path (`messages[0].content`) in `message` and in `param`.

Token counts: opscale has no tokenizer in the control plane. `estimate_tokens` counts one token per
4 characters (rounded up, at least 1), OpenAI's published rule of thumb for English text; chat requests
add 4 tokens per message for the role and separators and 3 for the assistant's reply prefix, as in
OpenAI's token-counting guide. The estimate is deterministic and cheap; the router only needs it to
weigh requests against each other. (A router given a model's tokenizer, opscale.openai.prompt_tokens,
counts that model's prompt tokens exactly when it hashes their KV blocks.) The router estimates once and hands the count on to the engine
server (`parse_completion(prompt_tokens=...)`); `usage.prompt_tokens` reports the engine's own count
when the engine gave one, else this estimate.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from opscale.model import Request
from opscale.openai.json_codec import loads_json

# -- limits and defaults ----------------------------------------------------------------------------

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# /v1/chat/completions has no default in OpenAI's API (it runs to the context limit); the router must
# know an upper bound to admit a request, so opscale uses this one when the client sets none.
DEFAULT_CHAT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 262_144  # beyond any served context window: a larger value is a client bug
DEFAULT_TIER = "interactive"
REGION_HEADER = "x-opscale-region"
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
CHARS_PER_TOKEN = 4
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_REPLY_PRIMING_TOKENS = 3

# Region and tier names become NATS subject tokens and metric labels: no dots, wildcards or spaces.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class RequestKind(StrEnum):
    """Which OpenAI endpoint a body was sent to."""

    COMPLETION = "completion"
    CHAT = "chat"


# -- errors -----------------------------------------------------------------------------------------

_TYPE_FOR_STATUS: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error answer: HTTP status plus OpenAI's error body fields.

    `retry_after_s`, when set, becomes a `Retry-After` header (whole seconds, rounded up).
    """

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: float | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None or not math.isfinite(self.retry_after_s):
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


def error_for_status(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after_s: float | None = None,
) -> ApiError:
    """An `ApiError` whose `type` follows OpenAI's convention for the status.

    4xx are `invalid_request_error` (except auth, permission and rate limits), 5xx are `server_error`.
    """
    if status >= 500:
        error_type = "server_error"
    else:
        error_type = _TYPE_FOR_STATUS.get(status, "invalid_request_error")
    return ApiError(status, message, error_type, param, code, retry_after_s)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist", "invalid_request_error", "model",
                    "model_not_found")


def body_too_large(max_body_bytes: int) -> ApiError:
    return ApiError(413, f"Request body is larger than the limit of {max_body_bytes} bytes",
                    "invalid_request_error", None, "request_too_large")


def internal_error(request_id: str | None = None) -> ApiError:
    """The answer to an unexpected failure: says nothing about internals, gives an id to quote."""
    suffix = f" (request id {request_id})" if request_id else ""
    return ApiError(500, f"The server had an error while processing your request{suffix}", "server_error",
                    None, "internal_error")


# -- request bodies ---------------------------------------------------------------------------------


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise PydanticCustomError(
            "opscale_name", "{what} must be 1-64 characters of letters, digits, '-' or '_'", {"what": what},
        )
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    include_usage: bool = False


class _CommonBody(BaseModel):
    """Fields both endpoints share. Unknown fields are ignored here but still forwarded upstream, so
    an engine that understands them (vLLM's extra sampling parameters, say) still receives them."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    model: str = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = 1
    stop: list[str] | None = None
    user: str | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    opscale_tier: str | None = None  # None: the key's default tier, else DEFAULT_TIER (see parse_completion)

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, value: int) -> int:
        if value != 1:
            raise PydanticCustomError("opscale_n", "only n=1 is supported")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        # OpenAI accepts a string or a list of up to 4 strings; normalise to a list so the declared type
        # needs no union (union errors name pydantic's internal member tags instead of the field).
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise PydanticCustomError(
                "opscale_stop", "at most {limit} stop sequences are allowed, got {count}",
                {"limit": MAX_STOP_SEQUENCES, "count": len(value)},
            )
        return value

    @field_validator("opscale_tier")
    @classmethod
    def _tier_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_name(value, "tier")


class CompletionBody(_CommonBody):
    """`POST /v1/completions`. `prompt` is one string, a list holding one string, or one list of
    token ids; it is normalised to a string or a list of ints."""

    prompt: str | list[int]
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)

    @field_validator("prompt", mode="before")
    @classmethod
    def _single_prompt(cls, value: object) -> object:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError("opscale_prompt", "must be a string or a list holding one string")
        if not value:
            raise PydanticCustomError("opscale_prompt", "must not be an empty list")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            if any(t < 0 for t in value):
                raise PydanticCustomError("opscale_prompt", "token ids must be >= 0")
            return value
        if len(value) > 1:
            raise PydanticCustomError(
                "opscale_prompt",
                "only a single prompt per request is supported, got a list of {count}; send one request each",
                {"count": len(value)},
            )
        (only,) = value
        if isinstance(only, str):
            return only
        if isinstance(only, list) and only and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in only):
            return only
        raise PydanticCustomError("opscale_prompt", "must be a string or a list holding one string")


class ChatMessage(BaseModel):
    """One chat message. `content` may be a string or a list of text parts, which are joined."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: object) -> object:
        if not isinstance(value, list):
            return value  # a string, None, or a wrong type that the str check then names
        texts: list[str] = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                got = repr(part.get("type")) if isinstance(part, dict) else type(part).__name__
                raise PydanticCustomError(
                    "opscale_content_part",
                    "part {index}: only text parts (type 'text' with a string 'text') are supported, got type {got}",
                    {"index": i, "got": got},
                )
            texts.append(part["text"])
        return "".join(texts)


class ChatBody(_CommonBody):
    """`POST /v1/chat/completions`. `max_completion_tokens` (OpenAI's newer name) wins over
    `max_tokens` when both are set."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)


# -- parsed requests --------------------------------------------------------------------------------


# Made once per request on the router's hot path: not `frozen`, since a frozen dataclass's __init__ costs
# three times as much (as for opscale.model's Request and RequestOutcome). Treat it as immutable all the same.
@dataclass(slots=True)
class ParsedRequest:
    """A validated request, ready for the router.

    `body` is the client's JSON object without opscale's own fields: what is forwarded to an
    OpenAI-compatible engine (see `upstream_body`). `region` is the `x-opscale-region` header, None
    when absent (the router then uses its own region). `tenant` is the id of the API key that sent it
    ("" when the router asks for none).
    """

    request_id: str
    kind: RequestKind
    model: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool
    tier: str
    region: str | None
    user: str | None
    body: Mapping[str, Any] = field(repr=False)
    tenant: str = ""

    def upstream_body(self, model: str | None = None) -> dict[str, Any]:
        """The body to POST to an engine: always streaming, `max_tokens` made explicit, and `model`
        replaced when the engine serves the model under another name."""
        out = dict(self.body)
        out.pop("stream_options", None)
        out.pop("max_completion_tokens", None)
        out["stream"] = True
        out["max_tokens"] = self.max_tokens
        if model is not None:
            out["model"] = model
        return out

    def as_request(self, arrival_s: float, default_region: str, prefix_hashes: tuple[int, ...] = ()) -> Request:
        """The control plane's view of this request; `max_tokens` is its output bound; `prefix_hashes`:
        its prompt's prefix blocks (opscale.openai.prefix_blocks), when the router routes on them."""
        return Request(
            request_id=self.request_id,
            model=self.model,
            tier=self.tier,
            region=self.region or default_region,
            arrival_s=arrival_s,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.max_tokens,
            prefix_hashes=prefix_hashes,
            tenant=self.tenant,
        )


def estimate_tokens(text: str) -> int:
    """Tokens in `text`: one per 4 characters, rounded up, at least 1 (see the module docstring)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def estimate_chat_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens of a chat: content estimate plus per-message and reply-priming overheads."""
    total = CHAT_REPLY_PRIMING_TOKENS
    for message in messages:
        total += CHAT_TOKENS_PER_MESSAGE
        if message.content:
            total += estimate_tokens(message.content)
    return total


def _loc_path(loc: Sequence[int | str]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_error(exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = _loc_path(first["loc"])
    message = f"{path}: {first['msg']}" if path else first["msg"]
    value = first.get("input")
    if first["type"] != "missing" and (value is None or isinstance(value, str | int | float | bool)):
        shown = json.dumps(value)
        message += f", got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return invalid_request(message, param=path or None)


# Request ids: 128 random bits, as many as a uuid4's hex. They must be unique, not secret (a client may
# name its own), so they come from a generator of this module's own, seeded from os.urandom and again in
# a forked child (no seed() elsewhere repeats them), rather than a UUID object and a system call each,
# a share of the router's CPU per request.
_request_ids = random.Random()
if hasattr(os, "register_at_fork"):  # where processes fork
    os.register_at_fork(after_in_child=_request_ids.seed)


def _new_request_id(kind: RequestKind) -> str:
    # 32 lower-case hex digits, written by bytes.hex (half the cost of a formatted 128-bit integer)
    prefix = "chatcmpl-" if kind is RequestKind.CHAT else "cmpl-"
    return prefix + _request_ids.getrandbits(128).to_bytes(16, "big").hex()


def parse_completion(
    raw: bytes,
    kind: RequestKind | str,
    *,
    headers: Mapping[str, str] | None = None,
    request_id: str | None = None,
    prompt_tokens: int | None = None,
    default_tier: str | None = None,
    tenant: str = "",
) -> ParsedRequest | ApiError:
    """Validate a request body (and the `x-opscale-region` header). Never raises on bad input.

    `kind` is "completion" or "chat". `headers` is any case-insensitive mapping (aiohttp's
    `request.headers`); a plain dict must use lower-case keys. `request_id` defaults to a fresh
    `cmpl-…` / `chatcmpl-…` id. `prompt_tokens`, when given (the router's count, carried to an engine
    server), is taken as is rather than estimated again. A body without `opscale_tier` gets
    `default_tier` (the API key's), else `interactive`; `tenant` is the API key's id, when there is one.
    """
    if not isinstance(kind, RequestKind):  # the router passes the enum: no Enum call (a Python one) a request
        kind = RequestKind(kind)
    try:
        obj = loads_json(raw)  # strict JSON decoded in C; what else the standard library accepts (NaN)
    except (ValueError, RecursionError):
        obj = _loads_or_refusal(raw)  # not JSON: the refusal, worded
        if isinstance(obj, ApiError):
            return obj
    if not isinstance(obj, dict):
        return invalid_request(f"The request body must be a JSON object, got a JSON {_json_kind(obj)}")

    region = None if headers is None else name_header(headers, REGION_HEADER)
    if isinstance(region, ApiError):
        return region

    fast = _plain_fields(obj, kind)
    if fast is not None:
        model, max_tokens, stream, include_usage, user, estimate = fast
        return ParsedRequest(
            request_id=request_id or _new_request_id(kind),
            kind=kind,
            model=model,
            prompt_tokens=estimate if prompt_tokens is None else prompt_tokens,
            max_tokens=max_tokens,
            stream=stream,
            include_usage=include_usage,
            tier=default_tier or DEFAULT_TIER,
            region=region,
            user=user,
            body=obj,  # decoded here, so its own (no opscale_ field: those take the full validation)
            tenant=tenant,
        )

    try:
        if kind is RequestKind.CHAT:
            chat = ChatBody.model_validate(obj)
            common: _CommonBody = chat
            max_tokens = chat.max_completion_tokens or chat.max_tokens or DEFAULT_CHAT_MAX_TOKENS
            if prompt_tokens is None:
                prompt_tokens = estimate_chat_tokens(chat.messages)
        else:
            completion = CompletionBody.model_validate(obj)
            common = completion
            max_tokens = completion.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
            prompt = completion.prompt
            if prompt_tokens is None:
                prompt_tokens = estimate_tokens(prompt) if isinstance(prompt, str) else max(1, len(prompt))
    except ValidationError as exc:
        return _validation_error(exc)

    forwarded = {k: v for k, v in obj.items() if not k.startswith("opscale_")}
    return ParsedRequest(
        request_id=request_id or _new_request_id(kind),
        kind=kind,
        model=common.model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        stream=common.stream,
        include_usage=bool(common.stream_options and common.stream_options.include_usage),
        tier=common.opscale_tier or default_tier or DEFAULT_TIER,
        region=region,
        user=common.user,
        body=forwarded,
        tenant=tenant,
    )


# The fields `_plain_fields` reads itself; a body with any other field takes the full validation.
_PLAIN_COMMON_FIELDS = frozenset({"model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "user"})
_PLAIN_COMPLETION_FIELDS = _PLAIN_COMMON_FIELDS | {"prompt"}
_PLAIN_CHAT_FIELDS = _PLAIN_COMMON_FIELDS | {"messages", "max_completion_tokens"}
_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def _bounded_number(value: object, low: float, high: float) -> bool:
    """A finite JSON number within [low, high], as the strict float fields accept it (an int too, not a bool)."""
    return (type(value) is float or type(value) is int) and low <= value <= high  # noqa: E721 - bool is no number


def _token_bound(value: object) -> bool:
    return value is None or (type(value) is int and 1 <= value <= MAX_TOKENS_LIMIT)  # noqa: E721


def _plain_fields(obj: dict[str, Any], kind: RequestKind
                  ) -> tuple[str, int, bool, bool, str | None, int] | None:
    """The common body in its common shape, read without pydantic (its validation was a share of the
    router's CPU per request): (model, max_tokens, stream, include_usage, user, prompt token estimate)
    when every field is one of a few, each of a plain type and in range, so that the models above would
    accept the body with these values; None for any other body, which then takes the full validation
    (and its refusal, worded field by field). tests/unit/openai/test_openai_schema.py checks that both
    read every body alike."""
    chat = kind is RequestKind.CHAT
    if not (_PLAIN_CHAT_FIELDS if chat else _PLAIN_COMPLETION_FIELDS).issuperset(obj):
        return None
    model = obj.get("model")
    if type(model) is not str or not 1 <= len(model) <= 256:  # noqa: E721 - exactly a JSON string
        return None
    stream = obj.get("stream", False)
    if type(stream) is not bool:  # noqa: E721
        return None
    max_tokens = obj.get("max_tokens")
    if not _token_bound(max_tokens):
        return None
    include_usage = False
    options = obj.get("stream_options")
    if options is not None:
        if type(options) is not dict or not {"include_usage"}.issuperset(options):  # noqa: E721
            return None
        include_usage = options.get("include_usage", False)
        if type(include_usage) is not bool:  # noqa: E721
            return None
    if "temperature" in obj and obj["temperature"] is not None and not _bounded_number(obj["temperature"], 0, 2):
        return None
    if "top_p" in obj and obj["top_p"] is not None and not _bounded_number(obj["top_p"], 0, 1):
        return None
    user = obj.get("user")
    if user is not None and type(user) is not str:  # noqa: E721
        return None
    if chat:
        messages = obj.get("messages")
        if type(messages) is not list or not messages:  # noqa: E721
            return None
        estimate = CHAT_REPLY_PRIMING_TOKENS
        for message in messages:
            if type(message) is not dict or "content" not in message:  # noqa: E721
                return None
            role = message.get("role")
            if type(role) is not str or role not in _CHAT_ROLES:  # noqa: E721
                return None
            content, name = message["content"], message.get("name")
            if not (content is None or type(content) is str) or not (name is None or type(name) is str):  # noqa: E721
                return None
            estimate += CHAT_TOKENS_PER_MESSAGE + (estimate_tokens(content) if content else 0)
        completion_tokens = obj.get("max_completion_tokens")
        if not _token_bound(completion_tokens):
            return None
        return (model, completion_tokens or max_tokens or DEFAULT_CHAT_MAX_TOKENS, stream, include_usage, user,
                estimate)
    prompt = obj.get("prompt")
    if type(prompt) is not str:  # noqa: E721 - a string prompt; a list takes the full validation
        return None
    return model, max_tokens or DEFAULT_COMPLETION_MAX_TOKENS, stream, include_usage, user, estimate_tokens(prompt)


def name_header(headers: Mapping[str, str], header: str) -> str | ApiError | None:
    """The value of a header that holds a region or tier name (None when absent), or the 400 that
    names the header and the bad value."""
    value = headers.get(header)
    if value is not None and not _NAME_RE.match(value):
        return invalid_request(
            f"header {header}: must be 1-64 characters of letters, digits, '-' or '_', got {value[:80]!r}",
            param=header,
        )
    return value


def _loads_or_refusal(raw: bytes) -> Any:
    """`raw` read by the standard library's JSON reader, or the 400 that says why it cannot be."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return invalid_request(f"The request body is not valid UTF-8 (byte {exc.start})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return invalid_request(
            f"We could not parse the JSON body of your request: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}. Send a JSON object with Content-Type: application/json."
        )
    except RecursionError:
        return invalid_request("We could not parse the JSON body of your request: nested too deeply")
    except ValueError as exc:
        # json's one other refusal: an integer longer than Python converts (sys.get_int_max_str_digits)
        return invalid_request(f"We could not parse the JSON body of your request: {str(exc).split(';')[0]}")


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, str):
        return "string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "boolean"
    return "number"


async def read_limited(chunks: AsyncIterable[bytes], content_length: int | None,
                       max_body_bytes: int) -> bytes | ApiError:
    """Read a request body of at most `max_body_bytes`, refusing early on a declared larger length.

    `chunks` is the body as it arrives (aiohttp: `request.content.iter_chunked(n)`); reading stops at
    the first chunk past the limit, so a huge chunked upload is not buffered.
    """
    if content_length is not None and content_length > max_body_bytes:
        return body_too_large(max_body_bytes)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_body_bytes:
            return body_too_large(max_body_bytes)
        parts.append(chunk)
    return b"".join(parts)


# -- token chunks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """One piece of generated output, as the router's back end yields it.

    `index` is the chunk's 0-based position in the output. An engine sends one chunk per token; a
    closing chunk with empty `text` that only carries `finish_reason` is not a token (`is_token`).
    """

    text: str
    index: int
    finish_reason: str | None = None

    @property
    def is_token(self) -> bool:
        return bool(self.text) or self.finish_reason is None


def finish_reason_for(completion_tokens: int, max_tokens: int) -> str:
    """When a stream ends without saying why: it hit the limit, or the engine stopped by itself."""
    return "length" if completion_tokens >= max_tokens else "stop"


# -- response bodies --------------------------------------------------------------------------------


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(req: ParsedRequest, text: str, finish_reason: str, completion_tokens: int,
                        created_s: int, *, prompt_tokens: int | None = None) -> dict[str, Any]:
    """A whole (non-streaming) response: `text_completion` or `chat.completion` by the request's kind.
    `prompt_tokens` is the engine's count when it reported one (default: the request's estimate)."""
    if req.kind is RequestKind.CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": req.request_id,
        "object": obj,
        "created": created_s,
        "model": req.model,
        "choices": [choice],
        "usage": usage_dict(req.prompt_tokens if prompt_tokens is None else prompt_tokens, completion_tokens),
    }


def stream_chunk(req: ParsedRequest, text: str, finish_reason: str | None, created_s: int,
                 *, first: bool = False) -> dict[str, Any]:
    """One streamed chunk. Chat chunks carry a `delta` (with the assistant role on the first one).
    With `include_usage`, every chunk has `"usage": null`, as OpenAI sends them."""
    if req.kind is RequestKind.CHAT:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    chunk: dict[str, Any] = {
        "id": req.request_id,
        "object": obj,
        "created": created_s,
        "model": req.model,
        "choices": [choice],
    }
    if req.include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(req: ParsedRequest, completion_tokens: int, created_s: int, *,
                prompt_tokens: int | None = None) -> dict[str, Any]:
    """The last chunk before `[DONE]` when `stream_options.include_usage` is set: no choices, usage.
    `prompt_tokens` as in `completion_response`."""
    obj = "chat.completion.chunk" if req.kind is RequestKind.CHAT else "text_completion"
    return {
        "id": req.request_id,
        "object": obj,
        "created": created_s,
        "model": req.model,
        "choices": [],
        "usage": usage_dict(req.prompt_tokens if prompt_tokens is None else prompt_tokens, completion_tokens),
    }


def model_object(model: str, created_s: int, owned_by: str = "opscale") -> dict[str, Any]:
    """One model as `GET /v1/models/{model}` answers it (and `GET /v1/models` lists it)."""
    return {"id": model, "object": "model", "created": created_s, "owned_by": owned_by}


def models_response(models: Sequence[str], created_s: int, owned_by: str = "opscale") -> dict[str, Any]:
    """`GET /v1/models`."""
    return {"object": "list", "data": [model_object(m, created_s, owned_by) for m in models]}
