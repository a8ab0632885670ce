"""NATS and Redis as a secured deployment runs them, started by a test: deploy/nats.conf as shipped
(TLS, one user per service with its subject permissions) and a Redis with a password and an ACL user."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from opscale.runtime.live.local_servers import LocalServer, free_port, start_nats, start_redis
from opscale.runtime.live.pki import IssuedFiles

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SERVICES = ("planner", "router", "aggregator", "forecaster", "node-agent")
NATS_PASSWORDS = {s: f"pw-{s}-Zq8{i}x" for i, s in enumerate(SERVICES)}
REDIS_PASSWORD = "default-Pw-4jX9"
REDIS_ACL_USER, REDIS_ACL_PASSWORD = "opscale", "acl-Pw-Qm27"


def start_secured_nats(pki: IssuedFiles, folder: Path) -> LocalServer:
    """deploy/nats.conf as shipped, with the container's paths and ports replaced by this run's."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEPLOY / "nats-auth.conf", folder / "nats-auth.conf")
    conf = (DEPLOY / "nats.conf").read_text()
    conf = conf.replace("/etc/opscale-tls", str(pki.ca_cert.parent)).replace("/data/jetstream", str(folder / "js"))
    conf = re.sub(r"^http_port:.*$", f"http_port: {free_port()}", conf, flags=re.M)
    (folder / "nats.conf").write_text(conf)
    env = {f"OPSCALE_NATS_{s.upper().replace('-', '_')}_PASSWORD": pw for s, pw in NATS_PASSWORDS.items()}
    return start_nats(config=folder / "nats.conf", env=env)


def start_secured_redis() -> LocalServer:
    return start_redis(extra_args=["--requirepass", REDIS_PASSWORD, "--user", REDIS_ACL_USER, "on",
                                   f">{REDIS_ACL_PASSWORD}", "~*", "&*", "+@all"])
