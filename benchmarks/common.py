"""Helpers shared by the benchmark scripts: run one measured step in a fresh process, and print tables.

Each step runs in its own Python process (``python -m``-style re-invocation of the calling script with
``--child STEP``) so its peak RSS is its own and not the high-water mark of whatever ran before it in the same
interpreter. The child prints one JSON line; the parent collects it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

from llm_pipeline.memory import peak_rss_mb  # noqa: E402,F401  (VmHWM: a child's own peak, not its parent's)

OUT_DIR = Path(__file__).resolve().parent / "out"


def children_peak_rss_mb() -> float:
    """The largest peak RSS among this process's finished children (worker pools), in MB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def run_child(script: Path, step: str, args: list[str], timeout: int = 3600) -> dict:
    """Run `script --child step args...` and return the JSON it prints last; stderr passes through."""
    proc = subprocess.run([sys.executable, str(script), "--child", step, *args], stdout=subprocess.PIPE, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"step": step, "error": f"exit code {proc.returncode}"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"step": step, "error": "no result printed"}


def emit(result: dict) -> None:
    """What a child prints for its parent."""
    print(json.dumps(result), flush=True)


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table; columns are (key, header, format spec)."""
    head = "".join(f"{h:>{max(10, len(h) + 2)}}" if i else f"{h:<34}" for i, (_, h, _) in enumerate(columns))
    lines = [head]
    for row in rows:
        cells = []
        for i, (key, h, fmt) in enumerate(columns):
            value = row.get(key, "")
            text = format(value, fmt) if isinstance(value, (int, float)) and fmt else str(value)
            cells.append(f"{text:>{max(10, len(h) + 2)}}" if i else f"{text:<34}")
        lines.append("".join(cells))
    return "\n".join(lines)
