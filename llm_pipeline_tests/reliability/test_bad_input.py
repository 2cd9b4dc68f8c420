"""Bad input through raw_corpus -> cleaned_corpus -> deduped_shards: every item kept, dropped or quarantined with a
reason, no crash, memory bounded, and the accounting adds up within and across stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llm_pipeline.config import load_config
from llm_pipeline.io import iter_records, read_json
from llm_pipeline.runner import run_stage
from reliability.badinput import HUGE_BYTES, make_bad_project

CURATION = ["raw_corpus", "cleaned_corpus", "deduped_shards"]
# raw_corpus's peak memory with a 50 MB document and a 10 MB line in its input: the interpreter, pyarrow and the
# readers take ~150 MB here; reading either big item whole would add at least its size again.
MAX_RAW_RSS_MB = 260
PEAK_RSS_CLI = (
    "import sys\n"
    "from llm_pipeline.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []


def outcomes(data: Path, domain: str) -> dict[str, str]:
    """Where each raw item ended up, by source: kept, dropped:<reason> or quarantined:<reason>.

    cleaned_corpus writes sources with what its PII analyzer takes for names replaced ("<PERSON>_after_64k.jsonl"),
    so a source that raw_corpus did not write is traced back through its document id."""
    out: dict[str, str] = {}
    for q in _jsonl(data / "raw_corpus" / domain / "quarantine.jsonl"):
        out[q["source"]] = f"quarantined:{q['reason']}"
    raw_sources: dict[str, list[str]] = {}
    for rec in iter_records(data / "raw_corpus" / domain, columns=["id", "source"]):
        raw_sources.setdefault(rec["id"], []).append(rec["source"])
    known = {s for sources in raw_sources.values() for s in sources}

    def raw_source(rec: dict) -> str:
        if rec["source"] in known or len(raw_sources.get(rec.get("id"), [])) != 1:
            return rec["source"]
        return raw_sources[rec["id"]][0]

    for stage in ("cleaned_corpus", "deduped_shards"):
        for d in _jsonl(data / stage / domain / "dropped.jsonl"):
            out[raw_source(d)] = f"dropped:{d['reason']}"
        for q in _jsonl(data / stage / domain / "quarantine.jsonl"):
            out[raw_source(q)] = f"quarantined:{q['reason'].split(':')[0]}"
    for rec in iter_records(data / "deduped_shards" / domain, columns=["id", "source"]):
        out[raw_source(rec)] = "kept"
    return out


def check_accounting(cfg, domain: str) -> dict[str, dict]:
    stats = {s: read_json(cfg.data_path / s / domain / "stats.json") for s in CURATION}
    for s, st in stats.items():
        assert st["documents_in"] == st["documents_kept"] + sum(st["dropped"].values()) + st["quarantined"], (s, st)
    # What a stage keeps is exactly what the next one reads; raw_corpus reads every source item it is given.
    assert stats["cleaned_corpus"]["documents_in"] == stats["raw_corpus"]["documents_kept"]
    assert stats["deduped_shards"]["documents_in"] == stats["cleaned_corpus"]["documents_kept"]
    return stats


def test_bad_input_is_kept_dropped_or_quarantined(tmp_path):
    project = make_bad_project(tmp_path / "project")
    env = {**os.environ, "LLM_PIPELINE_CODE_VERSION": "test"}
    domain = "bad"
    # raw_corpus through the CLI in a process of its own, which reports its peak memory (VmHWM) as it exits. The
    # kernel's rusage of a child would not do: it also counts the pytest process the child was forked from.
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS_CLI, "stage", "raw_corpus", "--domain", domain,
                           "--config", str(project.config)], cwd=project.root, env=env, capture_output=True, text=True)
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    rss_mb = int(stderr.rsplit("VmHWM:", 1)[1].split()[0]) / 1024
    assert rss_mb < MAX_RAW_RSS_MB, f"raw_corpus peaked at {rss_mb:.0f} MB with a {HUGE_BYTES >> 20} MB document in its input"

    cfg = load_config(project.config, root=project.root)
    run_stage(cfg, "cleaned_corpus", domain)
    run_stage(cfg, "deduped_shards", domain)
    for d in project.domains[1:]:
        for stage in CURATION:
            run_stage(cfg, stage, d)

    seen: dict[str, str] = {}
    for d in project.domains:
        seen.update(outcomes(cfg.data_path, d))
    expected = {src: want for kind in project.kinds for src, want in kind.expected.items()}
    report = [f"{k.name:28s} " + ", ".join(f"{s.split('/')[-1]}={seen.get(s, 'MISSING')}" for s in k.expected) for k in project.kinds]
    print("\n".join(report))
    assert project.n_kinds >= 80, project.n_kinds
    assert {s: seen.get(s, "MISSING") for s in expected} == expected, "\n".join(report)
    # Nothing is unaccounted for: every item the stages saw is one of the planted ones.
    assert set(seen) == set(expected), set(seen) ^ set(expected)

    stats = {d: check_accounting(cfg, d) for d in project.domains}
    raw = stats[domain]["raw_corpus"]
    assert raw["documents_in"] == len(expected)
    assert raw["quarantine_reasons"]["document_too_large"] == sum(v == "quarantined:document_too_large" for v in expected.values())
    # The NUL escaped in a record does not survive cleaning; the legacy encodings were decoded, not garbled.
    by_id = {r["id"]: r["text"] for r in iter_records(cfg.data_path / "deduped_shards" / domain)}
    texts = {r["source"]: by_id[r["id"]] for r in iter_records(cfg.data_path / "raw_corpus" / domain, columns=["id", "source"])
             if r["id"] in by_id}  # by the raw source: cleaned_corpus redacts what looks like a name in a path
    assert "\x00" not in "".join(texts.values())
    assert "crêpes and soufflés" in texts["corpus/bad/latin1.txt"] and "cléar" in texts["corpus/bad/stray_bytes.txt"]
    assert texts["corpus/bad/utf16.txt"].startswith("Nurses check the chart")
    # Invisible controls are gone; special-token text stays text here (the packer tokenizes it as plain characters).
    invisible = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u2060\ufeff")
    assert not invisible & set("".join(texts.values()))
    assert texts["corpus/hostile/invisible.txt"].startswith("The inspector checked every smoke alarm in the building")
    assert "<|endoftext|>" in texts["corpus/hostile/special_tokens.txt"]
    # Bad input gives records with reasons, never a traceback in the CLI's output.
    assert json.loads(stdout)["stats"]["documents_in"] == raw["documents_in"]
    counts = Counter(v.split(":")[0] for v in seen.values())
    print(f"outcomes: {dict(counts)}; raw_corpus peak RSS {rss_mb:.0f} MB")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user and back")
def test_chmod_000_is_unreadable_for_an_unprivileged_reader(tmp_path):
    """Root ignores permission bits, so the reader runs with the effective uid of `nobody` for this check."""
    import tempfile

    from llm_pipeline.curation.readers import Quarantined, read_domain

    base = Path(tempfile.mkdtemp(prefix="llm-pipeline-perm-"))
    try:
        base.chmod(0o755)
        (base / "c").mkdir(mode=0o755)
        (base / "c" / "open.txt").write_text("A readable file for everyone on the machine.")
        locked = base / "c" / "locked.txt"
        locked.write_text("Nobody but root may read this file.")
        locked.chmod(0)
        (base / "c").chmod(0o755)
        (base / "p.yaml").write_text(f"data_dir: {base}/data\ndomains:\n  legal:\n    sources:\n      - path: c\n")
        cfg = load_config(base / "p.yaml", root=base)
        os.seteuid(65534)
        try:
            items = list(read_domain(cfg, "legal"))
        finally:
            os.seteuid(0)
        bad = [(i.source, i.reason) for i in items if isinstance(i, Quarantined)]
        assert bad == [("c/locked.txt", "unreadable")]
        assert [i["source"] for i in items if not isinstance(i, Quarantined)] == ["c/open.txt"]
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def test_sources_inside_outputs_are_refused_at_load(tmp_path):
    import yaml

    from llm_pipeline.config import ConfigError

    project = make_bad_project(tmp_path / "project")
    base = yaml.safe_load(project.config.read_text())
    for kind, (source, reason) in project.refused.items():
        cfg = {**base, "domains": {"bad": {"sources": [source]}}}
        path = project.root / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with pytest.raises(ConfigError, match=reason):
            load_config(path, root=project.root)
