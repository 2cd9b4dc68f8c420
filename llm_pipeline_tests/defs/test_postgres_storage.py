"""The documented PostgreSQL instance storage (docs/operations.md), against a real server the test starts itself."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from llm_pipeline.config import load_config
from llm_pipeline.defs.local_run import materialize_steps, plan
from llm_pipeline.defs.resources import PipelineConfigResource

REPO = Path(__file__).resolve().parents[2]
INITDB = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    if INITDB is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    bindir = Path(os.path.realpath(INITDB)).parent
    base = Path(tempfile.mkdtemp(prefix="llmp-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"
    run = lambda *args: subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "dagster", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
        "-o", f"-p {port} -k {base} -h 127.0.0.1 -c fsync=off", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster")
        yield port
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_runs_and_events_land_in_postgres(tmp_path, fast_config, postgres, monkeypatch):
    # The URL (which may hold a password) comes from the environment, never from a file in the repo.
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", f"postgresql+psycopg2://dagster@127.0.0.1:{postgres}/dagster")
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The same setting docs/operations.md documents, with the server's port.
    (home / "dagster.yaml").write_text(f"""
storage:
  postgres:
    postgres_url:
      env: DAGSTER_POSTGRES_URL
telemetry:
  enabled: false
""")
    cfg = load_config(fast_config)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert materialize_steps(cfg, PipelineConfigResource(config_path=str(fast_config)),
                                 plan(cfg, ["raw_corpus"], "legal"), instance)
        assert instance.get_runs_count() == 1
        event = instance.get_latest_materialization_event(dg.AssetKey("raw_corpus"))
        assert event.asset_materialization.partition == "legal"

    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=postgres, user="dagster", dbname="dagster") as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs")
        assert cur.fetchone()[0] == 1
