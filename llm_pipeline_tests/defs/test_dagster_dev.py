"""`dagster dev` on a free loopback port, with the repository's own instance settings (dagster.yaml), shows the eight
assets, and a materialization launched the way the UI launches one (GraphQL launchRun) succeeds. The server's whole
process group is stopped at the end."""

from __future__ import annotations

import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llm_pipeline.stages import ORDER

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        out = json.loads(resp.read())
    assert "errors" not in out, out
    return out["data"]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, make_fast_config):
    tmp_path = tmp_path_factory.mktemp("dagster_dev")
    fast_config = make_fast_config(tmp_path)
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's dagster.yaml, its relative folders (under the repository root in real use) moved into home.
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text().replace("base_dir: .dagster", f"base_dir: {home}/.dagster"))
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LLM_PIPELINE_CONFIG": str(fast_config),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = open(tmp_path / "dagster_dev.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                data = gql(port, "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name location { name } } } } }")
                if data["repositoriesOrError"].get("nodes"):
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "dagster_dev.log").read_text()[-3000:]
            time.sleep(2)
        else:
            pytest.fail("dagster dev did not come up:\n" + (tmp_path / "dagster_dev.log").read_text()[-3000:])
        yield port, data["repositoriesOrError"]["nodes"][0], fast_config, home
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_dagster_dev_shows_graph_and_materializes(dagster_dev):
    port, repo, fast_config, _ = dagster_dev
    nodes = gql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } isPartitioned isObservable } }")["assetNodes"]
    keys = {n["assetKey"]["path"][0] for n in nodes if not n["isObservable"]}
    assert keys == set(ORDER)
    parts = {n["assetKey"]["path"][0]: n["isPartitioned"] for n in nodes}
    assert parts["raw_corpus"] and not parts["eval_report"]

    launched = gql(port, """
      mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""", {"p": {
        "selector": {"repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
                     "pipelineName": "__ASSET_JOB", "assetSelection": [{"path": ["raw_corpus"]}]},
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "legal"}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.time() + 240
    status = None
    while time.time() < deadline:
        status = gql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(2)
    assert status == "SUCCESS"
    from llm_pipeline.config import load_config

    cfg = load_config(fast_config)
    assert (cfg.data_path / "raw_corpus/legal/_manifest.json").exists()


def test_backfill_of_chosen_domains_from_the_cli(dagster_dev):
    """`llm-pipeline backfill --domains a,b --url` launches a real partition backfill that the daemon runs."""
    port, _, fast_config, _ = dagster_dev
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(BIN / "llm-pipeline"), "backfill", "--config", str(fast_config), "--domains", "medicine,software",
         "--select", "raw_corpus", "--url", f"http://127.0.0.1:{port}", "--wait"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "COMPLETED" in proc.stdout
    from llm_pipeline.config import load_config

    cfg = load_config(fast_config)
    for d in ("medicine", "software"):
        assert (cfg.data_path / "raw_corpus" / d / "_manifest.json").exists()
    backfills = gql(port, "{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status } } } }")
    assert backfills["partitionBackfillsOrError"]["results"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts"


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them)")
def test_ui_shows_the_asset_graph_in_a_browser(dagster_dev, tmp_path):
    """Headless Chromium opens the asset graph page as a person would, finds the eight assets, saves a screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port, _, _, _ = dagster_dev
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1800,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(f"http://127.0.0.1:{port}/asset-groups")
        deadline = time.time() + 90
        missing = set(ORDER)
        while time.time() < deadline and missing:
            text = driver.find_element("tag name", "body").text
            missing = {name for name in ORDER if name not in text}
            time.sleep(1)
        # Each name shows twice once the graph has drawn: in the sidebar's asset list and as a node of the graph.
        # (No first-visit dialog covers it: dagster.yaml turns Dagster's newsletter prompt off.)
        in_graph: set[str] = set()
        deadline = time.time() + 90
        while time.time() < deadline and in_graph != set(ORDER):
            text = driver.find_element("tag name", "body").text
            in_graph = {name for name in ORDER if text.split().count(name) >= 2}
            time.sleep(1)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dagster-asset-graph.png"
        # Saved under a name of its own, then renamed: two test runs at once never read each other's half-written file.
        own = ARTIFACTS / f".dagster-asset-graph-{os.getpid()}.png"
        driver.save_screenshot(str(own))
        assert own.stat().st_size > 10_000
        os.replace(own, shot)
        assert not missing, f"asset graph page lacks {sorted(missing)}; screenshot: {shot}"
        assert in_graph == set(ORDER), f"graph nodes missing for {sorted(set(ORDER) - in_graph)}; screenshot: {shot}"
    finally:
        driver.quit()


def test_the_ui_leaves_nothing_in_dagster_home_but_the_instance(dagster_dev):
    """DAGSTER_HOME is the repository root in real use: a page load must not leave an untracked `.nux/` there."""
    port, _, _, home = dagster_dev
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/asset-groups", timeout=30) as resp:
        assert resp.status == 200
    # The query the UI sends on every page load; answering it used to create DAGSTER_HOME/.nux/.
    assert gql(port, "{ shouldShowNux }")["shouldShowNux"] is False
    assert sorted(p.name for p in home.iterdir()) == [".dagster", "dagster.yaml"]
