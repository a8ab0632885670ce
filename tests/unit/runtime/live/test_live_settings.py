"""Process settings: defaults, the YAML file and its sections, environment precedence, and errors that
name the field, where it is set and the rejected value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opscale.model import TierSpec
from opscale.runtime.live.settings import (
    CONFIG_ENV,
    SERVICE_SETTINGS,
    AggregatorSettings,
    NodeAgentSettings,
    PlannerSettings,
    RouterSettings,
    SettingsError,
    load_settings,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own OPSCALE_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("OPSCALE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "opscale.yaml"
    path.write_text(text)
    return path


def test_defaults_of_every_service() -> None:
    ports = {name: load_settings(cls).ops_port for name, cls in SERVICE_SETTINGS.items()}
    assert len(set(ports.values())) == len(ports)  # services on one host do not collide by default
    router = load_settings(RouterSettings)
    assert (router.nats_url, router.redis_url, router.http_port) == (
        "nats://127.0.0.1:4222", "redis://127.0.0.1:6379/0", 8000)
    assert router.namespace == "" and router.tracing_exporter == "none" and router.log_level == "INFO"
    agent = load_settings(NodeAgentSettings)
    assert agent.grpc_port == 50051 and agent.gpus == 8 and agent.agent_id


def test_file_sections_override_shared_keys_and_env_overrides_the_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
nats_url: nats://nats:4222
namespace: staging
ops_port: 9999
router:
  http_port: 8080
  ops_port: 9000
  core: {policy: jsq_tokens, max_attempts: 2}
planner:
  lease_ttl_s: 30
""")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    monkeypatch.setenv("OPSCALE_NATS_URL", "nats://shared-env:4222")
    monkeypatch.setenv("OPSCALE_ROUTER_CORE__MAX_ATTEMPTS", "5")
    router = load_settings(RouterSettings)
    assert router.nats_url == "nats://shared-env:4222"  # shared env beats the file
    assert (router.namespace, router.http_port, router.ops_port) == ("staging", 8080, 9000)
    assert (router.core.policy, router.core.max_attempts) == ("jsq_tokens", 5)
    planner = load_settings(PlannerSettings)
    assert (planner.lease_ttl_s, planner.ops_port) == (30.0, 9999)
    monkeypatch.setenv("OPSCALE_PLANNER_NATS_URL", "nats://planner-env:4222")
    assert load_settings(PlannerSettings).nats_url == "nats://planner-env:4222"  # service env beats shared
    assert load_settings(PlannerSettings, nats_url="nats://arg:1").nats_url == "nats://arg:1"  # arguments win


def test_explicit_path_beats_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "absent.yaml"))
    path = write(tmp_path, "router: {http_port: 8123}\n")
    assert load_settings(RouterSettings, path).http_port == 8123
    with pytest.raises(SettingsError, match=f"absent.yaml \\({CONFIG_ENV}\\) does not exist"):
        load_settings(RouterSettings)


def test_bad_env_value_names_variable_field_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSCALE_ROUTER_HTTP_PORT", "eighty")
    with pytest.raises(SettingsError) as err:
        load_settings(RouterSettings)
    message = str(err.value)
    assert "'http_port'" in message and "OPSCALE_ROUTER_HTTP_PORT" in message and "got 'eighty'" in message


def test_bad_file_values_and_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"'router.htp_port' in the config file\): Extra inputs"):
        load_settings(RouterSettings, write(tmp_path, "router: {htp_port: 1}\n"))
    with pytest.raises(SettingsError, match="unknown top-level key 'routr'"):
        load_settings(RouterSettings, write(tmp_path, "routr: {http_port: 1}\n"))
    with pytest.raises(SettingsError, match=r"'namespace'.*got 'Prod Stack'"):
        load_settings(RouterSettings, write(tmp_path, "namespace: Prod Stack\n"))
    with pytest.raises(SettingsError, match=r"'nats_url'.*must be a nats://host:port URL; got 'localhost:4222'"):
        load_settings(RouterSettings, write(tmp_path, "nats_url: localhost:4222\n"))
    with pytest.raises(SettingsError, match=r"'core.max_attempts'.*greater than or equal to 1; got 0"):
        load_settings(RouterSettings, write(tmp_path, "router: {core: {max_attempts: 0}}\n"))
    with pytest.raises(SettingsError, match="section 'router' must be a mapping"):
        load_settings(RouterSettings, write(tmp_path, "router: 8080\n"))
    with pytest.raises(SettingsError, match="top level must be a mapping"):
        load_settings(RouterSettings, write(tmp_path, "- a\n- b\n"))


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="invalid YAML at line 3"):
        load_settings(RouterSettings, write(tmp_path, "router:\n  http_port: 1\n   bad: [\n"))


def test_bad_json_in_a_nested_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSCALE_ROUTER_CORE", "{not json")
    with pytest.raises(SettingsError, match=r"'core': the environment value is not valid JSON \(OPSCALE_ROUTER_CORE="):
        load_settings(RouterSettings)


def test_cross_field_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"lease_renew_s \(20.0\) must be shorter than lease_ttl_s \(6.0\)"):
        load_settings(PlannerSettings, lease_renew_s=20.0)
    with pytest.raises(SettingsError, match="engine.max_num_seqs"):
        load_settings(NodeAgentSettings, engine={"max_num_seqs": 0})
    monkeypatch.setenv("OPSCALE_LOG_LEVEL", "debug")
    assert load_settings(RouterSettings).log_level == "DEBUG"


def test_node_agent_settings_derive_the_core_config() -> None:
    agent = load_settings(NodeAgentSettings, agent_id="gpu-7", region="eu", sku="A100-80GB", gpus=4,
                          advertise_host="10.0.0.7")
    core = agent.core_config(bound_port=50999)
    assert (core.agent_id, core.region, core.sku, core.gpus) == ("gpu-7", "eu", "A100-80GB", 4)
    assert core.address == "10.0.0.7:50999"
    assert core.heartbeat_interval_s == agent.heartbeat_interval_s


def test_one_tier_table_in_the_file_reaches_every_service(tmp_path: Path) -> None:
    path = write(tmp_path, """
tiers:
  - {name: chat, ttft_slo_s: 1.5, tbt_slo_s: 0.05}
  - {name: bulk, ttft_slo_s: 900, tbt_slo_s: 2.0, deadline_s: 7200, priority: 1}
router: {http_port: 8080}
""")
    expected = {"chat": TierSpec("chat", 1.5, 0.05), "bulk": TierSpec("bulk", 900.0, 2.0, 7200.0, 1)}
    for cls in SERVICE_SETTINGS.values():
        assert load_settings(cls, path).tier_specs() == expected


def test_tiers_from_the_shared_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSCALE_TIERS", '[{"name": "chat", "ttft_slo_s": 1.0, "tbt_slo_s": 0.05}]')
    assert load_settings(PlannerSettings).tier_specs() == {"chat": TierSpec("chat", 1.0, 0.05)}


@pytest.mark.parametrize("name, value", [("tiers", '[{"name": "chat", "ttft_slo_s": 1.0, "tbt_slo_s": 0.05}]'),
                                         ("engine", '{"max_num_seqs": 32}')])
def test_tiers_and_engine_are_shared_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                          value: str) -> None:
    section = write(tmp_path, f"planner:\n  {name}: {value}\n")
    with pytest.raises(SettingsError, match=rf"'planner.{name}': '{name}' is shared by every service; set it at "
                                            r"the top level"):
        load_settings(PlannerSettings, section)
    monkeypatch.setenv(f"OPSCALE_ROUTER_{name.upper()}", value)
    with pytest.raises(SettingsError, match=f"OPSCALE_ROUTER_{name.upper()}: '{name}' is shared by every service; "
                                            f"set OPSCALE_{name.upper()}"):
        load_settings(RouterSettings)


def test_the_planner_sizes_for_the_engines_the_agents_run(tmp_path: Path) -> None:
    path = write(tmp_path, "engine: {max_num_seqs: 32, gpu_memory_utilization: 0.8}\n")
    planner, agent = load_settings(PlannerSettings, path), load_settings(NodeAgentSettings, path)
    assert planner.engine == agent.engine and planner.engine.max_num_seqs == 32


def test_bad_tiers_are_named_with_where_to_set_them(tmp_path: Path) -> None:
    path = write(tmp_path, "tiers: [{name: chat, ttft_slo_s: -1, tbt_slo_s: 0.05}, {ttft_slo_s: 1, tbt_slo_s: 1}]\n")
    with pytest.raises(SettingsError) as err:
        load_settings(AggregatorSettings, path)
    message = str(err.value)
    assert ("'tiers.0.ttft_slo_s' (env OPSCALE_TIERS or the top-level 'tiers.0.ttft_slo_s' in the config file): "
            "Input should be greater than 0; got -1") in message
    assert "'tiers.1.name' (env OPSCALE_TIERS or the top-level 'tiers.1.name' in the config file): Field required" \
        in message
    duplicate = write(tmp_path, "tiers: [{name: chat, ttft_slo_s: 1, tbt_slo_s: 1}, {name: chat, ttft_slo_s: 2, "
                                "tbt_slo_s: 1}]\n")
    with pytest.raises(SettingsError, match="tier 'chat' appears twice"):
        load_settings(RouterSettings, duplicate)


def test_the_planner_has_no_tbt_budget_of_its_own(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"'planner.tbt_budget_s' in the config file\): Extra inputs"):
        load_settings(PlannerSettings, write(tmp_path, "planner: {tbt_budget_s: 0.1}\n"))


def test_kv_aware_routing_and_kv_events_come_from_the_same_settings_objects(tmp_path: Path) -> None:
    # The live stack reads the simulator's own objects: EngineConfig (prefix caching, KV events, host
    # tier) at the top level, RouterConfig under router.core.
    path = write(tmp_path, """
engine: {enable_prefix_caching: true, kv_events: true, host_kv_cache_gb: 64}
router: {core: {policy: kv_aware, policy_params: {decode_weight: 0.5, max_blocks: 200000}}}
""")
    router, agent = load_settings(RouterSettings, path), load_settings(NodeAgentSettings, path)
    assert agent.engine.kv_events and agent.engine.host_kv_cache_gb == 64
    assert router.core.policy == "kv_aware" and router.core.policy_params["decode_weight"] == 0.5
    bad = write(tmp_path, "engine: {kv_events: true}\n")
    with pytest.raises(SettingsError, match="kv_events"):
        load_settings(NodeAgentSettings, bad)


def test_kv_aware_takes_its_block_size_from_the_engines() -> None:
    engine = {"enable_prefix_caching": True, "prefix_block_tokens": 64}
    settings = RouterSettings(engine=engine, core={"policy": "kv_aware"})
    assert settings.core.policy_params["block_tokens"] == 64
    with pytest.raises(ValueError, match=r"block_tokens is 512 but engine.prefix_block_tokens is 64"):
        RouterSettings(engine=engine, core={"policy": "kv_aware", "policy_params": {"block_tokens": 512}})


def test_each_router_replica_has_its_own_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from opscale.runtime.live.settings import POD_NAME_ENV

    monkeypatch.delenv(POD_NAME_ENV, raising=False)
    router = load_settings(RouterSettings)
    assert router.core.router_id == f"{socket.gethostname()}-{os.getpid()}"  # two on one host differ
    assert load_settings(PlannerSettings).holder_id == router.core.router_id
    monkeypatch.setenv(POD_NAME_ENV, "opscale-router-7d9f-x2k4q")  # the downward API's pod name
    assert load_settings(RouterSettings).core.router_id == "opscale-router-7d9f-x2k4q"
    assert load_settings(PlannerSettings).holder_id == "opscale-router-7d9f-x2k4q"
    # a name given is kept
    assert load_settings(RouterSettings, core={"router_id": "edge-1"}).core.router_id == "edge-1"
