"""A real two-node Ray cluster on this machine for tests: a head and a second node, each started by `ray start` as a
process session of its own, every address on loopback, every port picked free (two test runs at once do not
collide), and both stopped by their process group ids -- never `ray stop`, which would end other people's Ray."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


_HANDED_OUT: set[int] = set()  # ports this process gave a node: never given twice
BLOCK = 48  # a node's ports: 6 named ones, then its worker range


def port_block(size: int = BLOCK) -> list[int]:
    """`size` consecutive ports that are all free now and were not handed out before. Ray checks that its random
    picks avoid the worker range, so every port of a node comes from one block: free ports picked one by one could
    fall inside another's worker range (two test runs at once made that happen)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - size)
        block = list(range(base, base + size))
        if _HANDED_OUT.intersection(block):
            continue
        socks = []
        try:
            for port in block:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        _HANDED_OUT.update(block)
        return block
    raise RuntimeError(f"no {size} consecutive free ports on 127.0.0.1")


def _node_args(temp_dir: str) -> list[str]:
    block = port_block()
    manager, objects, agent_http, agent_grpc, metrics, runtime_env = block[:6]
    return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", temp_dir,
            "--node-manager-port", str(manager), "--object-manager-port", str(objects),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
            "--min-worker-port", str(block[6]), "--max-worker-port", str(block[-1]),
            "--disable-usage-stats", "--block"]


def _stop(proc: subprocess.Popen) -> None:
    # The node's processes (GCS, raylet, workers) are children in the session `ray start` opened: its group.
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # workers the raylet started outlive it only by moments
        os.killpg(proc.pid, signal.SIGKILL)


class Cluster:
    def __init__(self, address: str, wait: Callable[[], None]):
        self.address, self.wait = address, wait


@contextlib.contextmanager
def local_cluster(env: dict[str, str] | None = None, timeout: float = 90.0) -> Iterator[Cluster]:
    """Start both nodes and yield at once (the caller can work meanwhile); `wait()` returns once both are up."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    port, client = port_block(2)
    # No token authentication on this loopback-only cluster: Ray 2.60's head otherwise makes a token in ~/.ray, shared
    # by every Ray user of this account, and a node that starts before it is written cannot join. The test's own
    # driver must say the same (RAY_AUTH_MODE in its environment).
    node_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **(env or {})}
    procs: list[subprocess.Popen] = []
    logs = Path(temp_dir)
    try:
        head = [str(RAY), "start", "--head", "--port", str(port), "--ray-client-server-port", str(client),
                "--include-dashboard=false", *_node_args(temp_dir)]
        procs.append(subprocess.Popen(head, env=node_env, start_new_session=True, stdout=open(logs / "head.out", "w"),
                                      stderr=subprocess.STDOUT))
        address = f"127.0.0.1:{port}"
        # Both at once: the second node retries the head's address until the head answers (faster than in turn).
        worker = [str(RAY), "start", "--address", address, *_node_args(temp_dir)]
        procs.append(subprocess.Popen(worker, env=node_env, start_new_session=True, stdout=open(logs / "node.out", "w"),
                                      stderr=subprocess.STDOUT))

        def wait() -> None:
            _wait_for_nodes(address, 1, timeout, procs, logs)
            _wait_for_nodes(address, 2, timeout, procs, logs)

        yield Cluster(address, wait)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_nodes(address: str, n: int, timeout: float, procs: list[subprocess.Popen], logs: Path) -> None:
    """Wait until the last node started says so in its output (``ray start --block`` prints it once up)."""
    out = logs / ("head.out" if n == 1 else "node.out")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {proc.returncode}: " + "".join(
                    p.read_text()[-2000:] for p in logs.glob("*.out")))
        if out.exists() and "Ray runtime started" in out.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Ray node {n} at {address} did not start in {timeout:.0f}s")
