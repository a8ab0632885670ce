"""The Ray executor: one Ray task per job, on a cluster (`--address`) or on a local Ray started for the
run with a small footprint (this machine's CPUs, no dashboard, workers' logs kept off the terminal).

Ray is an optional extra (`pip install 'opscale[ray]'`), imported here only when this executor is chosen.
A task's progress reaches the driver through a Ray queue (an actor holding no CPU, so it never takes a
task's slot); its result, files included, comes back through Ray's object store, so nothing is read from
a node's disk. On a cluster every node needs the same opscale installed, and the data files a scenario
names (a shaped workload's data_dir) at the same path.

Joining a cluster is network I/O: like the process pool beside it, this is the experiment layer's
machinery for placing runs, not simulation logic; nothing below opscale.experiments imports it, and each
run inside a task is the ordinary in-process, deterministic simulation.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from opscale.experiments.executors import (
    ExecutorError,
    ExecutorOptions,
    LostFn,
    ProgressFn,
    TaskFn,
    run_reporting,
)

INSTALL_HINT = "--executor ray needs Ray, an optional extra: pip install 'opscale[ray]'"
# The local Ray's object store: results and plots are small, so the minimum Ray accepts is plenty and
# leaves the machine's memory to the simulations.
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024
# A task whose worker or node died is run once more (the simulation is deterministic, so a rerun gives
# the same result); a second loss makes it a failed job.
TASK_RETRIES = 1
POLL_S = 0.2
PROBE_TIMEOUT_S = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(INSTALL_HINT) from None
    return ray


class RayExecutor:
    """One Ray task per job (one CPU each), on the cluster at `options.address`, or on a local Ray of
    `options.workers` CPUs started for the map and shut down after it."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.ray = import_ray()
        self.options = options
        if options.address is not None and not self.ray.is_initialized():
            try:
                _probe(options.address)  # an unreachable cluster fails here, before any run is planned
            except OSError as exc:
                raise _unreachable(options.address, exc) from None

    def map(self, task: TaskFn, jobs: Sequence[Any], progress: ProgressFn | None, lost: LostFn) -> list[Any]:
        ray = self.ray
        started = self._connect()
        try:
            from ray.util.queue import Queue

            reports = Queue(actor_options={"num_cpus": 0}) if progress is not None else None
            if reports is not None:  # (a queue is falsy while empty)
                reporting = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(run_reporting)
                refs = [reporting.remote(task, job, reports) for job in jobs]
            else:
                silent = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_silent)
                refs = [silent.remote(task, job) for job in jobs]
            pending = list(refs)
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
                _relay(reports, progress)
            _relay(reports, progress)
            return [self._result_of(ref, job, lost) for ref, job in zip(refs, jobs, strict=True)]
        finally:
            if started:
                ray.shutdown()

    def _connect(self) -> bool:
        """Join the cluster at the address, or start a local Ray; True when this run started (and so shuts
        down) the Ray it uses. A Ray the caller already started is used as it is."""
        ray = self.ray
        if ray.is_initialized():
            return False
        quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        address = self.options.address
        if address is None:
            # "local": a Ray of its own, even where `ray start` left a cluster that ray.init() would join
            ray.init(address="local", num_cpus=max(1, min(self.options.workers, os.cpu_count() or 1)),
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
            return True
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # Ray raises ConnectionError, or a RuntimeError / ValueError of its own
            # Something listens there (the probe passed): most often a cluster with token authentication,
            # which Ray's clients join only with the mode and the token in their environment.
            raise ExecutorError(f"--address {address}: Ray could not join the cluster there "
                                f"({type(exc).__name__}: {_first_line(exc)}); a cluster with token "
                                f"authentication needs RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or "
                                f"~/.ray/auth_token) in this environment") from None
        return True

    def _result_of(self, ref: Any, job: Any, lost: LostFn) -> Any:
        try:
            return self.ray.get(ref)
        except Exception as exc:  # the task's worker or node died past its retry: the job failed
            return lost(job, exc)


def _probe(address: str) -> None:
    """Fail within PROBE_TIMEOUT_S when nothing listens at a HOST:PORT or ray://HOST:PORT address: Ray
    itself retries an unreachable cluster for minutes before it gives up. Other forms (`auto`, a
    cluster's address file) are left to Ray, which answers them at once."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
        pass


def _unreachable(address: str, exc: Exception) -> ExecutorError:
    return ExecutorError(f"--address {address}: no Ray cluster answers there ({type(exc).__name__}: "
                         f"{_first_line(exc)}); start one with `ray start --head`, or leave out --address to "
                         f"run on a local Ray")


def _silent(task: TaskFn, job: Any) -> Any:
    return task(job, None)


def _relay(reports: Any, progress: ProgressFn | None) -> None:
    if reports is None or progress is None:
        return
    waiting = reports.qsize()
    if waiting:
        for label, done, total in reports.get_nowait_batch(waiting):
            progress(label, done, total)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
