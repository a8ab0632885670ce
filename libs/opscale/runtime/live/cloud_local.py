"""The local VM actuator: a "VM" is a node-agent process on this host.

`ensure(region, sku, purchase, count)` starts node-agent processes the way `opscale up` does
(`python -m opscale.cli serve node-agent`, identity and settings through `OPSCALE_NODE_AGENT_*`
environment variables; ports 0, so each agent binds free ports and advertises what it bound) or stops
surplus ones gracefully: SIGTERM, on which the agent drains its engines, then SIGKILL only if it is still
running `grace_s` later. The region, SKU and GPU count are the agent's settings; the purchase option is
bookkeeping only (a local process is never preempted).

A local VM is RUNNING as soon as its process is alive (a process boots at once; whether its engines
are ready is the agent's own heartbeat, which the planner reads), TERMINATING from SIGTERM until it
exits, and TERMINATED when it has exited (on its own: the exit code is the reason). Starting and
signalling do not block; `poll_events` reaps exited processes. It runs before or beside an event loop
without blocking it, so a live planner may call it directly or through `opscale.cloud.AsyncAdapter`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from opscale.cloud import CloudEvent, EnsureResult, choose_release, diff_events, pool_vms
from opscale.cloud.actuator import check_count
from opscale.model import Purchase, Vm, VmState
from opscale.perf import Catalog, default_catalog

log = logging.getLogger(__name__)

NODE_AGENT_COMMAND = (sys.executable, "-m", "opscale.cli", "serve", "node-agent")
ENV_PREFIX = "OPSCALE_NODE_AGENT_"


@dataclass(slots=True)
class _Process:
    vm: Vm
    proc: subprocess.Popen[bytes]
    kill_at_s: float | None = None  # set with SIGTERM: when SIGKILL follows if still alive
    exit_reason: str = ""


@dataclass(slots=True)
class LocalProcessActuator:
    """Node-agent processes as VMs. `command` and `base_env` default to `opscale up`'s; `config` is the
    shared settings file (OPSCALE_CONFIG) the agents read."""

    command: Sequence[str] = NODE_AGENT_COMMAND
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    config: Path | None = None
    grace_s: float = 15.0
    name_prefix: str = "local-vm"
    skus: Catalog = field(default_factory=default_catalog)
    log_dir: Path | None = None  # each agent's stdout and stderr go to <log_dir>/<vm_id>.log when set
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen
    _procs: dict[str, _Process] = field(default_factory=dict, init=False)
    _seen: dict[str, Vm] = field(default_factory=dict, init=False)
    _count: int = field(default=0, init=False)

    def ensure(self, region: str, sku: str, purchase: Purchase, count: int, now_s: float) -> EnsureResult:
        check_count(count)
        spec = self.skus.sku(sku)  # an unknown SKU fails here, naming the known ones
        live = [v for v in pool_vms(self.current(now_s), region, spec.name, purchase) if v.live]
        started = tuple(self._start(region, spec.name, spec.gpus_per_vm, purchase, now_s).vm_id
                        for _ in range(count - len(live)))
        released = tuple(v.vm_id for v in choose_release(live, max(0, len(live) - count)))
        for vm_id in released:
            self.release(vm_id, now_s)
        return EnsureResult(region, spec.name, purchase, count, len(live), started, released)

    def release(self, vm_id: str, now_s: float) -> None:
        """SIGTERM the agent (it drains, then exits); SIGKILL follows after `grace_s`. Idempotent."""
        entry = self._procs.get(vm_id)
        if entry is None:
            raise KeyError(f"unknown local VM {vm_id!r}")
        if entry.kill_at_s is not None or entry.vm.state is VmState.TERMINATED:
            return
        if entry.proc.poll() is None:
            entry.proc.send_signal(signal.SIGTERM)
            log.info("stopping %s (pid %d): SIGTERM", vm_id, entry.proc.pid)
        entry.kill_at_s = now_s + self.grace_s
        entry.vm = replace(entry.vm, state=VmState.TERMINATING, released_s=now_s)

    def current(self, now_s: float) -> tuple[Vm, ...]:
        """VMs not yet reported TERMINATED by `poll_events`."""
        self._reap(now_s)
        return tuple(p.vm for p in self._procs.values())

    def poll_events(self, now_s: float) -> list[CloudEvent]:
        self._reap(now_s)
        now = {vm_id: p.vm for vm_id, p in self._procs.items()}
        events = [replace(e, reason=self._procs[e.vm.vm_id].exit_reason) if e.vm.state is VmState.TERMINATED else e
                  for e in diff_events(self._seen, now, now_s)]
        # A TERMINATED VM has been reported: forget it (its process is reaped).
        for vm_id in [vm_id for vm_id, vm in now.items() if vm.state is VmState.TERMINATED]:
            del self._procs[vm_id], now[vm_id]
        self._seen = now
        return events

    def pid(self, vm_id: str) -> int:
        return self._procs[vm_id].proc.pid

    def close(self, timeout_s: float | None = None) -> int:
        """Stop every agent: SIGTERM, wait up to `timeout_s` (default `grace_s`), then SIGKILL the rest.
        Returns how many had to be killed."""
        limit_s = self.grace_s if timeout_s is None else timeout_s
        for vm_id, entry in self._procs.items():
            if entry.proc.poll() is None:
                entry.proc.send_signal(signal.SIGTERM)
                log.info("stopping %s (pid %d): SIGTERM", vm_id, entry.proc.pid)
        killed = 0
        for entry in self._procs.values():
            try:
                entry.proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                entry.proc.kill()
                entry.proc.wait()
                killed += 1
        self._procs.clear()
        self._seen.clear()
        return killed

    def _start(self, region: str, sku: str, gpus: int, purchase: Purchase, now_s: float) -> Vm:
        self._count += 1
        vm_id = f"{self.name_prefix}-{self._count}-{region}-{sku.lower()}"
        env = dict(self.base_env)
        if self.config is not None:
            env["OPSCALE_CONFIG"] = str(self.config)
        env.update({f"{ENV_PREFIX}AGENT_ID": vm_id, f"{ENV_PREFIX}REGION": region, f"{ENV_PREFIX}SKU": sku,
                    f"{ENV_PREFIX}GPUS": str(gpus), f"{ENV_PREFIX}GRPC_PORT": "0", f"{ENV_PREFIX}HTTP_PORT": "0",
                    f"{ENV_PREFIX}OPS_PORT": "0",
                    f"{ENV_PREFIX}ADVERTISE_HOST": env.get(f"{ENV_PREFIX}ADVERTISE_HOST") or "127.0.0.1"})
        output = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_dir / f"{vm_id}.log", "ab")  # noqa: SIM115 (the child holds it)
        try:
            proc = self.popen(list(self.command), env=env, stdin=subprocess.DEVNULL, stdout=output,
                              stderr=subprocess.STDOUT if self.log_dir is not None else subprocess.DEVNULL)
        finally:
            if self.log_dir is not None:
                output.close()  # type: ignore[union-attr]
        log.info("started %s (pid %d) as %s x %d in %s", vm_id, proc.pid, sku, gpus, region)
        vm = Vm(vm_id, region, sku, gpus, purchase, VmState.RUNNING, now_s, running_s=now_s)
        self._procs[vm_id] = _Process(vm, proc)
        return vm

    def _reap(self, now_s: float) -> None:
        for vm_id, entry in self._procs.items():
            if entry.vm.state is VmState.TERMINATED:
                continue
            code = entry.proc.poll()
            if code is None and entry.kill_at_s is not None and now_s >= entry.kill_at_s:
                log.warning("%s (pid %d) did not stop within %.0f s of SIGTERM; killing it", vm_id,
                            entry.proc.pid, self.grace_s)
                entry.proc.kill()
                code = entry.proc.wait()
                entry.exit_reason = f"killed after {self.grace_s:.0f} s without exiting on SIGTERM"
            if code is None:
                continue
            if not entry.exit_reason:
                stopped = entry.kill_at_s is not None
                entry.exit_reason = (f"stopped (exit code {code})" if stopped
                                     else f"exited on its own with code {code}")
            entry.vm = replace(entry.vm, state=VmState.TERMINATED, terminated_s=now_s)
