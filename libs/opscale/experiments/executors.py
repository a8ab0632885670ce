"""Where an experiment's tasks run: in this process, in a local process pool, or on a Ray cluster.

An executor maps a task (a top-level function taking a job and a progress callback, both plain picklable
values) over jobs and returns the tasks' results in the jobs' order. It knows nothing of variants or
seeds: the caller builds the jobs and assembles the results, the same way whatever ran them, so the files
an experiment writes do not depend on the executor. A job whose worker died (killed, out of memory, a
lost node) is given to `lost`, which turns the failure into that job's result; the other jobs complete.

Processes and clusters live here, in the experiment layer; each task inside is the ordinary
single-threaded, deterministic simulation. Ray is an optional extra, imported only by the ray executor
(ray_executor.py) when it is chosen.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

ProgressFn = Callable[[str, float, float], None]  # (task label, done, total)
TaskFn = Callable[[Any, ProgressFn | None], Any]  # a top-level function, so it pickles by name
LostFn = Callable[[Any, Exception], Any]  # (job, why its worker died) -> that job's result

DEFAULT_EXECUTOR = "pool"


class ExecutorError(ValueError):
    """An executor that cannot run: the message names the option (--executor, --address)."""


class Executor(Protocol):
    def map(self, task: TaskFn, jobs: Sequence[Any], progress: ProgressFn | None, lost: LostFn) -> list[Any]:
        """`task` over `jobs`, results in the jobs' order."""
        ...


@dataclass(frozen=True, slots=True)
class ExecutorOptions:
    workers: int  # tasks at once on this machine (the pool's processes, a local Ray's CPUs)
    address: str | None = None  # a Ray cluster's address; None: start a local one


class SerialExecutor:
    """Every task in this process, one after another: the reference the others are compared with."""

    def __init__(self, options: ExecutorOptions) -> None:
        del options

    def map(self, task: TaskFn, jobs: Sequence[Any], progress: ProgressFn | None, lost: LostFn) -> list[Any]:
        del lost  # a task that raises in this process is a bug to see, not a lost worker
        return [task(job, progress) for job in jobs]


class PoolExecutor:
    """A local pool of spawned processes, one task each at a time; one worker runs in this process."""

    def __init__(self, options: ExecutorOptions) -> None:
        self.workers = options.workers

    def map(self, task: TaskFn, jobs: Sequence[Any], progress: ProgressFn | None, lost: LostFn) -> list[Any]:
        if min(self.workers, len(jobs)) <= 1:
            return SerialExecutor(ExecutorOptions(1)).map(task, jobs, progress, lost)
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            reports = manager.Queue()
            with ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), mp_context=context) as pool:
                futures = [pool.submit(run_reporting, task, job, reports) for job in jobs]
                _relay(futures, reports, progress)
                return [_result_of(future, job, lost) for future, job in zip(futures, jobs, strict=True)]


def run_reporting(task: TaskFn, job: Any, reports: Any) -> Any:
    """`task` in a worker, its progress put on a queue the driver reads (a manager's, or Ray's)."""
    return task(job, lambda label, done, total: reports.put((label, done, total)))


def _relay(futures: list[Future[Any]], reports: Any, progress: ProgressFn | None) -> None:
    while not all(f.done() for f in futures):
        try:
            label, done, total = reports.get(timeout=0.2)
        except queue_module.Empty:
            continue
        if progress is not None:
            progress(label, done, total)


def _result_of(future: Future[Any], job: Any, lost: LostFn) -> Any:
    try:
        return future.result()
    except Exception as exc:  # the worker died (killed, out of memory): the job failed, not the experiment
        return lost(job, exc)


def _ray(options: ExecutorOptions) -> Executor:
    from opscale.experiments.ray_executor import RayExecutor  # imports ray only when it is chosen

    return RayExecutor(options)


EXECUTORS: dict[str, Callable[[ExecutorOptions], Executor]] = {
    "pool": PoolExecutor,
    "serial": SerialExecutor,
    "ray": _ray,
}


def make_executor(name: str, options: ExecutorOptions) -> Executor:
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor: unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if options.address is not None and name != "ray":
        raise ExecutorError(f"--address is a Ray cluster's address: it needs --executor ray (got --executor {name})")
    return EXECUTORS[name](options)
