"""Processes and leftovers: PII workers die with a killed stage, dead runs' temp files go at the next start, and a
checkpoint that cannot be written leaves no partial file and says so in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKERS = r"""
import os, sys, time
from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.curation.pii import PiiRedactor
redactor = PiiRedactor(CleanedCorpusConfig(pii_processes=2))
redactor.start_workers()
print(" ".join(p for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/stat").read().split(")")[1].split()[1] == str(os.getpid())), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its entry waits to be reaped


def test_pii_workers_die_when_the_stage_is_killed():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", WORKERS], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        children = [int(p) for p in proc.stdout.readline().split()]
        assert len(children) >= 2, children  # the spawned workers (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(c) for c in children):
            time.sleep(0.1)
        left = [c for c in children if _alive(c)]
        for c in left:
            os.kill(c, signal.SIGKILL)
        assert not left, f"still running 5 s after the stage was killed: {left}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)


def test_result_cache_temp_files_of_killed_runs_are_removed_at_the_next_start(tmp_path):
    from llm_pipeline.curation.result_cache import ResultCache

    path = tmp_path / ".cache" / "cleaned_corpus" / "legal.sqlite"
    path.parent.mkdir(parents=True)
    stale = path.parent / ".legal.sqlite.0badf00d.tmp"
    other = path.parent / ".medicine.sqlite.0badf00d.tmp"  # another domain's: maybe a live run's, left alone
    stale.write_bytes(b"half a database")
    other.write_bytes(b"half a database")
    with ResultCache(path, "fp") as cache:
        cache.put("k", {"kept": None, "dropped": "too_short"})
    assert not stale.exists() and other.exists() and path.exists()
    assert [p.name for p in path.parent.glob(".legal*")] == []


CHECKPOINT = r"""
import resource, signal, sys, torch
from pathlib import Path
from llm_pipeline.training.checkpoints import CheckpointWriteError, save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG, as a full disk fails with ENOSPC
folder = Path(sys.argv[1])
opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
save_checkpoint(folder, 1, "fp", torch.nn.Linear(2, 2), opt, sched, {})
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
big = torch.nn.Linear(512, 512)
try:
    save_checkpoint(folder, 2, "fp", big, torch.optim.SGD(big.parameters(), lr=0.1), sched, {})
except CheckpointWriteError as exc:
    print(exc)
"""


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", CHECKPOINT, str(tmp_path / "ck")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "cannot write checkpoint step-0000002.pt" in lines[0], proc.stdout
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-0000001.pt"]
