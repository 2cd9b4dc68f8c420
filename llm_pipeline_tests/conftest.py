"""Test-wide settings: offline everywhere, caches and homes in temp folders, a tiny-config factory."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Shared test helpers (e.g. `from evaluation.fixtures import ...`) import from this folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

_HOME = Path(tempfile.mkdtemp(prefix="llm-pipeline-tests-"))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "HF_HOME": str(_HOME / "hf"),
    "WANDB_DIR": str(_HOME / "wandb"),
    "MPLBACKEND": "Agg",
}.items():
    os.environ[key] = value
os.environ.pop("DAGSTER_HOME", None)

import llm_pipeline  # noqa: E402,F401  (applies the package's offline defaults too)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001
    shutil.rmtree(_HOME, ignore_errors=True)


def write_fast_config(tmp_path: Path, domains: list[str] | None = None, **section_overrides) -> Path:
    """A copy of configs/default.yaml that reads the shipped sample and writes under tmp_path, with shorter training."""
    import yaml

    data = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    data["data_dir"] = str(tmp_path / "data")
    data["allowed_roots"] = [str(REPO / "data/sample")]
    for name, dom in list(data["domains"].items()):
        if domains is not None and name not in domains:
            del data["domains"][name]
            continue
        for src in dom["sources"]:
            if src.get("path"):
                src["path"] = str(REPO / src["path"])
    data["base_checkpoint"].update(train_steps=40, checkpoint_every=20, eval_every=20)
    data["lora_adapter"].update(max_steps=10)
    data["dpo_model"].update(max_steps=6)
    for key, value in section_overrides.items():
        data.setdefault(key, {}).update(value)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def fast_config(tmp_path) -> Path:
    return write_fast_config(tmp_path)


@pytest.fixture(scope="session")
def make_fast_config():
    return write_fast_config
