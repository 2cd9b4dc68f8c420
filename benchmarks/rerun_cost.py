"""What a re-run costs after one of four domains changes, against a full run (issue: orchestration).

Builds a temporary project with four domains from the shipped sample (legal, medicine, software docs, software
issues), materializes the whole graph through Dagster in-process, changes one file of one domain, asks the same
logic the source sensor uses which domains are stale, and materializes only those partitions plus the
unpartitioned assets downstream. Prints both wall times, the ratio, a per-asset table from the Dagster event log
(step time, the stage's own time, and the rest of the step: blocking checks, first imports), the Dagster run overhead
outside steps, and checks that the other domains' partitions were left untouched. Then it makes a second edit,
deletes the per-document results the runs keep (`data/.cache`, see `cleaned_corpus.reuse_results`) and times the same
re-run again: the baseline that shows what reusing unchanged documents' results buys.

`--docs-per-domain N` grows every domain to about N documents before the runs, with more documents from the sample
generator's own templates (`scripts/make_sample_corpus.py`: court summaries; guidelines and HTML leaflets; API pages
and changelogs; post-incident reviews; contracts, clinic notes and issues), each with its own names, numbers
and PII (see `grow_domains`). The shipped sample has ~100 documents a domain; a production domain has
thousands. Several sizes may be given; the sample size runs first, so the summary shows the ratio at both. A size
whose run stops (a blocking check failed) is reported with the reason and left out of the summary.

    .venv/bin/python benchmarks/rerun_cost.py                          # the sample as shipped
    .venv/bin/python benchmarks/rerun_cost.py --docs-per-domain 2000   # the sample, then ~2,000 documents a domain

The process starts cold: the full run pays the first import of spaCy/Presidio, torch, transformers, TRL and wandb,
which the re-run (same process) does not. That one-time cost is measured in a fresh process and shown beside the
ratio, with the ratio it leaves when taken out of the full run.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET = 0.35
# The libraries the stages import on first use, in the order a full run meets them.
HEAVY_IMPORTS = [
    ("dagster", "import dagster"),
    ("curation (spaCy, Presidio, GX)", "import llm_pipeline.stages.cleaned_corpus, llm_pipeline.curation.validation"),
    ("torch + transformers", "import torch, transformers"),
    ("trl + peft", "import trl, peft"),
    ("wandb", "import wandb"),
    ("matplotlib", "import matplotlib.pyplot"),
]


# ---------------------------------------------------------------- the project
def _generator():
    spec = importlib.util.spec_from_file_location("make_sample_corpus", REPO / "scripts/make_sample_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _count_documents(cfg, domain: str) -> int:
    from llm_pipeline.sources import _files

    n = 0
    for src in cfg.domains[domain].sources:
        for f in _files(cfg.resolve(src.path), src.glob):
            if f.name.endswith((".jsonl", ".jsonl.gz", ".csv")):
                n += max(0, sum(1 for _ in _open_text(f)) - f.name.endswith(".csv"))
            elif f.suffix == ".json":
                n += len(json.loads(f.read_text(encoding="utf-8")))
            else:
                n += 1
    return n


def _open_text(f: Path):
    import gzip

    opener = gzip.open if f.name.endswith(".gz") else open
    with opener(f, "rt", encoding="utf-8") as fh:
        yield from fh


class _Files:
    """What the generator's `leaflet` writes into (it takes the corpus object): path -> text."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def put(self, rel: str, text: str) -> None:
        self.files[rel] = text


def _kinds(gen, f) -> dict[str, list]:
    """Per domain, makers of one generated document each: index -> [(path under the sample folder, text)]."""
    def postmortem(i):
        f.ctx = {}
        return [(f"software/generated/postmortem_g{i:05d}.txt", f"Post-incident review {f.slot('year')}-{i % 100:02d}\n\n"
                 + "\n\n".join(f.sentences(gen.POSTMORTEM, f.rng.randint(4, 7))) + "\n")]

    def leaflet(i):
        out = _Files()
        gen.leaflet(f, out, f"medicine/generated/leaflet_g{i:05d}.html")
        return list(out.files.items())

    kinds = {
        "legal": [lambda i: [(f"legal/generated/case_g{i:05d}.md", gen.court_summary(f))]],
        "medicine": [lambda i: [(f"medicine/generated/guideline_g{i:05d}.md", gen.guideline(f))], leaflet],
        "software_docs": [lambda i: [(f"software/generated/api_g{i:05d}.md", gen.api_doc(f))],
                          lambda i: [(f"software/generated/changelog_g{i:05d}.md", gen.changelog(f))]],
        "software_issues": [postmortem],
    }
    kinds["legal"].append(lambda i: [(f"legal/generated/contract_g{i:05d}.txt", gen.contract(f))])
    kinds["medicine"].append(lambda i: [(f"medicine/generated/note_g{i:05d}.txt", gen.clinic_note(f))])
    kinds["software_issues"].append(lambda i: [(f"software/generated/issues_g{i:05d}.jsonl", json.dumps(gen.issue(f, 100_000 + i), sort_keys=True) + "\n")])
    return kinds


def grow_domains(sample: Path, cfg, docs_per_domain: int, seed: int = 7) -> dict[str, int]:
    """Add generated documents until every domain holds about `docs_per_domain`, the domain's kinds in turn."""
    gen = _generator()
    f = gen.Filler(random.Random(seed))
    kinds = _kinds(gen, f)
    added: dict[str, int] = {}
    for domain in cfg.domain_names:
        missing = max(0, docs_per_domain - _count_documents(cfg, domain))
        for i in range(missing):
            for rel, text in kinds[domain][i % len(kinds[domain])](i):
                path = sample / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        added[domain] = missing
    return added


def make_project(base: Path, docs_per_domain: int = 0) -> Path:
    sample = base / "sample"
    shutil.copytree(REPO / "data/sample", sample, ignore=shutil.ignore_patterns("*.json", "README.md"))
    cfg = yaml.safe_load((REPO / "configs/default.yaml").read_text())
    cfg["data_dir"] = str(base / "data")
    cfg["domains"] = {
        "legal": {"licence": "CC-BY-4.0", "sources": [{"path": str(sample / "legal")}]},
        "medicine": {"licence": "CC-BY-4.0", "sources": [{"path": str(sample / "medicine")}]},
        "software_docs": {"licence": "Apache-2.0", "sources": [{"path": str(sample / "software"), "glob": "**/*.md"},
                                                                 {"path": str(sample / "software"), "glob": "**/*.html"}]},
        "software_issues": {"licence": "Apache-2.0", "sources": [{"path": str(sample / "software"), "glob": "**/*.jsonl", "text_field": "body"},
                                                                   {"path": str(sample / "software"), "glob": "**/*.txt"}]},
    }
    path = base / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if docs_per_domain:
        from llm_pipeline.config import load_config

        grow_domains(sample, load_config(path, root=base), docs_per_domain)
    return path


# ---------------------------------------------------------------- timing from the Dagster event log
@dataclass
class StepTime:
    label: str
    step_s: float  # the Dagster step: the asset function, its blocking checks, the step's own events
    stage_s: float  # the stage's own run (runner.run_stage: inputs, stage function, stats, manifest)
    detail: dict = field(default_factory=dict)  # the stage's own breakdown, where it records one

    @property
    def outside_s(self) -> float:
        """Step time outside the stage: blocking checks (PII audit, Great Expectations), first imports, events."""
        return self.step_s - self.stage_s


@dataclass
class Timeline:
    steps: list[StepTime]
    runs: int
    run_overhead_s: float  # Dagster run time outside its steps (run creation, event log, start/end events)


def _detail(stats: dict) -> dict:
    keys = ("train_seconds", "reference_seconds", "timings_s")
    return {k: stats[k] for k in keys if k in stats}


def timeline(instance, run_ids: list[str], data_path: Path) -> Timeline:
    import dagster as dg

    steps, overhead = [], 0.0
    records = sorted(instance.get_run_records(dg.RunsFilter(run_ids=run_ids)), key=lambda r: r.create_timestamp)
    for rec in records:
        run = rec.dagster_run
        partition = run.tags.get("dagster/partition")
        durations, stage = {}, {}
        for e in instance.all_logs(run.run_id):
            ev = e.dagster_event
            if ev is None:
                continue
            if ev.event_type_value == "STEP_SUCCESS":
                durations[ev.step_key] = ev.event_specific_data.duration_ms / 1000
            elif ev.event_type_value == "ASSET_MATERIALIZATION":
                mat = ev.event_specific_data.materialization
                reuse = {k: mat.metadata[k].value for k in ("documents_reused", "documents_computed") if k in mat.metadata}
                stage[ev.step_key] = (mat.asset_key.to_user_string(), float(mat.metadata["seconds"].value) if "seconds" in mat.metadata else 0.0, reuse)
        for key, seconds in durations.items():
            asset, stage_s, reuse = stage.get(key, (key, 0.0, {}))
            metrics = data_path / "metrics" / (f"{asset}-{partition}.json" if partition else f"{asset}.json")
            stats = json.loads(metrics.read_text()) if metrics.exists() else {}
            steps.append(StepTime(asset + (f"[{partition}]" if partition else ""), seconds, stage_s, {**_detail(stats), **reuse}))
        wall = (rec.end_time or time.time()) - rec.create_timestamp.timestamp()
        overhead += wall - sum(durations.values())
    return Timeline(steps, len(records), overhead)


def heavy_import_seconds() -> list[tuple[str, float]]:
    """Seconds each heavy library takes to import the first time, measured in one fresh process, in order."""
    code = "import json, time\nout = []\n"
    for name, stmt in HEAVY_IMPORTS:
        code += f"t = time.perf_counter()\n{stmt}\nout.append(({name!r}, time.perf_counter() - t))\n"
    code += "print(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return []
    return [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


# ---------------------------------------------------------------- one measurement
@dataclass
class Measurement:
    docs_per_domain: int
    documents: dict[str, int]
    full_s: float
    rerun_s: float
    full_steps: Timeline
    rerun_steps: Timeline
    no_reuse_s: float  # the same kind of re-run with the reused results removed first (the cache folder deleted)
    no_reuse_steps: Timeline
    stale: list[str]
    untouched: int
    expected_untouched: int
    changed: int
    unpartitioned_changed: dict[str, bool]
    vocabulary_unchanged: bool


def measure(docs_per_domain: int, keep: bool) -> Measurement:
    import dagster as dg
    from rich.console import Console

    from llm_pipeline.config import load_config
    from llm_pipeline.curation.result_cache import CACHE_DIR
    from llm_pipeline.defs.local_run import Step, materialize_steps, plan
    from llm_pipeline.defs.resources import PipelineConfigResource
    from llm_pipeline.io import dvc_hash
    from llm_pipeline.sources import stale_domains
    from llm_pipeline.stages import ORDER, STAGES

    base = Path(tempfile.mkdtemp(prefix="llmp-rerun-"))
    console = Console(file=io.StringIO(), record=True, width=140)  # shown only when a run stops

    def materialize(steps, what: str) -> None:
        if not materialize_steps(cfg, resource, steps, instance, console=console):
            raise SystemExit(f"{what} stopped; no ratio at this size.\n{console.export_text()}")

    try:
        path = make_project(base, docs_per_domain)
        cfg = load_config(path, root=base)
        documents = {d: _count_documents(cfg, d) for d in cfg.domain_names}
        resource = PipelineConfigResource(config_path=str(path), root=str(base))
        home = base / "home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        partitioned = [n for n in ORDER if STAGES[n].partitioned]
        unpartitioned = [n for n in ORDER if not STAGES[n].partitioned]
        with dg.DagsterInstance.local_temp(str(home)) as instance:
            t0 = time.perf_counter()
            materialize(plan(cfg), "the full run")
            full = time.perf_counter() - t0
            full_ids = [r.run_id for r in instance.get_runs()]
            before = {(n, d): dvc_hash(cfg.data_path / n / d) for n in partitioned for d in cfg.domain_names}
            before_un = {n: dvc_hash(cfg.data_path / n) for n in unpartitioned}
            vocab_before = dvc_hash(cfg.data_path / "tokenizer/tokenizer.json")

            victim = sorted((base / "sample/medicine/notes").glob("*.txt"))[0]
            victim.write_text(victim.read_text() + "\nFollow-up: the patient reported improved sleep after two weeks "
                              "on the adjusted dose, and the plan is to review kidney function at the next visit.\n")
            stale = stale_domains(cfg)
            steps = [Step(n, d) for n in partitioned for d in stale] + [Step(n, None) for n in unpartitioned]
            t0 = time.perf_counter()
            materialize(steps, "the re-run")
            rerun = time.perf_counter() - t0
            rerun_ids = [r.run_id for r in instance.get_runs() if r.run_id not in set(full_ids)]
            after = {(n, d): dvc_hash(cfg.data_path / n / d) for n in partitioned for d in cfg.domain_names}
            after_un = {n: dvc_hash(cfg.data_path / n) for n in unpartitioned}
            full_steps = timeline(instance, full_ids, cfg.data_path)
            rerun_steps = timeline(instance, rerun_ids, cfg.data_path)

            # The baseline for result reuse: the same edit again, with the previous per-document results deleted,
            # so the changed domain is curated from scratch.
            victim.write_text(victim.read_text() + "\nThe next review is booked for the spring.\n")
            shutil.rmtree(cfg.data_path / CACHE_DIR)
            seen = {r.run_id for r in instance.get_runs()}
            t0 = time.perf_counter()
            materialize(steps, "the re-run without reused results")
            no_reuse = time.perf_counter() - t0
            no_reuse_steps = timeline(instance, [r.run_id for r in instance.get_runs() if r.run_id not in seen], cfg.data_path)
        return Measurement(
            docs_per_domain=docs_per_domain, documents=documents, full_s=full, rerun_s=rerun, full_steps=full_steps,
            rerun_steps=rerun_steps, no_reuse_s=no_reuse, no_reuse_steps=no_reuse_steps, stale=stale,
            untouched=sum(1 for k in before if k[1] not in stale and before[k] == after[k]),
            expected_untouched=len(partitioned) * (len(cfg.domain_names) - len(stale)),
            changed=sum(1 for k in before if k[1] in stale and before[k] != after[k]),
            unpartitioned_changed={n: before_un[n] != after_un[n] for n in unpartitioned},
            vocabulary_unchanged=vocab_before == dvc_hash(cfg.data_path / "tokenizer/tokenizer.json"),
        )
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


# ---------------------------------------------------------------- printing
def _group(steps: list[StepTime]) -> dict[str, list[StepTime]]:
    out: dict[str, list[StepTime]] = {}
    for st in steps:
        out.setdefault(st.label.split("[")[0], []).append(st)
    return out


def print_table(m: Measurement) -> None:
    full, rerun, cold = _group(m.full_steps.steps), _group(m.rerun_steps.steps), _group(m.no_reuse_steps.steps)
    print(f"{'asset':16s} {'steps':>5s} {'full: step s':>12s} {'stage s':>8s} {'outside s':>9s} | "
          f"{'steps':>5s} {'re-run: step s':>14s} {'stage s':>8s} {'outside s':>9s} | {'no reuse: step s':>16s}")
    for asset in full:
        f, r, c = full[asset], rerun.get(asset, []), cold.get(asset, [])
        print(f"{asset:16s} {len(f):5d} {sum(x.step_s for x in f):12.1f} {sum(x.stage_s for x in f):8.1f} "
              f"{sum(x.outside_s for x in f):9.1f} | {len(r):5d} {sum(x.step_s for x in r):14.1f} "
              f"{sum(x.stage_s for x in r):8.1f} {sum(x.outside_s for x in r):9.1f} | {sum(x.step_s for x in c):16.1f}")
    print("  (step = the Dagster step; stage = runner.run_stage; outside = blocking checks, first imports, step events;")
    print("   no reuse = the same re-run with the per-document results of the last run deleted first)")
    for name, tl, wall in (("full", m.full_steps, m.full_s), ("re-run", m.rerun_steps, m.rerun_s),
                           ("re-run, no reuse", m.no_reuse_steps, m.no_reuse_s)):
        steps = sum(x.step_s for x in tl.steps)
        print(f"  {name}: {tl.runs} Dagster runs, {steps:.1f} s in steps ({sum(x.stage_s for x in tl.steps):.1f} s in stages), "
              f"{tl.run_overhead_s:.1f} s Dagster run overhead outside steps ({tl.run_overhead_s / max(1, tl.runs):.2f} s a run), "
              f"{wall - steps - tl.run_overhead_s:.1f} s between runs")
    print("  stage breakdowns (re-run):")
    for st in m.rerun_steps.steps:
        if st.detail:
            print(f"    {st.label}: {json.dumps(st.detail)}")


def curation_floor(m: Measurement) -> float:
    """The ratio if everything after curation cost nothing: the re-run's curation steps over the full run's."""
    def curation(steps: list[StepTime]) -> float:
        return sum(s.step_s for s in steps if "[" in s.label)

    total = curation(m.full_steps.steps)
    return curation(m.rerun_steps.steps) / total if total else float("nan")


def print_measurement(m: Measurement) -> None:
    size = "the shipped sample" if not m.docs_per_domain else f"~{m.docs_per_domain:,} documents a domain"
    print(f"\n=== {size}: documents {m.documents}")
    print(f"stale domains found: {m.stale}")
    print_table(m)
    print(f"{'full run (4 domains)':32s} {m.full_s:8.1f} s")
    print(f"{'re-run after one domain changed':32s} {m.rerun_s:8.1f} s")
    print(f"{'the same, no reused results':32s} {m.no_reuse_s:8.1f} s")
    print(f"ratio re-run / full: {m.rerun_s / m.full_s:.2f}x (target <= {TARGET}x); without reused results "
          f"{m.no_reuse_s / m.full_s:.2f}x; re-run curation / full curation is {curation_floor(m):.2f}: the ratio if "
          "nothing after curation cost anything")
    print(f"partitions of unchanged domains left untouched: {m.untouched}/{m.expected_untouched}; "
          f"changed domain's partitions rewritten: {m.changed}; unpartitioned outputs that changed: "
          f"{', '.join(n for n, c in m.unpartitioned_changed.items() if c) or 'none'}; "
          f"tokenizer vocabulary {'unchanged' if m.vocabulary_unchanged else 'changed'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs-per-domain", type=int, nargs="*", default=[], metavar="N",
                    help="also measure with every domain grown to about N documents (the sample size always runs first)")
    ap.add_argument("--no-sample", action="store_true", help="skip the run at the shipped sample's size")
    ap.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = ap.parse_args()

    imports = heavy_import_seconds()
    sizes = ([] if args.no_sample else [0]) + [n for n in args.docs_per_domain if n > 0]
    results = []
    for n in sizes:
        try:
            m = measure(n, args.keep)
        except SystemExit as stop:
            print(f"\n=== {f'~{n:,} documents a domain' if n else 'the shipped sample'}: {stop}")
            continue
        print_measurement(m)
        results.append(m)

    first_import = sum(s for _, s in imports)
    print("\none-time imports in a fresh process (paid by the full run, not by the re-run in the same process): "
          + ", ".join(f"{n} {s:.1f} s" for n, s in imports) + f"; total {first_import:.1f} s")
    print("\nsummary")
    for i, m in enumerate(results):
        size = "sample (as shipped)" if not m.docs_per_domain else f"~{m.docs_per_domain:,} docs/domain"
        warm = f"; without the first run's imports {m.rerun_s / (m.full_s - first_import):.2f}x" if i == 0 and first_import < m.full_s else ""
        print(f"  {size:22s} documents {sum(m.documents.values()):6,d}: full {m.full_s:7.1f} s, re-run {m.rerun_s:7.1f} s, "
              f"ratio {m.rerun_s / m.full_s:.2f}x (target <= {TARGET}x){warm}; without reused results "
              f"{m.no_reuse_s:7.1f} s, {m.no_reuse_s / m.full_s:.2f}x")
    return 0 if len(results) == len(sizes) else 1


if __name__ == "__main__":
    sys.exit(main())
