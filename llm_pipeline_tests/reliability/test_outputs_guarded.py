"""Outputs replace only earlier outputs, sources never live inside outputs, and a stage pins the inputs it reads."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

import pytest
import yaml

from llm_pipeline.config import ConfigError, load_config
from llm_pipeline.io import MANIFEST, NotAnOutput, atomic_dir, publish_lock, read_json, read_lock
from llm_pipeline.runner import InputChanged, run_stage

TEXT = "The tenant asked the landlord to repair the heating before winter arrived, and the landlord agreed to help."


def _project(tmp_path: Path, source: str = "corpus/legal", **extra) -> Path:
    corpus = tmp_path / "corpus" / "legal"
    corpus.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (corpus / f"doc{i}.txt").write_text(f"{TEXT} Letter number {i}.")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"data_dir": "data", "domains": {"legal": {"sources": [{"path": source}]}}, **extra}))
    return config


def test_atomic_dir_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("someone's own files")
    with pytest.raises(NotAnOutput, match="no _manifest.json"):
        with atomic_dir(mine):
            pass
    assert (mine / "notes.txt").read_text() == "someone's own files"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind either

    # An earlier output of the same stage is replaced; one of another stage is not.
    (mine / "notes.txt").unlink()
    with atomic_dir(mine, stage="raw_corpus") as tmp:
        (tmp / MANIFEST).write_text('{"stage": "raw_corpus"}')
    with atomic_dir(mine, stage="raw_corpus") as tmp:
        (tmp / MANIFEST).write_text('{"stage": "raw_corpus", "n": 2}')
    assert read_json(mine / MANIFEST)["n"] == 2
    with pytest.raises(NotAnOutput, match="names stage 'raw_corpus', not 'tokenizer'"):
        with atomic_dir(mine, stage="tokenizer"):
            pass


def test_a_folder_put_at_the_output_path_during_a_run_is_not_deleted(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(NotAnOutput):
        with atomic_dir(final, stage="raw_corpus") as tmp:
            (tmp / MANIFEST).write_text('{"stage": "raw_corpus"}')
            final.mkdir()
            (final / "keep.txt").write_text("x")
    assert (final / "keep.txt").exists()


@pytest.mark.parametrize("source", ["data/raw_corpus/legal/d", "data/raw_corpus", "data", "data/.cache/x", "data/metrics"])
def test_a_source_inside_an_output_is_refused_at_load(tmp_path, source):
    config = _project(tmp_path, source)
    with pytest.raises(ConfigError, match=r"domains\.legal\.sources\.0: source_inside_output"):
        load_config(config, root=tmp_path)


def test_a_source_beside_the_outputs_under_data_dir_is_fine(tmp_path):
    (tmp_path / "data" / "sample").mkdir(parents=True)
    cfg = load_config(_project(tmp_path, "data/sample"), root=tmp_path)
    assert cfg.domains["legal"].sources[0].path == "data/sample"


def test_raw_corpus_never_deletes_a_source_reached_through_a_link(tmp_path, monkeypatch):
    """The load-time check resolves links: a source that is an output folder by another name is refused too."""
    monkeypatch.setenv("LLM_PIPELINE_CODE_VERSION", "test")
    (tmp_path / "data" / "raw_corpus" / "legal").mkdir(parents=True)
    (tmp_path / "data" / "raw_corpus" / "legal" / "a.txt").write_text(TEXT)
    os.symlink(tmp_path / "data" / "raw_corpus" / "legal", tmp_path / "alias")
    with pytest.raises(ConfigError, match="source_inside_output"):
        load_config(_project(tmp_path, "alias"), root=tmp_path)
    # And if the folder is there anyway (an older config, a hand-made folder), the stage refuses to replace it.
    cfg = load_config(_project(tmp_path, "corpus/legal"), root=tmp_path)
    with pytest.raises(NotAnOutput):
        run_stage(cfg, "raw_corpus", "legal")
    assert (tmp_path / "data" / "raw_corpus" / "legal" / "a.txt").read_text() == TEXT


def test_a_source_changed_during_the_run_fails_the_stage_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_PIPELINE_CODE_VERSION", "test")
    cfg = load_config(_project(tmp_path), root=tmp_path)
    first = run_stage(cfg, "raw_corpus", "legal")

    import llm_pipeline.stages.raw_corpus as raw

    real_run = raw.run

    def run_while_the_sources_change(*args, **kwargs):
        out = real_run(*args, **kwargs)  # the stage read the old files ...
        (tmp_path / "corpus" / "legal" / "doc9.txt").write_text(TEXT + " A new letter arrived.")  # ... then this came
        return out

    monkeypatch.setattr(raw, "run", run_while_the_sources_change)
    with pytest.raises(InputChanged, match=r"raw_corpus\[legal\]: its input sources changed while it ran"):
        run_stage(cfg, "raw_corpus", "legal")
    from llm_pipeline.io import dvc_hash

    assert dvc_hash(tmp_path / "data" / "raw_corpus" / "legal") == first.dvc_hash
    monkeypatch.setattr(raw, "run", real_run)
    again = run_stage(cfg, "raw_corpus", "legal")
    assert again.stats["documents_kept"] == first.stats["documents_kept"] + 1


def test_an_upstream_rebuild_waits_for_the_stage_reading_it(tmp_path):
    """A reader's shared lock holds the writer's swap; the writer's build (and its own lock) go on meanwhile."""
    locks = tmp_path / ".locks"
    swapped = threading.Event()

    def writer():
        with publish_lock(locks, "raw_corpus-legal"):
            swapped.set()

    with read_lock(locks, ["raw_corpus-legal"]):
        t = threading.Thread(target=writer)
        t.start()
        t.join(0.5)
        assert not swapped.is_set()  # waiting: it cannot have swapped while the reader holds its lock
    t.join(30)
    assert swapped.is_set()
