"""Record outputs made outside `dvc repro` (by Dagster or the CLI) in dvc.lock, so `dvc status` and `dvc push` see them.

`dvc commit -f STAGE` hashes the stage's dependencies and outputs as they are and writes them to dvc.lock, exactly
as if `dvc repro` had produced them: afterwards `dvc status` is clean and `dvc push` uploads every output. It is only
done when the config's root is a DVC project. A generated dvc.yaml that describes another config (the default's
domains, say, when the run used `--config configs/mine.yaml`) is regenerated for this run's config first, since
`dvc commit` of stages whose dependencies this run never made fails; the message says so, to commit it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from llm_pipeline.config import PipelineConfig
from llm_pipeline.dvcgen import HEADER, config_arg, stage_key, write


def _dvc() -> str | None:
    local = Path(sys.executable).parent / "dvc"
    return str(local) if local.exists() else shutil.which("dvc")


def record(cfg: PipelineConfig, steps: list[tuple[str, str | None]]) -> str:
    """Commit the given (stage, domain) outputs to dvc.lock; returns what happened, for the progress display."""
    root = cfg.root
    dvc_yaml = root / "dvc.yaml"
    if not (root / ".dvc").is_dir() or not dvc_yaml.exists():
        return "not a DVC project: outputs not recorded in dvc.lock"
    try:
        cfg.data_path.relative_to(root)
    except ValueError:
        return f"data_dir {cfg.data_path} is outside the DVC project: outputs not recorded in dvc.lock"
    regenerated = ""
    if dvc_yaml.read_text(encoding="utf-8").startswith(HEADER):
        config = config_arg(cfg)
        if write(cfg, config, dvc_yaml):
            regenerated = f"dvc.yaml regenerated for {config} (commit it with dvc.lock); "
    declared = set((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}))
    keys = [stage_key(n, d) for n, d in steps if stage_key(n, d) in declared]
    if not keys:
        return "dvc.yaml declares none of these stages (regenerate it with `llm-pipeline dvc-yaml`)"
    dvc = _dvc()
    if dvc is None:
        return "dvc not found: outputs not recorded in dvc.lock"
    proc = subprocess.run([dvc, "commit", "--force", *keys], cwd=root, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return f"{regenerated}dvc commit failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return (f"{regenerated}recorded {len(keys)} outputs in dvc.lock (dvc status is clean; `dvc push` stores them, "
            f"`git add dvc.lock` records them for a clone)")
