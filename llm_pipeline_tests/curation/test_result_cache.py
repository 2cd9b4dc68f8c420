"""ResultCache: results survive one run to the next only under the same key, and a failed run keeps the old ones."""

import json

import pytest
import yaml

from llm_pipeline.config import load_config
from llm_pipeline.curation.result_cache import ResultCache, fingerprint
from llm_pipeline.io import ShardWriter


def test_a_run_keeps_exactly_what_it_used(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResultCache(path, "fp") as cache:
        for i in range(3):
            assert cache.get(cache.key({"text": str(i)})) is None
            cache.put(cache.key({"text": str(i)}), {"kept": i})
    with ResultCache(path, "fp") as cache:
        assert cache.get(cache.key({"text": "1"})) == {"kept": 1}
        assert cache.get(cache.key({"text": "9"})) is None
        cache.put(cache.key({"text": "9"}), {"dropped": "too_short"})
    assert (cache.hits, cache.misses) == (1, 1)
    with ResultCache(path, "fp") as cache:
        assert [cache.get(cache.key({"text": t})) for t in "019"] == [None, {"kept": 1}, {"dropped": "too_short"}]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_a_run_that_only_reuses_holds_a_bounded_number_of_results(tmp_path):
    """Hits are written out as they come, not held until a put that an all-reused run never makes."""
    from llm_pipeline.curation import result_cache

    path = tmp_path / "c.sqlite"
    n = 3 * result_cache._FLUSH_ROWS + 7
    with ResultCache(path, "fp") as cache:
        for i in range(n):
            cache.put(cache.key({"text": str(i)}), {"kept": i})
    with ResultCache(path, "fp") as cache:
        most = 0
        for i in range(n):
            assert cache.get(cache.key({"text": str(i)})) == {"kept": i}
            most = max(most, len(cache._pending))
    assert most < result_cache._FLUSH_ROWS and cache.hits == n
    with ResultCache(path, "fp") as cache:  # and every reused result was kept for the next run
        assert all(cache.get(cache.key({"text": str(i)})) == {"kept": i} for i in range(n))


def test_another_fingerprint_sees_nothing(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResultCache(path, fingerprint(min_words=8)) as cache:
        cache.put(cache.key({"text": "a"}), {"kept": 1})
    with ResultCache(path, fingerprint(min_words=9)) as cache:
        assert cache.get(cache.key({"text": "a"})) is None


def test_a_failed_run_leaves_the_previous_results(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResultCache(path, "fp") as cache:
        cache.put(cache.key({"text": "a"}), {"kept": 1})
    with pytest.raises(RuntimeError), ResultCache(path, "fp") as cache:
        cache.put(cache.key({"text": "b"}), {"kept": 2})
        raise RuntimeError("stage failed")
    with ResultCache(path, "fp") as cache:
        assert cache.get(cache.key({"text": "a"})) == {"kept": 1}
        assert cache.get(cache.key({"text": "b"})) is None
    assert not list(tmp_path.glob(".*tmp"))


def test_disabled_cache_reads_and_writes_nothing(tmp_path):
    path = tmp_path / "c.sqlite"
    with ResultCache(path, "fp", enabled=False) as cache:
        assert cache.get("k") is None
        cache.put("k", {"kept": 1})
    assert not path.exists() and cache.metadata() == {"documents_reused": 0, "documents_computed": 1,
                                                      "reuse_note": "result reuse is off in the config"}


def test_pii_audit_reuses_verdicts_for_unchanged_texts(tmp_path, monkeypatch):
    from llm_pipeline.curation import pii_audit
    from llm_pipeline.curation.pii import PiiRedactor

    conf = {"data_dir": str(tmp_path / "data"), "domains": {"legal": {"sources": [{"path": "unused"}]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(conf))
    cfg = load_config(tmp_path / "config.yaml", root=tmp_path)
    folder = tmp_path / "out"
    texts = ["The tenant <PERSON> wrote to the landlord on time.", "Write to Maria Lopez at maria.lopez@example.com.",
             "The deposit was returned in full."]
    with ShardWriter(folder) as w:
        for i, t in enumerate(texts):
            w.write({"source": f"{i}.txt", "text": t})
    analyzed: list[int] = []
    real = PiiRedactor.analyze_batch
    monkeypatch.setattr(PiiRedactor, "analyze_batch", lambda self, ts: analyzed.append(len(ts)) or real(self, ts))
    first = pii_audit.residual_pii(folder, cfg, domain="legal")
    again = pii_audit.residual_pii(folder, cfg, domain="legal")
    assert first == again and first[0] == 3
    assert {f["entity"] for f in first[1]} >= {"PERSON", "EMAIL_ADDRESS"} and all(f["source"] == "1.txt" for f in first[1])
    assert analyzed == [3]  # the second audit analyzed nothing
    assert "maria" not in json.dumps(first[1]).lower()  # findings stay masked


def test_the_code_fingerprint_leaves_out_only_modules_cleaned_corpus_never_imports():
    """Editing deduplication must not throw away every cleaned result, and leaving a module out must not let a
    change that does shape a cleaned document be served stale: no module cleaned_corpus (or its task form) imports,
    at the top or inside a function, is among the ones left out."""
    import ast
    from pathlib import Path

    from llm_pipeline.curation import result_cache

    root = Path(result_cache.__file__).resolve().parents[1]
    assert all((root / "curation" / name).exists() for name in result_cache.OTHER_STAGES)
    # config.py is not followed: the settings a result depends on enter the fingerprint as values
    # (cleaned_corpus.result_fingerprint), and it imports curation.dedup only to check deduped_shards' banding.
    todo, seen = [root / "stages" / "cleaned_corpus.py", root / "compute" / "clean.py"], {root / "config.py"}
    while todo:  # the modules of llm_pipeline that the stage imports, transitively
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("llm_pipeline."):
                    parts = name.split(".")[1:]
                    todo += [root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")]
    assert not {p.name for p in seen if p.parent.name == "curation"} & result_cache.OTHER_STAGES
    assert {"cleaning.py", "filters.py", "pii.py"} <= {p.name for p in seen}  # the walk did find the stage's modules
