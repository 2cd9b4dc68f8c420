"""A real `dvc repro` of the generated dvc.yaml in a temporary git repository, then a no-op repro, status, push; the
documented commit, a real `git clone` elsewhere, `dvc pull` there, and the checks a colleague would make in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def sh(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dvc_repro_runs_the_stages_then_nothing(tmp_path, make_fast_config):
    work = tmp_path / "project"
    work.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    # The project's files as a user's clone would have them: code (for DVC's code dependencies), sample, config.
    shutil.copytree(REPO / "llm_pipeline", work / "llm_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for d in ("legal", "software"):
        shutil.copytree(REPO / "data/sample" / d, work / "data/sample" / d)
    fast = yaml.safe_load(make_fast_config(tmp_path, domains=["legal", "software"]).read_text())
    fast["data_dir"] = "data"
    for name, dom in fast["domains"].items():
        dom["sources"][0]["path"] = f"data/sample/{name}"
    (work / "configs").mkdir()
    (work / "configs/default.yaml").write_text(yaml.safe_dump(fast, sort_keys=False))
    (work / ".gitignore").write_text("/data/*\n!/data/sample/\n/.dvc_remote/\n__pycache__/\n")

    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh([str(BIN / "dvc"), "init", "-q"], work, env)
    sh([str(BIN / "dvc"), "remote", "add", "-d", "local", "../.dvc_remote"], work, env)
    sh([str(BIN / "llm-pipeline"), "dvc-yaml"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "init"], work, env)

    # An output made through Dagster (`llm-pipeline run`) is recorded in dvc.lock, so DVC agrees it is up to date
    # and `dvc repro` does not redo it.
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run = sh([str(BIN / "llm-pipeline"), "run", "--select", "raw_corpus", "--partition", "legal"], work, {**env, "DAGSTER_HOME": str(home)})
    assert "recorded 1 outputs in dvc.lock" in run.stdout, run.stdout
    assert "up to date" in sh([str(BIN / "dvc"), "status", "raw_corpus-legal"], work, env).stdout.lower()

    first = sh([str(BIN / "dvc"), "repro"], work, env)
    ran = first.stdout.count("Running stage")
    assert ran == 2 * 3 + 7 - 1, first.stdout[-2000:]
    assert (work / "data/eval_report/report.html").exists()
    assert (work / "dvc.lock").exists()
    assert (work / "data/reward_model/judge/adapter_config.json").exists()  # the judge is part of reward_model's output
    assert "rl" in json.loads((work / "data/eval_report/metrics.json").read_text())["policies"]["models"]

    second = sh([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage" not in second.stdout, second.stdout

    status = sh([str(BIN / "dvc"), "status"], work, env)
    assert "up to date" in status.stdout.lower(), status.stdout

    sh([str(BIN / "dvc"), "push"], work, env)
    cloud = sh([str(BIN / "dvc"), "status", "--cloud"], work, env)
    assert "in sync" in cloud.stdout.lower() or "up to date" in cloud.stdout.lower(), cloud.stdout
    assert any((work.parent / ".dvc_remote").rglob("*")), "nothing was pushed to the local remote"

    # The DVC hash recorded in dvc.lock is the one the runner computes (and Dagster uses as data version).
    from llm_pipeline.io import dvc_hash

    lock = yaml.safe_load((work / "dvc.lock").read_text())
    for stage in ("raw_corpus-legal", "lora_adapter", "eval_report"):
        out = lock["stages"][stage]["outs"][0]
        assert out["md5"] == dvc_hash(work / out["path"]), stage
    # Timings live beside the output, out of its hash; the adapter names its base relative to the project root.
    assert (work / "data/lora_adapter/.timings.json").is_file()
    assert "seconds" not in json.loads((work / "data/lora_adapter/stats.json").read_text())
    for adapter in ("lora_adapter", "dpo_model"):
        conf = json.loads((work / f"data/{adapter}/adapter_config.json").read_text())
        assert conf["base_model_name_or_path"] == "data/base_checkpoint", conf["base_model_name_or_path"]
    assert str(tmp_path) not in (work / "data/eval_report/report.html").read_text()

    # `dvc metrics show`: a few key figures per stage, not the whole stats; `dvc plots show` draws the declared plots.
    shown = sh([str(BIN / "dvc"), "metrics", "show", "--json"], work, env).stdout
    per_stage = json.loads(shown)[""]["data"]
    assert set(per_stage) >= {"data/metrics/lora_adapter.json", "data/metrics/eval_report.json"}
    assert all(len(v["data"]) <= 6 for v in per_stage.values()), per_stage
    sh([str(BIN / "dvc"), "plots", "show", "-o", str(tmp_path / "plots")], work, env)
    html = (tmp_path / "plots/index.html").read_text()
    for title in ("base_checkpoint: training and held-out loss", "lora_adapter: training and held-out loss",
                  "dpo_model: training and held-out loss", "held-out perplexity per domain"):
        assert title in html, title
    assert "var spec = {};" not in html  # every plot has data to draw

    # Re-running stages on unchanged inputs (as from the UI) writes the same bytes: dvc status stays clean.
    for args in (["eval_report"], ["raw_corpus", "--domain", "legal"], ["deduped_shards", "--domain", "legal"],
                 ["tokenizer"], ["base_checkpoint"], ["lora_adapter"], ["dpo_model"]):
        sh([str(BIN / "llm-pipeline"), "stage", *args], work, env)
    status = sh([str(BIN / "dvc"), "status"], work, env)
    assert "up to date" in status.stdout.lower(), status.stdout

    # The documented commit, then a colleague's clone: remote set up, pull, status clean, lineage, the models load.
    sh(["git", "add", "dvc.yaml", "dvc.lock", ".dvcignore", "configs"], work, env)
    sh(["git", "commit", "-qm", "pipeline outputs"], work, env)
    clone = tmp_path / "colleague"
    sh(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
    sh([str(BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(tmp_path / ".dvc_remote")], clone, env)
    sh([str(BIN / "dvc"), "pull", "-q"], clone, env)
    status = sh([str(BIN / "dvc"), "status"], clone, env)
    assert "up to date" in status.stdout.lower(), status.stdout
    lineage = sh([str(BIN / "llm-pipeline"), "lineage", "data/dpo_model"], clone, env).stdout
    assert "deduped_shards[legal]" in lineage and "not materialized" not in lineage, lineage
    assert "adapter on base model data/base_checkpoint" in lineage, lineage
    load = ("from peft import AutoPeftModelForCausalLM\n"
            "for d in ('data/lora_adapter', 'data/dpo_model'):\n"
            "    m = AutoPeftModelForCausalLM.from_pretrained(d)\n"
            "    print(d, type(m).__name__, m.peft_config['default'].base_model_name_or_path)\n")
    loaded = sh([sys.executable, "-c", load], clone, env).stdout
    assert loaded.count("PeftModelForCausalLM data/base_checkpoint") == 2, loaded
    # The deduped shards load with `datasets` as they lie, the held-out split as its test split.
    import datasets

    shards = datasets.load_dataset("parquet", data_dir=str(clone / "data/deduped_shards/legal"), cache_dir=str(tmp_path / "hf"))
    stats = json.loads((clone / "data/deduped_shards/legal/stats.json").read_text())
    assert shards["train"].num_rows == stats["train_documents"] and shards["test"].num_rows == stats["eval_documents"]
    assert set(shards["test"]["split"]) == {"eval"}
