"""Which Dagster instance records a CLI run: one instance per data dir.

Dagster keys materializations by asset key alone, so two data dirs recorded in one instance overwrite each other's
history: a test run on /tmp/x would show the project's healthy assets as failed and point their metadata at /tmp/x.
The rule, for `llm-pipeline run` and `llm-pipeline backfill`:

- the project's own data dir (the `data_dir` of configs/default.yaml, in a folder holding dagster.yaml): the
  project's instance, that folder, the one `DAGSTER_HOME=$PWD dagster dev` shows;
- any other data dir (`--data-dir`, or a `--config` with another `data_dir`): an instance of its own in
  `<data_dir>/.dagster/` (SQLite, created on first use), which `DAGSTER_HOME=<data_dir>/.dagster dagster dev` shows;
- `DAGSTER_HOME` set by the user: that instance, for whatever data dir it was first used with.

An instance remembers the data dir it records (a key in its own storage, so SQLite and PostgreSQL alike), and a
run for another data dir is refused with one line instead of mixing the two histories.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import dagster as dg

from llm_pipeline.config import ConfigError, PipelineConfig, load_config
from llm_pipeline.io import output_lock

PROJECT_CONFIG = "configs/default.yaml"
OWN_HOME = ".dagster"  # under a data dir that is not the project's
OWNER_KEY = "llm_pipeline/data_dir"
OWN_HOME_YAML = """\
# The Dagster instance of the data dir above this folder (written by llm-pipeline on first use; see
# docs/operations.md). SQLite storage in this folder; look at its runs with DAGSTER_HOME=<this folder> dagster dev.
telemetry:
  enabled: false
"""


class InstanceError(RuntimeError):
    """The Dagster instance cannot be opened, or records another data dir."""


def project_data_dir(project: Path) -> Path:
    """The data dir of the project's own config (where `llm-pipeline run` writes without options)."""
    try:
        return load_config(project / PROJECT_CONFIG, root=project).data_path.resolve()
    except ConfigError:
        return (project / "data").resolve()


def instance_home(cfg: PipelineConfig, cwd: Path | None = None) -> tuple[Path, str]:
    """The DAGSTER_HOME for a run on `cfg.data_path`, and why (for the run's closing line)."""
    explicit = os.environ.get("DAGSTER_HOME")
    if explicit:
        return Path(explicit), "DAGSTER_HOME"
    cwd = (cwd or Path.cwd()).resolve()
    data = cfg.data_path.resolve()
    if (cwd / "dagster.yaml").exists() and data == project_data_dir(cwd):
        return cwd, "the project's instance"
    home = data / OWN_HOME
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        tmp = home / f".dagster.yaml.{os.getpid()}"
        tmp.write_text(OWN_HOME_YAML)
        os.replace(tmp, home / "dagster.yaml")
    return home, f"the instance of {data}"


def _storage_kind(home: Path) -> str:
    text = (home / "dagster.yaml").read_text() if (home / "dagster.yaml").exists() else ""
    return "PostgreSQL" if "postgres" in text else "SQLite"


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "sqlalche.me" not in ln]
    return lines[0] if lines else type(exc).__name__


def open_instance(cfg: PipelineConfig, cwd: Path | None = None) -> tuple[dg.DagsterInstance, str]:
    """The instance for a run on `cfg.data_path` (see the module docstring), its storage created if new.

    Two first runs started together would both find no tables and both create them (SQLite: "table runs already
    exists"): creating and checking the storage happens under a lock per instance folder, held only while opening.
    """
    home, why = instance_home(cfg, cwd)
    if not (home / "dagster.yaml").exists() and not home.is_dir():
        raise InstanceError(f"DAGSTER_HOME {home} is not a folder")
    os.environ["DAGSTER_HOME"] = str(home)
    key = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16]
    data = str(cfg.data_path.resolve())
    with output_lock(Path(tempfile.gettempdir()) / "llm-pipeline-locks", f"dagster-instance-{key}"):
        try:
            instance = dg.DagsterInstance.get()
            storage = instance.run_storage
            owner = storage.get_cursor_values({OWNER_KEY}).get(OWNER_KEY)
            # Touch every storage, so each creates its tables now, under the lock, not in the middle of a run.
            instance.get_runs_count()
            instance.event_log_storage.get_asset_keys()
            if instance.schedule_storage is not None:
                instance.schedule_storage.all_instigator_state()
        except Exception as exc:  # noqa: BLE001 - any failure to reach storage is the operator's to fix, in one line
            raise InstanceError(f"cannot open the Dagster instance at {home} ({_storage_kind(home)} storage): "
                                f"{_one_line(exc)}") from None
        if owner is None:
            storage.set_cursor_values({OWNER_KEY: data})
        elif owner != data:
            instance.dispose()
            raise InstanceError(
                f"the Dagster instance at {home} records the runs of data dir {owner}, not {data}: unset DAGSTER_HOME "
                f"to give this data dir its own instance ({Path(data) / OWN_HOME}), or point DAGSTER_HOME at one of it")
    return instance, f"{why}, {home}"
