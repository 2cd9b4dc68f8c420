"""The compute section: local by default (no Ray needed), validated at load with a message naming the key."""

import pytest
import yaml

from llm_pipeline.config import ConfigError, load_config


def _load(tmp_path, compute=None):
    conf = {"data_dir": str(tmp_path / "data"), "domains": {"legal": {"sources": [{"path": "x"}]}}}
    if compute is not None:
        conf["compute"] = compute
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    return load_config(tmp_path / "c.yaml", root=tmp_path)


def test_local_is_the_default(tmp_path):
    c = _load(tmp_path).compute
    assert (c.engine, c.address, c.workers) == ("local", None, 2)


@pytest.mark.parametrize("compute, key", [({"engine": "spark"}, "engine"), ({"workers": 0}, "workers"),
                                          ({"task_rows": 0}, "task_rows"), ({"adress": "x"}, "adress")])
def test_a_wrong_compute_setting_is_named(tmp_path, compute, key):
    with pytest.raises(ConfigError, match=f"compute.*{key}|{key}.*compute"):
        _load(tmp_path, compute)


def test_ray_settings_load(tmp_path):
    c = _load(tmp_path, {"engine": "ray", "address": "127.0.0.1:6379", "workers": 8, "task_rows": 1000}).compute
    assert (c.engine, c.address, c.workers, c.task_rows) == ("ray", "127.0.0.1:6379", 8, 1000)


@pytest.mark.parametrize("address", ["127.0.0.1:9", "no-port-here"])
def test_an_address_without_a_ray_head_stops_in_one_line(tmp_path, address):
    pytest.importorskip("ray")
    from llm_pipeline.compute.executor import EngineError, RayExecutor

    cfg = _load(tmp_path, {"engine": "ray", "address": address})
    with pytest.raises(EngineError, match="compute.address") as err:
        RayExecutor(cfg.compute)
    assert "\n" not in str(err.value)


def test_engine_code_is_part_of_the_curation_stages_code_version(tmp_path, monkeypatch):
    """A change under compute/ (the task split, the engines) must mark the curation assets stale, in Dagster and DVC."""
    import shutil

    from llm_pipeline.defs import assets
    from llm_pipeline.dvcgen import CODE

    copy = tmp_path / "llm_pipeline"  # a copy of the package to change: the real one may be in use by another run
    shutil.copytree(assets.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(assets, "PACKAGE", copy)
    before = {name: assets.stage_code_version(name) for name in ("raw_corpus", "deduped_shards", "tokenizer")}
    with open(copy / "compute" / "dedup.py", "a") as f:
        f.write("\n# changed\n")
    after = {name: assets.stage_code_version(name) for name in before}
    assert after["raw_corpus"] != before["raw_corpus"] and after["deduped_shards"] != before["deduped_shards"]
    assert after["tokenizer"] == before["tokenizer"]
    for name in ("raw_corpus", "cleaned_corpus", "deduped_shards"):
        assert "llm_pipeline/compute" in CODE[name]
