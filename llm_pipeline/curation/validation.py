"""Great Expectations checks on one domain's deduped shards: the gate before any model trains on them.

The suite (Great Expectations 1.x, an ephemeral in-memory context, a pandas data source) asserts that the text is
present and of sane length, ids are unique, the language is one the domain allows, no e-mail / SSN / credit-card /
IBAN-looking string survived PII redaction, and the domain has at least ``min_documents`` documents. The context and
suites are built once per process (importing GX alone takes seconds), so the Dagster asset check can call this on
every materialization.

Memory stays bounded: text expectations run per batch of ``batch_rows`` rows and their counts are summed; only the
id column of the whole domain is held at once, for the uniqueness and row-count expectations.

    outcome = validate_shards(data/"deduped_shards"/"legal", cfg, "legal")
    outcome.passed, outcome.results, outcome.summary
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from llm_pipeline.config import PipelineConfig
from llm_pipeline.io import shard_files

# Patterns of PII that must not survive redaction. Kept strict (separators, issuer prefixes) so ordinary numbers in
# legal or technical text (docket numbers, versions) do not fail the check. RE2-compatible (no look-arounds), since
# pandas may run them through pyarrow.
PII_PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "us_ssn": r"\b\d{3}-\d{2}-\d{4}\b",
    "credit_card": r"\b(?:4\d{3}|5[1-5]\d{2}|3[47]\d{2}|6011)[ -]?\d{4}[ -]?\d{4}[ -]?\d{1,4}\b",
    "iban": r"\b[A-Z]{2}\d{2} ?[A-Z0-9]{4} ?[A-Z0-9]{4} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){0,4}\b",
}


@dataclass
class ValidationOutcome:
    passed: bool
    results: list[dict[str, Any]] = field(default_factory=list)  # one per expectation: name, success, observed
    summary: str = ""


@lru_cache(maxsize=1)
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs at INFO/WARNING about its own plumbing on every validation; the outcome carries what matters.
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = ctx.data_sources.add_pandas("llm_pipeline").add_dataframe_asset("deduped_shards")
    return gx, ctx, asset.add_batch_definition_whole_dataframe("whole")


@lru_cache(maxsize=64)
def _suites(min_chars: int, max_chars: int, languages: tuple[str, ...], min_documents: int):
    """(text suite, id suite) for one set of bounds; cached because GX suites are named and live in the context."""
    gx, ctx, _ = _context()
    key = f"{min_chars}-{max_chars}-{'_'.join(languages) or 'any'}-{min_documents}"
    text_suite = gx.ExpectationSuite(name=f"deduped_text-{key}")
    text_suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column="text"))
    text_suite.add_expectation(gx.expectations.ExpectColumnValueLengthsToBeBetween(column="text", min_value=min_chars, max_value=max_chars))
    if languages:
        text_suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column="language", value_set=list(languages)))
    for pattern in PII_PATTERNS.values():
        text_suite.add_expectation(gx.expectations.ExpectColumnValuesToNotMatchRegex(column="text", regex=pattern))
    id_suite = gx.ExpectationSuite(name=f"deduped_ids-{key}")
    id_suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column="id"))
    id_suite.add_expectation(gx.expectations.ExpectTableRowCountToBeBetween(min_value=min_documents))
    return ctx.suites.add(text_suite), ctx.suites.add(id_suite)


def _name(result) -> str:
    """A readable expectation name: the type, plus the column and the PII pattern where there is one."""
    cfg = result.expectation_config
    kwargs = cfg.kwargs
    name = cfg.type
    if "column" in kwargs:
        name += f"[{kwargs['column']}]"
    if "regex" in kwargs:
        label = next((k for k, v in PII_PATTERNS.items() if v == kwargs["regex"]), "regex")
        name += f"[{label}]"
    return name


def _observed(result) -> Any:
    r = result.result or {}
    if "observed_value" in r:
        return r["observed_value"]
    return {"unexpected_count": r.get("unexpected_count", 0), "examples": [str(v)[:80] for v in r.get("partial_unexpected_list", [])[:3]]}


def _merge(results: dict[str, dict[str, Any]], validation) -> None:
    """Fold one batch's results into the running per-expectation results (counts add up, examples accumulate)."""
    for res in validation.results:
        name = _name(res)
        obs = _observed(res)
        error = (res.exception_info or {}).get("exception_message") if isinstance(res.exception_info, dict) else None
        prev = results.get(name)
        if prev is None:
            results[name] = {"name": name, "success": bool(res.success), "observed": obs}
        else:
            prev["success"] = prev["success"] and bool(res.success)
            if isinstance(obs, dict) and isinstance(prev["observed"], dict):
                prev["observed"]["unexpected_count"] += obs["unexpected_count"]
                prev["observed"]["examples"] = (prev["observed"]["examples"] + obs["examples"])[:3]
        if error:
            results[name]["error"] = error


def validate_shards(folder: Path, cfg: PipelineConfig, domain: str) -> ValidationOutcome:
    """Run the deduped-shards suite over every shard in `folder` (one domain's output)."""
    import pandas as pd

    vcfg = cfg.validation
    languages = tuple(cfg.domains[domain].languages) if domain in cfg.domains else ()
    _, _, batch_def = _context()
    text_suite, id_suite = _suites(vcfg.min_chars, vcfg.max_chars, languages, vcfg.min_documents)
    results: dict[str, dict[str, Any]] = {}
    ids: list[str] = []
    columns = ["id", "text", "language"]
    for path in shard_files(folder):
        pf = pq.ParquetFile(path)
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            results[f"shard_columns[{path.name}]"] = {"name": f"shard_columns[{path.name}]", "success": False, "observed": {"missing": missing}}
            continue
        for batch in pf.iter_batches(batch_size=vcfg.batch_rows, columns=columns):
            frame = batch.to_pandas()
            ids.extend(frame["id"].tolist())
            _merge(results, batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(text_suite))
    id_frame = pd.DataFrame({"id": pd.Series(ids, dtype=object)})
    _merge(results, batch_def.get_batch(batch_parameters={"dataframe": id_frame}).validate(id_suite))
    rows = list(results.values())
    passed = all(r["success"] for r in rows)
    return ValidationOutcome(passed=passed, results=rows, summary=_summary(domain, len(ids), passed, rows))


def _summary(domain: str, n_docs: int, passed: bool, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"### Validation of `{domain}`: {'passed' if passed else 'FAILED'} ({n_docs} documents)",
        "",
        "| expectation | result | observed |",
        "|---|---|---|",
    ]
    for r in rows:
        observed = str(r["observed"]).replace("|", "\\|")
        lines.append(f"| `{r['name']}` | {'pass' if r['success'] else '**fail**'} | {observed} |")
    return "\n".join(lines) + "\n"
