"""Nothing outside the allowed roots is opened or listed: not by the reader, not by the source fingerprint, not by
the Hugging Face path. Proven in a subprocess whose audit hook records every open and every folder listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from llm_pipeline.config import load_config
from llm_pipeline.sources import domain_fingerprint

TEXT = "The supplier shall deliver the goods within thirty days of the order, and the buyer shall pay on delivery."

AUDIT = r"""
import json, os, sys
seen = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        seen.append(("open", os.fsdecode(args[0])))
    elif event in ("os.listdir", "os.scandir") and args and args[0] is not None and not isinstance(args[0], int):
        seen.append((event, os.fsdecode(args[0])))
from llm_pipeline.config import load_config
from llm_pipeline.curation.readers import read_domain
from llm_pipeline.sources import domain_fingerprint
cfg = load_config(sys.argv[1], root=sys.argv[2])
sys.addaudithook(hook)
out = {}
for d in cfg.domain_names:
    fp = domain_fingerprint(cfg, d)
    items = list(read_domain(cfg, d))
    out[d] = [getattr(i, "reason", None) or "kept" for i in items]
sys.addaudithook(lambda *a: None)
print(json.dumps({"seen": seen, "outcomes": out}))
"""


def _project(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "project"
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "secret.txt").write_text("outside the roots: never read")
    (outside / "deep" / "more.txt").write_text("outside the roots: never listed")
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    (corpus / "a.txt").write_text(TEXT)
    (corpus / ".notes.txt").write_text(TEXT + " A hidden file is read, so it is fingerprinted.")
    os.symlink(outside / "secret.txt", corpus / "leak.txt")
    os.symlink(outside, corpus / "leak_dir")
    os.symlink("/etc/passwd", corpus / "passwd.txt")
    hf = root / "hfdata"
    hf.mkdir()
    (hf / "train.jsonl").write_text(json.dumps({"text": TEXT}) + "\n")
    os.symlink(outside / "secret.txt", hf / "extra.jsonl")
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"data_dir": "data", "domains": {
        "inside": {"sources": [{"path": "corpus"}]},
        "etc": {"sources": [{"path": "/etc"}]},
        "above": {"sources": [{"path": "../.."}]},
        "outside": {"sources": [{"path": str(outside)}]},
        "hf": {"sources": [{"hf_dataset": "./hfdata"}]},
    }}))
    return root, config


def test_nothing_outside_the_roots_is_opened_or_listed(tmp_path):
    root, config = _project(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", AUDIT, str(config), str(root)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    touched = [(ev, p) for ev, p in report["seen"]]
    outside = str(tmp_path / "outside")
    bad = [(ev, p) for ev, p in touched
           if os.path.realpath(p).startswith((outside, "/etc")) or os.path.realpath(p) == str(tmp_path)
           or p.startswith(str(tmp_path / "project" / ".."))]
    assert not bad, bad
    assert any(p.endswith("corpus/a.txt") for _, p in touched)  # the hook does see the reads it should
    out = report["outcomes"]
    assert sorted(out["inside"]) == ["kept", "kept", "path_outside_root", "path_outside_root", "path_outside_root"]
    assert out["etc"] == out["above"] == out["outside"] == ["path_outside_root"]
    assert out["hf"] == ["path_outside_root"]


def test_the_fingerprint_covers_exactly_the_files_read(tmp_path):
    root, config = _project(tmp_path)
    cfg = load_config(config, root=root)
    before = domain_fingerprint(cfg, "inside")
    (root / "corpus" / ".notes.txt").write_text(TEXT + " Edited.")  # read by the reader: the change is seen
    edited = domain_fingerprint(cfg, "inside")
    assert edited != before
    (tmp_path / "outside" / "secret.txt").write_text("changed outside")  # never read: no change
    assert domain_fingerprint(cfg, "inside") == edited


def test_a_file_that_vanishes_is_a_reason_not_a_traceback(tmp_path):
    from llm_pipeline.curation.readers import Quarantined, iter_files, read_file

    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.txt").write_text(TEXT)
    files = iter_files(tmp_path / "c", "**/*", "c")
    first = next(files)
    (tmp_path / "c" / "1.txt").unlink()  # listed already, gone before it is stat'ed
    rest = list(files)
    assert [(q.source, q.reason) for q in rest if isinstance(q, Quarantined)] == [("c/1.txt", "vanished")]
    (tmp_path / "c" / "2.txt").unlink()  # stat'ed and handed out, gone before it is opened
    assert [(q.source, q.reason) for q in read_file(tmp_path / "c" / "2.txt", "c/2.txt", "text")] == [("c/2.txt", "vanished")]
    assert first.name == "0.txt"
