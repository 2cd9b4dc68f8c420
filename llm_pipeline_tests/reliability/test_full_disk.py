"""A full disk at a stage's final save: one `error:` line, exit code 2, no traceback, and nothing partial left.

Every stage that writes a model, a tokenizer, shards or a report is run through the real CLI (`main(["stage", ...])`)
in a child process, twice: once with the disk "filling up" the moment its final save begins, then normally, so that
the next stage has its input. A disk cannot be filled without root here (no tmpfs, no loop device), so the child
lowers its own file-size limit (RLIMIT_FSIZE, `ulimit -f`) to 1 KiB when the save starts: from then on the kernel
fails every write past 1 KiB, in Python, in safetensors' and tokenizers' Rust writers and in pyarrow's C++ alike,
with EFBIG where a full disk gives ENOSPC, at the same call in the same save path. The handling is the same for
both (`io.no_room_reason`); the ENOSPC and EDQUOT forms each library reports are checked below without a child.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_pipeline.io import no_room_reason
from llm_pipeline_tests.training.fixtures import VOCAB, tiny_config, write_deduped_shards

STAGES = ["raw_corpus", "tokenizer", "base_checkpoint", "lora_adapter", "dpo_model", "reward_model", "rl_model",
          "eval_report"]
DRIVER = r"""
import resource, signal, sys, traceback
import pyarrow.parquet as pq
import transformers, peft
from llm_pipeline.cli import main
from llm_pipeline.evaluation import report

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of killing us
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
armed = [False]

def disk_fills_at(owner, name):
    real = getattr(owner, name)
    def save(*args, **kwargs):
        if armed[0]:
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
        return real(*args, **kwargs)
    setattr(owner, name, save)

# The final saves: shards, model weights (full and PEFT), tokenizer files, the report.
disk_fills_at(pq, "write_table")
disk_fills_at(transformers.PreTrainedModel, "save_pretrained")
disk_fills_at(peft.PeftModel, "save_pretrained")
disk_fills_at(transformers.PreTrainedTokenizerBase, "save_pretrained")
disk_fills_at(report, "render_markdown")

config, stages = sys.argv[1], sys.argv[2:]
for stage in stages:
    args = ["stage", stage, "--config", config] + (["--domain", "legal"] if stage == "raw_corpus" else [])
    for full in (True, False):
        armed[0] = full
        print(f"@@ {stage} {'full' if full else 'room'}", file=sys.stderr, flush=True)
        try:
            rc = main(args)
        except BaseException:
            traceback.print_exc()
            rc = 99
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        print(f"@@ rc {rc}", file=sys.stderr, flush=True)
        if rc != 0 and not full:
            sys.exit(1)
"""


def _leftovers(data: Path, stage: str) -> list[str]:
    """Temp folders and files of `stage` anywhere under the data folder (a failed run must leave none)."""
    return [str(p.relative_to(data)) for p in data.rglob("*")
            if p.name.startswith((f".tmp-{stage}", ".tmp-legal", f".{stage}", ".old-")) or p.name.endswith(".tmp")]


def test_a_full_disk_at_each_stages_final_save_is_one_line_and_leaves_nothing_partial(tmp_path):
    cfg = tiny_config(tmp_path, reward_model={"max_steps": 2, "batch_size": 4},
                      rl_model={"max_steps": 1, "max_new_tokens": 4, "eval_prompts": 2, "prompts_per_step": 2,
                                "generations_per_prompt": 2})
    write_deduped_shards(cfg.data_path)
    for domain in VOCAB:  # raw_corpus reads in/<domain>; the training stages read the shards written above
        (tmp_path / "in" / domain).mkdir(parents=True)
        (tmp_path / "in" / domain / "a.txt").write_text("The tenant asked the landlord to repair the heating. " * 40)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LLM_PIPELINE_CODE_VERSION": "test"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(config), *STAGES], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    runs = proc.stderr.split("@@ ")[1:]
    for stage in STAGES:
        full = next(r for r in runs if r.startswith(f"{stage} full"))
        body, rc = full.split("\n", 1)[1], runs[runs.index(full) + 1]
        assert rc.strip() == "rc 2", f"{stage}: {full[-2000:]}"
        errors = [ln for ln in body.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, f"{stage}: {body[-2000:]}"
        assert f"cannot write the {stage} output" in errors[0] and "file too large" in errors[0], errors[0]
        assert "free" in errors[0]
    data = cfg.data_path
    for stage in STAGES:  # the second, roomy run of each stage finished and nothing of the failed one is left
        final = data / stage / "legal" if stage == "raw_corpus" else data / stage
        assert (final / "_manifest.json").is_file(), stage
        assert _leftovers(data, stage) == [], stage


class SafetensorError(Exception):
    """The shape of safetensors' error (a Rust io::Error turned into text), without importing it for the name."""


@pytest.mark.parametrize("exc, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (OSError(errno.EFBIG, "File too large"), "file too large (a file-size limit)"),
    (SafetensorError('Error while serializing: I/O error: No space left on device (os error 28)'), "no space left on device"),
    (Exception("No space left on device (os error 28)"), "no space left on device"),  # tokenizers' save
    (RuntimeError("Error while serializing: IoError(Os { code: 122, kind: FilesystemQuotaExceeded })  os error 122"),
     "disk quota exceeded"),
    (OSError(errno.EACCES, "Permission denied"), None),
    (ValueError("model has no weights"), None),
])
def test_no_room_is_recognised_in_every_writer_s_words(exc, reason):
    assert no_room_reason(exc) == reason
    try:  # the way stage code wraps it: the cause is what counts
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("saving the adapter failed") from inner
    except RuntimeError as outer:
        assert no_room_reason(outer) == reason
