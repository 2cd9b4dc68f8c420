"""Turn a stage's result into Dagster metadata: counts, the output path, its DVC hash and a markdown preview."""

from __future__ import annotations

import json
import re
from typing import Any

import dagster as dg

from llm_pipeline.runner import StageResult

# Counters shown first in the UI when a stage reports them.
HEADLINE = (
    "documents_in", "documents_kept", "quarantined", "bytes_in", "bytes_kept", "vocab_size", "train_tokens",
    "parameters", "trainable_params", "train_loss", "eval_loss", "eval_perplexity",
)


# Fenced blocks and inline code spans: markdown shows their contents literally, so they are left as they are.
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)


def markdown(text: str) -> dg.MetadataValue:
    """Markdown metadata whose prose shows exactly as written. The UI renders markdown with inline HTML, so a
    redaction tag such as `<PERSON>` in a sample would be taken for an unknown element and vanish; escaping `&` and
    `<` outside code keeps tables, quotes and emphasis working and shows the tag itself."""
    parts = _CODE.split(text)
    return dg.MetadataValue.md("".join(p if i % 2 else p.replace("&", "&amp;").replace("<", "&lt;") for i, p in enumerate(parts)))


def _value(v: Any) -> dg.MetadataValue:
    if isinstance(v, bool):
        return dg.MetadataValue.bool(v)
    if isinstance(v, int):
        return dg.MetadataValue.int(v)
    if isinstance(v, float):
        return dg.MetadataValue.float(v)
    if isinstance(v, str):
        return dg.MetadataValue.text(v)
    return dg.MetadataValue.json(json.loads(json.dumps(v, default=str)))


def result_metadata(result: StageResult) -> dict[str, dg.MetadataValue]:
    md: dict[str, dg.MetadataValue] = {}
    stats = result.stats
    for key in HEADLINE:
        if key in stats and stats[key] is not None:
            md[key] = _value(stats[key])
    for key, value in stats.items():
        if key not in md and value is not None:
            md[key] = _value(value)
    md["path"] = dg.MetadataValue.path(str(result.output_dir))
    md["dvc_hash"] = dg.MetadataValue.text(result.dvc_hash)
    md["seconds"] = dg.MetadataValue.float(round(result.seconds, 3))
    if result.preview:
        md["preview"] = markdown(result.preview)
    for key, value in result.metadata.items():
        if key in md:
            continue
        if isinstance(value, dg.MarkdownMetadataValue):
            md[key] = markdown(value.md_str or "")
        elif isinstance(value, dg.MetadataValue):
            md[key] = value
        elif key.endswith("_md"):
            md[key] = markdown(str(value))
        else:
            md[key] = _value(value)
    return md
