"""Executors: run a function over a stage's tasks, in this process or on the actors of a Ray cluster.

    with executor_for(cfg) as ex:
        results = ex.map(clean_task, tasks, cfg, domain, out_dir, label="cleaned_corpus[legal]")

`fn(state, task, *args)` is a plain module-level function; `state` is a dict that lives as long as the worker, so
a task builds its models (spaCy for PII, the language-id model) on the worker's first task and every later task on
that worker reuses them. Results come back in task order whatever order the tasks finished in. Progress is one
meter over tasks, updated as each one finishes, so the Dagster run log shows ``tasks 3/8`` while a domain runs.

The Ray engine starts ``compute.workers`` actors, spread over the cluster's nodes, for one stage run, and ends
them (and its connection) when the stage ends. Every node must import this package at the same version and see
the data folder at the same path (shared storage, docs/operations.md).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from llm_pipeline import progress
from llm_pipeline.config import ComputeConfig, ConfigError, PipelineConfig


class EngineError(ConfigError):
    """The configured engine cannot run (Ray missing, no cluster at the address): the config or the cluster must
    change, so it stops the run at once in one line, like any config error, instead of being retried."""


class Placement:
    """Where tasks ran: per worker process, its node and how many times it built its models (once is the goal)."""

    def __init__(self) -> None:
        self.workers: dict[int, tuple[str, int]] = {}

    def record(self, pid: int, node: str, model_loads: int) -> None:
        self.workers[pid] = (node, max(model_loads, self.workers.get(pid, ("", 0))[1]))

    def metadata(self) -> dict[str, int]:
        return {"nodes": len({node for node, _ in self.workers.values()}), "worker_processes": len(self.workers),
                "model_loads": sum(loads for _, loads in self.workers.values())}


def _call(state: dict, fn: Callable, task: Any, args: tuple) -> tuple[Any, int, str, int]:
    return fn(state, task, *args), os.getpid(), state.get("node", "local"), state.get("model_loads", 0)


class LocalExecutor:
    """Tasks one after another in this process: the same task code as Ray, for tests and single machines."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.placement = Placement()

    def map(self, fn: Callable, tasks: Sequence, *args: Any, label: str = "tasks") -> list:
        meter = progress.meter(label, total=len(tasks), unit="task")
        out = []
        for k, task in enumerate(tasks):
            result, *where = _call(self.state, fn, task, args)
            self.placement.record(*where)
            out.append(result)
            meter.update(k + 1)
        meter.close()
        return out

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.state.clear()


def _check_reachable(address: str | None) -> None:
    """A head at HOST:PORT answers a TCP connect, or the run stops now: ray.init would retry a dead address for
    minutes. ("auto", "ray://..." and None are left to Ray.)"""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"compute.address {address!r}: expected HOST:PORT of a Ray head, 'auto' or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise EngineError(f"compute.address {address!r}: no Ray head answers there ({exc.strerror or exc}); start "
                          f"one with `ray start --head --port {port}` or fix the address") from None


class RayExecutor:
    """`workers` long-lived actors on a Ray cluster; tasks go to whichever actor is free."""

    def __init__(self, ccfg: ComputeConfig):
        try:
            import ray
        except ImportError:
            raise EngineError("compute.engine is 'ray' but Ray is not installed: pip install 'llm-pipeline[ray]'") from None
        self.ray = ray
        self.started = False
        self.placement = Placement()
        if not ray.is_initialized():
            _check_reachable(ccfg.address)
            try:
                # No address: a Ray of this run's own. (Ray's None would join any Ray it finds running on this
                # machine, another user's test cluster included; "local" always starts a new one.)
                ray.init(address=ccfg.address or "local", include_dashboard=False, log_to_driver=False,
                         configure_logging=False, ignore_reinit_error=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineError(f"compute.address {ccfg.address!r}: cannot join a Ray cluster there "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
            self.started = True

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        class Worker:
            def __init__(self) -> None:
                self.state: dict[str, Any] = {"node": ray.get_runtime_context().get_node_id()}

            def call(self, fn: Callable, task: Any, args: tuple) -> tuple:
                return _call(self.state, fn, task, args)

        self.actors = [Worker.remote() for _ in range(ccfg.workers)]

    def map(self, fn: Callable, tasks: Sequence, *args: Any, label: str = "tasks") -> list:
        ray = self.ray
        meter = progress.meter(label, total=len(tasks), unit="task")
        results: list[Any] = [None] * len(tasks)
        args_ref = ray.put(args)  # the config and paths once into the object store, not once per task
        free = list(self.actors)
        running: dict[Any, tuple[int, Any]] = {}
        todo = list(range(len(tasks)))
        done = 0
        while todo or running:
            while free and todo:
                k, actor = todo.pop(0), free.pop(0)
                running[actor.call.remote(fn, tasks[k], args_ref)] = (k, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                k, actor = running.pop(ref)
                results[k], *where = ray.get(ref)  # a task's exception is raised here, with the worker's traceback
                self.placement.record(*where)
                free.append(actor)
                done += 1
                meter.update(done)
        meter.close()
        return results

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()


def executor_for(cfg: PipelineConfig) -> LocalExecutor | RayExecutor:
    """The executor of ``compute.engine`` (``local`` here means the task-split path run in this process)."""
    if cfg.compute.engine == "ray":
        return RayExecutor(cfg.compute)
    return LocalExecutor()
