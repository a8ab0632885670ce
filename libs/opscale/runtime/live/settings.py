"""Process settings of the live services (pydantic-settings): where the servers are, which ports to
serve, how often to tick. Policy knobs stay in each service core's own config model, nested here as
`core` so one file configures both.

Sources, strongest first:
  1. arguments passed to the constructor (tests, the CLI);
  2. the service's environment variables, prefix OPSCALE_<SERVICE>_ (nested fields with `__`:
     OPSCALE_ROUTER_CORE__POLICY=jsq_tokens);
  3. shared environment variables OPSCALE_<FIELD> for the fields every service has (OPSCALE_NATS_URL);
  4. the YAML config file (`OPSCALE_CONFIG`, or the path given to `load_settings`): top-level keys are
     the shared fields, and a section per service (router, aggregator, forecaster, planner,
     node_agent) holds that service's fields and overrides the shared ones;
  5. defaults.

`tiers` (the service tiers and their objectives, opscale.model.tiers) and `engine` (the simulated
engines' settings) are shared and only shared: the router, the aggregator and the planner must judge and
plan by one tier table, and the planner must size capacity for the engines the node-agents run, so a
service section or a service-prefixed variable that sets either is an error.

Example file:

    nats_url: nats://nats:4222
    namespace: staging
    tiers:
      - {name: interactive, ttft_slo_s: 1.0, tbt_slo_s: 0.05}
      - {name: batch, ttft_slo_s: 600, tbt_slo_s: 1.0, deadline_s: 3600, priority: 1}
    router:
      http_port: 8080
      core: {policy: jsq_tokens}
    node_agent:
      agent_id: gpu-host-7
      sku: H100-80GB

`load_settings(RouterSettings)` turns every validation problem into one `SettingsError` whose message
names the field, where it can be set, and the rejected value.
"""

from __future__ import annotations

import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from opscale.cloud import VmCount, account_catalog, gpu_quotas, load_regions, vm_count_table
from opscale.engine import EngineConfig
from opscale.model import RdmaPriority, Role, TierList, TierSpec, default_tier_models, tier_table
from opscale.perf.transfer import Placement, TransferParams
from opscale.planning import DeploymentSpec
from opscale.routing.tenants import ApiKeySpec
from opscale.runtime.live.cloud_k8s_settings import K8sSettings
from opscale.runtime.live.redact import redact_url
from opscale.runtime.live.server_limits import ServerLimits
from opscale.services.aggregator import AggregatorConfig
from opscale.services.forecaster import ForecasterConfig
from opscale.services.node_agent import NodeAgentConfig
from opscale.services.planner import PlannerConfig
from opscale.services.router import RouterConfig

__all__ = [
    "CONFIG_ENV",
    "AggregatorSettings",
    "AuthSettings",
    "CloudSettings",
    "ForecasterSettings",
    "GrpcTlsSettings",
    "LiveSettings",
    "LocalCloudSettings",
    "NatsAuthSettings",
    "NodeAgentSettings",
    "POD_NAME_ENV",
    "PlannerSettings",
    "RedisAuthSettings",
    "RouterSettings",
    "SERVICE_SETTINGS",
    "SettingsError",
    "load_settings",
    "process_identity",
]

CONFIG_ENV = "OPSCALE_CONFIG"
SHARED_ENV_PREFIX = "OPSCALE_"
# Settings that every service must see alike: set at the top level of the file or by OPSCALE_<FIELD>.
SHARED_ONLY = ("tiers", "engine")
_NAMESPACE_RE = re.compile(r"^([a-z0-9][a-z0-9_-]{0,31})?$")

S = TypeVar("S", bound="LiveSettings")

# The file `load_settings` was asked to read, for the duration of one construction.
_EXPLICIT_FILE: ContextVar[Path | None] = ContextVar("opscale_settings_file", default=None)


class SettingsError(ValueError):
    """Settings that cannot be used: the message names the field, where it comes from and the value."""


def _hostname() -> str:
    return socket.gethostname() or "localhost"


POD_NAME_ENV = "POD_NAME"
"""Where Kubernetes' downward API puts the pod's name (`fieldRef: metadata.name`), if the manifest says so."""


def process_identity() -> str:
    """A name no other replica of a service has: the pod's name when the downward API gives it (stable
    across container restarts, so a restarted router resumes its own consumers), else host name and
    process id (two replicas on one host differ)."""
    pod = os.environ.get(POD_NAME_ENV, "").strip()
    return pod or f"{_hostname()}-{os.getpid()}"


# -- the YAML file --------------------------------------------------------------------------------------


def _config_path() -> tuple[Path | None, str]:
    explicit = _EXPLICIT_FILE.get()
    if explicit is not None:
        return explicit, "given path"
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    return (Path(from_env), f"{CONFIG_ENV}") if from_env else (None, "")


def read_config_file(path: Path, origin: str = "given path") -> dict[str, Any]:
    """The YAML mapping in `path`; SettingsError naming the file and line when it cannot be used."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SettingsError(f"config file {path} ({origin}) does not exist") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} ({origin}) cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"config file {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: the top level must be a mapping of settings, "
                            f"got {type(data).__name__}")
    return data


class _YamlSource(PydanticBaseSettingsSource):
    """Shared top-level keys of the config file, overridden by the service's own section."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole mapping at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path, origin = _config_path()
        if path is None:
            return {}
        data = read_config_file(path, origin)
        sections = {cls.yaml_section for cls in SERVICE_SETTINGS.values()}
        shared_names = set(LiveSettings.model_fields)
        for key in data:
            if key not in shared_names and key not in sections:
                raise SettingsError(
                    f"config file {path}: unknown top-level key {key!r}; expected a shared setting "
                    f"({', '.join(sorted(shared_names))}) or a service section ({', '.join(sorted(sections))})")
        values = {k: v for k, v in data.items() if k in shared_names}
        section_name: str = getattr(self.settings_cls, "yaml_section", "")
        if section_name:
            section = data.get(section_name)
            if section is not None and not isinstance(section, dict):
                raise SettingsError(f"config file {path}: section {section_name!r} must be a mapping, "
                                    f"got {section!r}")
            for name in SHARED_ONLY:
                if name in (section or {}):
                    raise SettingsError(f"config file {path}: '{section_name}.{name}': '{name}' is shared by every "
                                        f"service; set it at the top level of the file")
            for key, value in (section or {}).items():
                # a section's mapping refines the top level's (grpc_tls: the shared CA at the top, each
                # service's own certificate in its section) rather than replacing it
                top = values.get(key)
                values[key] = {**top, **value} if isinstance(top, dict) and isinstance(value, dict) else value
        return values


class _ServiceEnvSource(EnvSettingsSource):
    """OPSCALE_<SERVICE>_<FIELD>, refusing the shared-only fields."""

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        prefix = self.settings_cls.model_config.get("env_prefix", "") or ""
        for name in SHARED_ONLY:
            if name in values and prefix != SHARED_ENV_PREFIX:
                raise SettingsError(f"{prefix}{name.upper()}: '{name}' is shared by every service; set "
                                    f"{SHARED_ENV_PREFIX}{name.upper()} or the top-level {name!r} of the config file")
        return values


class _SharedEnvSource(EnvSettingsSource):
    """OPSCALE_<FIELD> for the fields every service shares (a service-prefixed variable wins)."""

    def __call__(self) -> dict[str, Any]:
        shared = set(LiveSettings.model_fields)
        return {k: v for k, v in super().__call__().items() if k in shared}


# -- the settings ------------------------------------------------------------------------------------------


class _Files(BaseModel):
    """Paths of PEM files (secrets and keys as paths: a mounted Kubernetes Secret, never inline). They
    are read when the connection is made, where a missing one is named with its field; the settings
    alone stay loadable where the files are not (a manifest checked on a laptop)."""

    model_config = ConfigDict(extra="forbid")


class GrpcTlsSettings(_Files):
    """Transport security of the gRPC control surface (planner -> node-agent Apply/Drain/Status, and the
    router's Route). mTLS unless `insecure` is set, which the local demo must ask for by name: a service
    with neither the files nor `insecure` refuses to start. Certificates from `opscale certs init`."""

    insecure: bool = Field(False, description="Serve and call gRPC in plain text, without any peer "
                           "authentication (the local demo only; `opscale up` warns loudly)")
    ca_file: Path | None = Field(None, description="CA that signed every peer's certificate (PEM)")
    cert_file: Path | None = Field(None, description="This service's certificate (PEM), presented as server and "
                                   "as client")
    key_file: Path | None = Field(None, description="This service's private key (PEM)")
    allowed_clients: list[str] | None = Field(None, description="Identities (certificate CN or DNS SAN) allowed "
                                              "to call this service's gRPC server; unset: the service's default "
                                              "(a node-agent admits only `planner`; the router any certificate "
                                              "the CA signed)")
    server_name: str = Field("", description="Name expected in the server's certificate when calling it, when it "
                             "differs from the host dialled (e.g. `node-agent` for agents reached by pod IP)")

    def require(self, who: str) -> None:
        """Raise SettingsError unless mTLS is configured completely or `insecure` was chosen."""
        if self.insecure:
            return
        missing = [f for f in ("ca_file", "cert_file", "key_file") if getattr(self, f) is None]
        if missing:
            raise SettingsError(f"{who}: grpc_tls.{', grpc_tls.'.join(missing)} not set: give the certificate "
                                f"files (opscale certs init DIR makes a development set; env "
                                f"OPSCALE_GRPC_TLS__CA_FILE, ...) or set grpc_tls.insecure true to run the "
                                f"control surface unencrypted and unauthenticated")


class _ClientTls(_Files):
    """A client's TLS to a server: the CA to verify it by, and a certificate when it verifies clients."""

    tls_ca_file: Path | None = Field(None, description="CA that signed the server's certificate; set: TLS "
                                     "(for Redis with a rediss:// URL)")
    tls_cert_file: Path | None = Field(None, description="Client certificate, when the server verifies clients")
    tls_key_file: Path | None = Field(None, description="Key of the client certificate")

    @model_validator(mode="after")
    def _cert_with_key(self) -> _ClientTls:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class NatsAuthSettings(_ClientTls):
    """Credentials and TLS for NATS. One of user+password, token or creds_file (NATS nkeys/JWT); TLS when
    `tls_ca_file` is given (and a client certificate when the server verifies clients)."""

    user: str = Field("", description="NATS user name")
    password: SecretStr | None = Field(None, description="Password of `user` (prefer env or a mounted Secret)")
    token: SecretStr | None = Field(None, description="Authentication token, in place of user and password")
    creds_file: Path | None = Field(None, description="NATS credentials file (JWT and nkey seed), in place of "
                                    "user and password")

    @model_validator(mode="after")
    def _one_method(self) -> NatsAuthSettings:
        methods = [n for n, on in (("user/password", bool(self.user or self.password)), ("token", self.token),
                                   ("creds_file", self.creds_file)) if on]
        if len(methods) > 1:
            raise ValueError(f"give one way to authenticate, not {' and '.join(methods)}")
        if bool(self.user) != bool(self.password):
            raise ValueError("user and password go together")
        return self


class RedisAuthSettings(_ClientTls):
    """Credentials (AUTH, or an ACL user) and TLS (a `rediss://` URL) for Redis."""

    username: str = Field("", description="ACL user name; empty: the default user (plain AUTH password)")
    password: SecretStr | None = Field(None, description="Password (prefer env or a mounted Secret)")

    @model_validator(mode="after")
    def _username_with_password(self) -> RedisAuthSettings:
        if self.username and self.password is None:
            raise ValueError("username needs a password")
        return self


class LiveSettings(BaseSettings):
    """Settings every live service shares."""

    model_config = SettingsConfigDict(env_prefix=SHARED_ENV_PREFIX, env_nested_delimiter="__", extra="forbid",
                                      validate_default=True)

    yaml_section: ClassVar[str] = ""
    service_name: ClassVar[str] = "opscale"

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server with JetStream")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis (or Valkey) server")
    nats_auth: NatsAuthSettings = Field(default_factory=NatsAuthSettings, description="NATS credentials and TLS")
    redis_auth: RedisAuthSettings = Field(default_factory=RedisAuthSettings, description="Redis credentials and TLS")
    grpc_tls: GrpcTlsSettings = Field(default_factory=GrpcTlsSettings, description="mTLS of the gRPC control "
                                      "surface (node-agents, the router's Route)")
    namespace: str = Field("", description="Prefix of every subject, stream and key; isolates stacks on one server")
    ops_host: str = Field("0.0.0.0", description="Address of the /healthz, /readyz, /metrics server")
    ops_port: int = Field(9100, ge=0, le=65535, description="Port of the ops server (0: any free port)")
    tracing_exporter: Literal["none", "console", "memory"] = Field("none", description="Where finished spans go")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field("INFO", description="Root log level")
    request_timeout_s: float = Field(5.0, gt=0, description="Timeout of each NATS/Redis request")
    stop_timeout_s: float = Field(10.0, gt=0, description="How long shutdown waits for loops to end")
    tiers: TierList = Field(default_factory=default_tier_models, description="Service tiers and their latency "
                            "objectives, the same for every service: the router orders and judges requests by "
                            "them, the aggregator counts SLO attainment, the planner sizes capacity for them")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Settings of the simulated engines "
                                 "(opscale.engine.EngineConfig), the same for every service: the node-agents run "
                                 "engines with them, the planner sizes per-instance capacity for them")

    @field_validator("nats_url")
    @classmethod
    def _nats_scheme(cls, value: str) -> str:
        if not value.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError("must be a nats://host:port URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://host:port/db URL")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE_RE.match(value):
            raise ValueError("must be empty or lower-case letters, digits, '-' and '_' (at most 32, starting "
                             "with a letter or digit)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tls_needs_tls_url(self) -> LiveSettings:
        if (self.redis_auth.tls_ca_file or self.redis_auth.tls_cert_file) and not self.redis_url.startswith("rediss://"):
            raise ValueError("redis_auth has TLS files but redis_url is not rediss://; use a rediss:// URL for TLS")
        return self

    def tier_specs(self) -> dict[str, TierSpec]:
        """The tiers as the service cores take them."""
        return tier_table(self.tiers)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        shared_env = _SharedEnvSource(settings_cls, env_prefix=SHARED_ENV_PREFIX, env_nested_delimiter="__")
        return init_settings, _ServiceEnvSource(settings_cls), shared_env, _YamlSource(settings_cls)


def _service_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_nested_delimiter="__", extra="forbid", validate_default=True)


class TokenizerSettings(BaseModel):
    """One model's tokenizer, with which the router names a prompt's KV blocks as vLLM caches them."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(..., description="The model's Hugging Face tokenizer.json, or the folder holding it (and "
                       "tokenizer_config.json, whose chat template and special tokens are used)")
    chat_template: str = Field("", description="A Jinja chat template, inline or as the path of a .jinja file, as "
                               "vLLM's --chat-template takes it; empty: the folder's chat_template.jinja, else "
                               "tokenizer_config.json's")

    @field_validator("path")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.exists():
            raise ValueError(f"{value} does not exist")
        return value


class AuthSettings(BaseModel):
    """API keys at the router (opscale.routing.tenants). Keys come from `keys_file` (YAML or JSON: a list
    of keys, or a mapping whose `keys` is one; a mounted Kubernetes Secret) and from `keys` (inline, or
    env OPSCALE_ROUTER_AUTH__KEYS as a JSON list, from a Secret). Each secret is hashed while the
    settings are read; only its SHA-256 is kept."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="true: every API request needs a key (the router refuses to "
                                 "start without one); false: anyone who reaches the API may use it (the local "
                                 "demo stack); unset: on when keys are configured")
    keys_file: Path | None = Field(None, description="YAML or JSON file of keys (a list, or a mapping with `keys`)")
    keys: list[ApiKeySpec] = Field(default_factory=list, description="Keys given inline or by environment")
    _file_keys: list[ApiKeySpec] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _read_keys_file(self) -> AuthSettings:
        if self.keys_file is not None:
            self._file_keys = _read_keys_file(self.keys_file)
        seen: set[str] = set()
        for spec in self.key_specs():
            if spec.id in seen:
                raise ValueError(f"key id {spec.id!r} is configured twice (keys_file and keys together)")
            seen.add(spec.id)
        if self.enabled and not seen:
            raise ValueError("enabled is true but no key is configured: give keys_file or keys (env "
                             "OPSCALE_ROUTER_AUTH__KEYS), or set enabled false to serve without keys")
        return self

    @property
    def active(self) -> bool:
        """Whether the API asks for keys: as `enabled` says, or, unset, when keys are configured."""
        return self.enabled if self.enabled is not None else bool(self.key_specs())

    def key_specs(self) -> list[ApiKeySpec]:
        """Every configured key: the file's, then the inline ones."""
        return [*self._file_keys, *self.keys]


def _read_keys_file(path: Path) -> list[ApiKeySpec]:
    """The keys of a YAML or JSON keys file; ValueError naming the file and the entry (never a secret)."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"keys file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"keys file {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"keys file {path}: invalid YAML or JSON{where}") from None
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"keys file {path}: expected a list of keys or a mapping with a `keys` list")
    specs = []
    for index, entry in enumerate(entries):
        name = f"keys file {path}: entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            name += f" (id {entry['id'][:64]!r})"
        if not isinstance(entry, dict):
            raise ValueError(f"{name}: expected a mapping with id and secret or secret_sha256")
        try:
            specs.append(ApiKeySpec.model_validate(entry))
        except ValidationError as exc:
            # the field and the reason, never the value: it may be the secret
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'key'}: {err['msg']}"
                                 for err in exc.errors(include_url=False, include_input=False))
            raise ValueError(f"{name}: {problems}") from None
    return specs


class RouterSettings(LiveSettings):
    """The router process: OpenAI-compatible HTTP API, gRPC Route, request records."""

    model_config = _service_config("OPSCALE_ROUTER_")
    yaml_section: ClassVar[str] = "router"
    service_name: ClassVar[str] = "router"

    ops_port: int = Field(9100, ge=0, le=65535, description="Port of the ops server")
    http_host: str = Field("0.0.0.0", description="Address of the OpenAI-compatible API")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of the OpenAI-compatible API")
    grpc_port: int = Field(50052, ge=0, le=65535, description="Port of the gRPC Router service")
    workers: int = Field(1, ge=0, description="Router processes on this host, each on a core of its own, sharing the "
                         "API and gRPC ports (SO_REUSEPORT: the kernel spreads connections over them); each is a "
                         "router replica of its own (id <router_id>-w<i>, ops port ops_port+i). 0: one per core")
    worker_index: int = Field(-1, ge=-1, description="Set by the parent router for each worker it starts (-1: not a "
                              "worker); not for configuration files")
    http_limits: ServerLimits = Field(default_factory=ServerLimits, description="What the API allows a client: "
                                      "header, body and keep-alive timeouts, header and body sizes")
    tick_s: float = Field(0.5, gt=0, description="Period of the router core's tick (timeouts, load reports)")
    upstream_connect_timeout_s: float = Field(5.0, gt=0, description="Connecting to an engine")
    upstream_read_timeout_s: float = Field(60.0, gt=0, description="Longest silence between streamed chunks")
    upstream_first_token_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait from sending a request to an engine to its first token (its queue "
        "and prefill included); past it the request goes to another instance. It bounds how long a request "
        "waits on an engine cut off by a network partition")
    records_flush_s: float = Field(1.0, gt=0, description="Longest wait before request records are published")
    records_batch_max: int = Field(500, ge=1, description="Records per published batch")
    core: RouterConfig = Field(default_factory=RouterConfig, description="Routing policy settings")
    tokenizers: dict[str, TokenizerSettings] = Field(
        default_factory=dict, description="Per model name: its tokenizer. With prefix caching on, the prompts of a "
        "model named here are tokenized (chats through the chat template, as vLLM does) and their blocks of "
        "engine.prefix_block_tokens token ids hashed, as the node-agents rename vLLM's KV events; other models' "
        "prompts are hashed as text (4 characters a token), as the simulated engines cache them")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys, tenants and their limits")
    access_log: bool = Field(False, description="Log one line per API request (logger opscale.router.access, "
                             "at INFO). Off by default: the request records and /metrics count every request already, and a "
                             "line each is CPU per request on the proxy's hot path")

    @model_validator(mode="after")
    def _unique_router_id(self) -> RouterSettings:
        # Replicas must differ: the id names the router's own durable consumers (each replica needs every
        # heartbeat and plan) and its load in the planner (one replica's must not overwrite another's).
        if "router_id" not in self.core.model_fields_set:
            self.core.router_id = process_identity()
        return self

    @model_validator(mode="after")
    def _default_tiers_exist(self) -> RouterSettings:
        tiers = {t.name for t in self.tiers}
        for spec in self.auth.key_specs():
            if spec.default_tier is not None and spec.default_tier not in tiers:
                raise ValueError(f"auth: key {spec.id!r} has default_tier {spec.default_tier!r}, which is not a "
                                 f"configured tier ({', '.join(sorted(tiers))})")
        return self

    @model_validator(mode="after")
    def _kv_blocks_as_engines(self) -> RouterSettings:
        # kv_aware names a prompt's blocks as the engines cache them: its block size is the engines'
        # prefix_block_tokens (one owner); a different one given to the policy is refused.
        if self.core.policy == "kv_aware":
            params = self.core.policy_params
            given = params.setdefault("block_tokens", self.engine.prefix_block_tokens)
            if given != self.engine.prefix_block_tokens:
                raise ValueError(f"core.policy_params.block_tokens is {given!r} but engine.prefix_block_tokens is "
                                 f"{self.engine.prefix_block_tokens}: leave block_tokens out, the engines' "
                                 f"prefix block size is used")
        return self


class AggregatorSettings(LiveSettings):
    """The aggregator process: request records and heartbeats in, windows out (and to Redis)."""

    model_config = _service_config("OPSCALE_AGGREGATOR_")
    yaml_section: ClassVar[str] = "aggregator"
    service_name: ClassVar[str] = "aggregator"

    ops_port: int = Field(9101, ge=0, le=65535, description="Port of the ops server")
    tick_s: float = Field(1.0, gt=0, description="Period of the aggregator core's tick")
    core: AggregatorConfig = Field(default_factory=AggregatorConfig, description="Windowing settings")


class ForecasterSettings(LiveSettings):
    """The forecaster process: windows in, forecasts out."""

    model_config = _service_config("OPSCALE_FORECASTER_")
    yaml_section: ClassVar[str] = "forecaster"
    service_name: ClassVar[str] = "forecaster"

    ops_port: int = Field(9102, ge=0, le=65535, description="Port of the ops server")
    tick_s: float = Field(5.0, gt=0, description="Period of the forecaster core's tick")
    rebuild_s: float = Field(21_600.0, ge=0, description="On start, the windows of this many past seconds are "
                             "read back from the stream to rebuild the series, so a restart loses none")
    core: ForecasterConfig = Field(default_factory=ForecasterConfig, description="Forecasting settings")


class LocalCloudSettings(BaseModel):
    """The `local` actuator (opscale.runtime.live.cloud_local): a "VM" is a node-agent process the planner
    starts on its own host, in the planner's NATS, Redis and namespace, each on free ports."""

    model_config = ConfigDict(extra="forbid")

    config: Path | None = Field(None, description="Settings file the node-agents read (OPSCALE_CONFIG); default: "
                                "the planner's OPSCALE_CONFIG, which they inherit")
    env: dict[str, SecretStr] = Field(default_factory=dict, description="Environment the node-agents get besides "
                                      "the planner's (their certificates, OPSCALE_NODE_AGENT_* settings); values "
                                      "may be secrets and are never logged")
    drain_s: float = Field(10.0, gt=0, description="A node-agent given back drains its instances for at most "
                           "this long after SIGTERM (its stop_drain_s)")
    grace_s: float = Field(15.0, gt=0, description="A node-agent given SIGTERM (to drain) is killed if still "
                           "running this long after")
    log_dir: Path | None = Field(None, description="Each node-agent's output goes to <log_dir>/<vm id>.log; "
                                 "unset: discarded")
    name_prefix: str = Field("local-vm", min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$",
                             description="VM ids, and the agents' ids, are <name_prefix>-<n>-<region>-<sku>")

    @model_validator(mode="after")
    def _drain_within_grace(self) -> LocalCloudSettings:
        if self.drain_s >= self.grace_s:
            raise ValueError(f"drain_s ({self.drain_s}) must be shorter than grace_s ({self.grace_s}), or a draining "
                             "agent is killed")
        return self


class CloudSettings(BaseModel):
    """Whether and how the planner acts on its plans' VM counts (`Plan.vm_counts`, from a policy that buys
    VMs: sageserve_mip, opscale, static with `vms`). `none`: the fleet is fixed, as before. Otherwise the
    leading planner calls the actuator's `ensure` per (region, SKU, purchase) for each plan that changes its
    count, and for every one each `poll_s` (before the first plan that names VM counts: `initial_vms`), and tells its policy the cloud's GPU quotas
    (`Observation.gpu_quotas`) from the region catalogue, as the simulator does with `vms:` on."""

    model_config = ConfigDict(extra="forbid")

    actuator: Literal["none", "local", "k8s"] = Field("none", description="VM back end: none (a fixed fleet), "
                                                      "local (node-agent processes on this host) or k8s (Karpenter "
                                                      "NodePools / Cluster API MachineDeployments)")
    poll_s: float = Field(5.0, gt=0, description="How often the leader reads the cloud's events and brings "
                          "every pool to the current plan's count again (level-triggered)")
    call_timeout_s: float = Field(30.0, gt=0, description="Deadline of one actuator call")
    regions_file: Path | None = Field(None, description="Region catalogue with the account's quotas "
                                      "(regions.yaml layout); unset: the built-in one")
    stand_ins: dict[str, str] = Field(default_factory=dict, description="Fleet region -> the catalogue region "
                                      "whose offers (quotas) it takes, for a region the catalogue does not know")
    quotas: dict[str, dict[str, int]] = Field(default_factory=dict, description="Region -> SKU -> GPUs the "
                                              "account may hold there, replacing the catalogue's")
    initial_vms: list[VmCount] = Field(default_factory=list, description="The VMs to hold until a plan names "
                                       "VM counts: the fleet the planner starts with (the planner plans only "
                                       "once a host has reported); empty: none")
    local: LocalCloudSettings = Field(default_factory=LocalCloudSettings, description="The local actuator")
    k8s: K8sSettings = Field(default_factory=K8sSettings, description="The Kubernetes actuator (also from "
                             "OPSCALE_K8S_* variables when this section is not given)")

    @model_validator(mode="after")
    def _quotas_known(self) -> CloudSettings:
        if self.regions_file is None:  # the built-in catalogue: checked now, a file when the planner starts
            self.gpu_quotas()
        self.initial()
        return self

    def initial(self) -> dict[tuple[str, str, str], int]:
        """`initial_vms` as `Plan.vm_counts` holds them."""
        return vm_count_table(self.initial_vms, "cloud.initial_vms")

    def gpu_quotas(self) -> dict[tuple[str, str], int]:
        """(region, SKU) -> GPUs the account may hold: the catalogue's regions and the stand-ins, with
        `quotas` over the catalogue's (opscale.cloud.account_catalog, as the simulator's `vms:` block)."""
        base = load_regions(self.regions_file)
        return gpu_quotas(account_catalog(base, [*base.names, *self.stand_ins], stand_ins=self.stand_ins,
                                          quotas=self.quotas, field="cloud"))


class PlannerSettings(LiveSettings):
    """The planner process: one active instance at a time, chosen by a lease in Redis."""

    model_config = _service_config("OPSCALE_PLANNER_")
    yaml_section: ClassVar[str] = "planner"
    service_name: ClassVar[str] = "planner"

    ops_port: int = Field(9103, ge=0, le=65535, description="Port of the ops server")
    tick_s: float = Field(1.0, gt=0, description="Period of the planner core's tick")
    lease_name: str = Field("planner", min_length=1, description="Redis lease that elects the active planner")
    # A standby takes over at most lease_ttl_s + lease_renew_s after the leader dies (8 s by default)
    lease_ttl_s: float = Field(6.0, gt=0, description="A lease not renewed for this long lapses")
    lease_renew_s: float = Field(2.0, gt=0, description="How often the holder renews and a standby tries to take "
                                 "it (well under the TTL)")
    holder_id: str = Field(default_factory=process_identity, min_length=1,
                           description="This planner's identity in the lease (default: the pod name, else "
                           "host name and process id)")
    agent_call_timeout_s: float = Field(5.0, gt=0, description="Deadline of each gRPC call to a node-agent")
    policy: str = Field("reactive", description="Planning policy name (opscale.planning.registry)")
    policy_params: dict[str, Any] = Field(default_factory=dict, description="Parameters of the planning policy")
    profiles_dir: Path | None = Field(None, description="Folder of measured operator profiles (vidur layout) for "
                                      "capacity estimates; without it the calibrated roofline model is used")
    deployments: list[DeploymentSpec] = Field(
        default_factory=lambda: [DeploymentSpec(model="Llama-3-8B", sku="H100-80GB", tp=1, min_replicas=1,
                                                max_replicas=8)],
        description="Models to serve: SKU, tensor-parallel degree, regions and replica bounds")
    core: PlannerConfig = Field(default_factory=PlannerConfig, description="Planning loop settings")
    cloud: CloudSettings = Field(default_factory=CloudSettings, description="Acting on the plans' VM counts "
                                 "(off by default: a fixed fleet)")

    @model_validator(mode="after")
    def _renew_before_lapse(self) -> PlannerSettings:
        if self.lease_renew_s >= self.lease_ttl_s:
            raise ValueError(f"lease_renew_s ({self.lease_renew_s}) must be shorter than lease_ttl_s "
                             f"({self.lease_ttl_s}), or the lease lapses between renewals")
        return self


class OpenAIEngineSettings(BaseModel):
    """One OpenAI-compatible server (vLLM, SGLang, ...) that a node-agent fronts as an engine."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(..., pattern=r"^https?://", description="The server's base URL, e.g. http://127.0.0.1:8001 "
                          "(with or without /v1)")
    served_model_name: str = Field(..., min_length=1, description="The model name the server answers to; instances "
                                   "of this model placed on the agent are bound to this server")
    role: Role = Field(Role.UNIFIED, description="What the server was started to do: unified (whole requests), or "
                       "prefill / decode for a server the operator started in P/D mode with its own KV connector "
                       "(vLLM --kv-transfer-config with NixlConnector); only instances of this role bind to it, "
                       "and heartbeats report them in that role's pool")
    api_key: str = Field("", description="Bearer token sent to the server; empty: none")
    metrics_path: str = Field("/metrics", description="Prometheus metrics of the server (vLLM: KV cache usage, "
                              "queue); empty: not read")
    kv_events_endpoint: str = Field("", pattern=r"^$|^(tcp|ipc|inproc)://", description="ZMQ endpoint of the "
                                    "server's KV event publisher (vLLM --kv-events-config's endpoint, as this host "
                                    "reaches it, e.g. tcp://127.0.0.1:5557); the node-agent forwards its events to "
                                    "the routers (engine.kv_events on). Empty: none read")
    kv_events_topic: str = Field("", description="Topic of the server's KV events (vLLM's kv-events-config topic; "
                                 "empty: all)")


class NodeAgentSettings(LiveSettings):
    """A node-agent process on one GPU host."""

    model_config = _service_config("OPSCALE_NODE_AGENT_")
    yaml_section: ClassVar[str] = "node_agent"
    service_name: ClassVar[str] = "node_agent"

    ops_port: int = Field(9104, ge=0, le=65535, description="Port of the ops server")
    agent_id: str = Field(default_factory=_hostname, min_length=1, description="Unique name of this host's agent")
    region: str = Field("local", min_length=1, description="Region of this host")
    sku: str = Field("H100-80GB", min_length=1, description="GPU SKU of this host (see opscale/data/skus.yaml)")
    gpus: int = Field(8, ge=1, description="GPUs on this host")
    grpc_host: str = Field("0.0.0.0", description="Address of the NodeAgent gRPC server")
    grpc_port: int = Field(50051, ge=0, le=65535, description="Port of the NodeAgent gRPC server")
    advertise_host: str = Field("", description="Host name others use to reach this agent (default: hostname)")
    http_port: int = Field(9000, ge=0, le=65535, description="Port of the engines' OpenAI-compatible server")
    advertise_http_port: int | None = Field(None, ge=1, le=65535, description="Port others use to reach the "
                                            "engines' server when it differs from the bound one (a proxy or "
                                            "NAT in front); default the bound http_port")
    heartbeat_interval_s: float = Field(2.0, gt=0, description="Period of heartbeats")
    stop_drain_s: float = Field(0.0, ge=0, description="> 0: on SIGTERM every instance drains first, as under a "
                                "spot notice, for at most this long before the engines stop (a host going away: a "
                                "VM given back, a node drained; the local VM actuator sets it); 0: the engines stop "
                                "at once and a restarted agent takes them back")
    tick_s: float = Field(0.5, gt=0, description="Period of the node-agent core's tick")
    load_time_scale: float = Field(1.0, gt=0, description="Multiplies the modelled model-load time of the "
                                   "simulated engines (e.g. 0.05 for a quick local stack)")
    weight_cache_gb: float = Field(512.0, ge=0, description="Simulated engines: host memory that keeps model "
                                   "weights after an instance stops (a later start of the model loads warm), "
                                   "and where a plan's pre-staged weights go")
    profiles_dir: Path | None = Field(None, description="Folder of measured operator profiles (vidur layout); "
                                      "without it the calibrated roofline model is used")
    engine_backend: Literal["sim", "openai"] = Field(
        "sim", description="sim: the simulated engine paced in real time; openai: the OpenAI-compatible servers "
        "of `openai_engines` (vLLM, SGLang) running on this host")
    openai_engines: list[OpenAIEngineSettings] = Field(
        default_factory=list, description="With engine_backend openai: the servers, one per instance")
    engine_health_interval_s: float = Field(2.0, gt=0, description="openai backend: period of health and "
                                            "metrics checks of each server")
    kv_events_batch_max: int = Field(512, ge=1, description="With engine.kv_events on: most KV events in one "
                                     "published batch (an instance's events of one tick go out in as many "
                                     "batches as need be)")
    s0: str = Field("", description="Leaf switch of this host (HeteroScale's S0), reported in heartbeats; '' "
                    "when not configured")
    s1: str = Field("", description="Mini-pod switch above the leaf (S1); needs s0")
    s2: str = Field("", description="Big-pod switch above the mini-pod (S2); needs s1")
    transfer: TransferParams = Field(
        default_factory=TransferParams, description="Simulated engines: bandwidth and latency of each network "
        "path, which price the KV transfer of a disaggregated request into a decode instance here (a "
        "scenario's `transfer`)")
    rdma_priority: RdmaPriority = Field(RdmaPriority.LOW, description="Priority of this host's RDMA subgroup "
                                        "(low, medium, high), reported in heartbeats: placement uses high-priority "
                                        "hosts last and frees them first")

    @model_validator(mode="after")
    def _switch_chain(self) -> NodeAgentSettings:
        # A tier above an unknown one locates nothing: name the gap rather than report half a position.
        for tier, below in (("s1", "s0"), ("s2", "s1")):
            if getattr(self, tier) and not getattr(self, below):
                raise ValueError(f"{tier} is {getattr(self, tier)!r} but {below} is not set; give the switches "
                                 f"from the leaf up (s0, s1, s2)")
        return self

    def address(self, bound_port: int | None = None) -> str:
        """host:port others use to reach this agent's gRPC server."""
        host = self.advertise_host or _hostname()
        return f"{host}:{bound_port if bound_port is not None else self.grpc_port}"

    def placement(self) -> Placement:
        """Where this host sits in the network (the agent id names the host), for KV hand-offs."""
        return Placement(self.region, self.s0, self.agent_id, self.s1, self.s2)

    def core_config(self, bound_port: int | None = None) -> NodeAgentConfig:
        """The node-agent core's config derived from these settings (one owner per fact)."""
        return NodeAgentConfig(agent_id=self.agent_id, region=self.region, sku=self.sku, gpus=self.gpus,
                               address=self.address(bound_port), heartbeat_interval_s=self.heartbeat_interval_s,
                               s0=self.s0, s1=self.s1, s2=self.s2, rdma_priority=self.rdma_priority)


SERVICE_SETTINGS: dict[str, type[LiveSettings]] = {
    "router": RouterSettings,
    "aggregator": AggregatorSettings,
    "forecaster": ForecasterSettings,
    "planner": PlannerSettings,
    "node_agent": NodeAgentSettings,
}
"""Settings class per service name (as `opscale serve SERVICE` spells it)."""


def _describe(cls: type[LiveSettings], loc: tuple[Any, ...]) -> str:
    if not loc:
        return f"{cls.__name__}"
    dotted = ".".join(str(p) for p in loc)
    if loc[0] in SHARED_ONLY:
        return f"{dotted!r} (env {SHARED_ENV_PREFIX}{str(loc[0]).upper()} or the top-level {dotted!r} in the config file)"
    prefix = cls.model_config.get("env_prefix", SHARED_ENV_PREFIX) or ""
    env = prefix + "__".join(str(p).upper() for p in loc)
    where = [f"env {env}"]
    if cls is not LiveSettings and loc[0] in LiveSettings.model_fields:
        where.append(f"env {SHARED_ENV_PREFIX}{str(loc[0]).upper()}")
    where.append(f"'{cls.yaml_section}.{dotted}' in the config file" if cls.yaml_section
                 else f"'{dotted}' in the config file")
    return f"{dotted!r} ({' or '.join(where)})"


def _may_hold_secret(loc: tuple[Any, ...], value: Any) -> bool:
    """Whether a rejected value must not be echoed: the whole settings (a check across fields), or
    anything under `auth`, `nats_auth`, `redis_auth`, `cloud.k8s.token` or `cloud.local.env` but a number
    or a flag (a key entry, a password,
    or a mapping holding one). A server URL is shown through `redact_url` (see `_shown`)."""
    if not loc:
        return True
    # the cloud section's secrets: the Kubernetes token, the environment given to local node-agents
    secret = loc[0] in ("auth", "nats_auth", "redis_auth") or (
        loc[0] == "cloud" and ("token" in loc or "env" in loc or isinstance(value, dict)))
    return secret and not isinstance(value, int | float | bool | type(None))


def _shown(value: Any) -> Any:
    """A rejected value as an error may print it: a string with credentials in it (a server URL) masked."""
    return redact_url(value) if isinstance(value, str) and "@" in value else value


def load_settings(cls: type[S], config_path: str | Path | None = None, **overrides: Any) -> S:
    """Build `cls` from overrides, environment, the config file and defaults (see the module docstring).

    `config_path` takes precedence over OPSCALE_CONFIG. Raises SettingsError with one line per problem.
    """
    token = _EXPLICIT_FILE.set(Path(config_path) if config_path is not None else None)
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            value = err.get("input")
            shown = "" if err.get("type") == "missing" or _may_hold_secret(loc, value) else f"; got {_shown(value)!r}"
            lines.append(f"{_describe(cls, loc)}: {err.get('msg')}{shown}")
        raise SettingsError(f"invalid {cls.service_name} settings:\n  " + "\n  ".join(lines)) from None
    except PydanticSettingsError as exc:
        # Raised by pydantic-settings when an environment value cannot be parsed at all (bad JSON for a
        # nested field); its message names the field, so name the variables and values too.
        match = re.search(r'field "(\w+)"', str(exc))
        detail = str(exc)
        if match:
            field = match.group(1)
            names = [f"{cls.model_config.get('env_prefix', SHARED_ENV_PREFIX)}{field.upper()}",
                     f"{SHARED_ENV_PREFIX}{field.upper()}"]
            # the variable is named; its value is shown unless it may hold a secret (router.auth's keys)
            found = [n if _may_hold_secret((field,), os.environ[n]) else f"{n}={os.environ[n]!r}"
                     for n in dict.fromkeys(names) if n in os.environ]
            detail = f"{field!r}: the environment value is not valid JSON" + (f" ({', '.join(found)})" if found else "")
        raise SettingsError(f"invalid {cls.service_name} settings: {detail}") from None
    finally:
        _EXPLICIT_FILE.reset(token)
