"""Bus subjects. One place names them so the two runtimes and every service agree.

Pattern: `opscale.<kind>.<region>.<...>`. Subscribers use the wildcard forms.
"""

from __future__ import annotations

PREFIX = "opscale"


def heartbeat(region: str, agent_id: str) -> str:
    return f"{PREFIX}.heartbeat.{region}.{_token(agent_id)}"


def records(region: str) -> str:
    return f"{PREFIX}.records.{region}"


def router_load(region: str) -> str:
    return f"{PREFIX}.routerload.{region}"


def windows(region: str, model: str) -> str:
    return f"{PREFIX}.windows.{region}.{_token(model)}"


def pool_utilisation(region: str, model: str) -> str:
    return f"{PREFIX}.poolutil.{region}.{_token(model)}"


def forecasts(region: str, model: str) -> str:
    return f"{PREFIX}.forecasts.{region}.{_token(model)}"


def kv_events(region: str, agent_id: str) -> str:
    return f"{PREFIX}.kvevents.{region}.{_token(agent_id)}"


def plans() -> str:
    return f"{PREFIX}.plans.global"


HEARTBEATS_ALL = f"{PREFIX}.heartbeat.>"
RECORDS_ALL = f"{PREFIX}.records.>"
ROUTER_LOAD_ALL = f"{PREFIX}.routerload.>"
WINDOWS_ALL = f"{PREFIX}.windows.>"
POOL_UTILISATION_ALL = f"{PREFIX}.poolutil.>"
FORECASTS_ALL = f"{PREFIX}.forecasts.>"
PLANS_ALL = f"{PREFIX}.plans.>"
KV_EVENTS_ALL = f"{PREFIX}.kvevents.>"


def kind_of(subject: str) -> str:
    """`opscale.heartbeat.eu.agent-1` -> `heartbeat`."""
    parts = subject.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == PREFIX else ""


def _token(name: str) -> str:
    """Subject tokens cannot hold '.', '*', '>' or whitespace."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
