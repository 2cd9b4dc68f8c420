from llm_pipeline.evaluation.report import Cell, Table, headline, md_table, render_html, render_markdown, summary_table


def _metrics() -> dict:
    def ppl(p, bpb):
        return {"overall": {"perplexity": p, "bits_per_byte": bpb}, "by_domain": {"legal": {"perplexity": p, "bits_per_byte": bpb}}}

    return {
        "pipeline": "t",
        "models": ["base", "sft", "dpo"],
        "eval_documents": {"legal": 3},
        "perplexity": {"base": ppl(20.0, 2.0), "sft": ppl(10.0, 1.5), "dpo": ppl(25.0, 2.2)},
        "tasks": {m: {"examples": 2, "rouge_l": r, "exact_match": 0.0, "by_domain": {}} for m, r in [("base", 0.1), ("sft", 0.3), ("dpo", 0.3)]},
        "preference": {"pairs": 4, "accuracy": 0.75, "length_baseline_accuracy": 0.5, "mean_margin": 0.2, "beta": 0.1, "by_domain": {}},
        "contamination": {"ngram": 8, "threshold": 0.05, "sets": {"eval documents": {"items": 3, "contaminated": 1, "share": 1 / 3, "too_short": 0, "flagged": True, "examples": [{"ngram": "a b c d e f g h"}]}}, "flagged": ["eval documents"]},
        "samples": [{"prompt": "<b>x</b> | y", "reference": "r", "source": "config", "outputs": {"base": "o1", "sft": "o2", "dpo": "o3"}}],
        "training": {},
        "lineage": {"inputs": {"tokenizer": "abc.dir"}, "code_version": "0.1.0"},
        "notes": ["`pairs_eval.jsonl` is missing"],
    }


def test_headline_numbers():
    h = headline(_metrics())
    assert h["perplexity"] == {"base": 20.0, "sft": 10.0, "dpo": 25.0}
    assert h["preference_accuracy"] == 0.75 and h["contamination_flagged"] == 1


def test_summary_colours_each_tuned_model_against_the_base():
    rows = {r[0].split(" ")[0]: r for r in summary_table(_metrics()).rows}
    _, base, sft, dpo = rows["Held-out"]
    assert (base.cls, sft.cls, dpo.cls) == ("", "better", "worse")
    assert "-50.0%" in sft.text


def test_markdown_tables_escape_pipes_and_newlines():
    md = md_table(Table(["a"], [[Cell("x | y\nz", "better")]]))
    assert "x \\| y z ✅" in md


def test_html_is_self_contained_and_escaped(tmp_path):
    page = render_html(_metrics(), [])
    assert "<style>" in page and "http://" not in page and "https://" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # model and prompt text is escaped, never interpreted
    assert 'class="v better"' in page and 'class="v worse"' in page and "FLAGGED" in page
    md = render_markdown(_metrics(), [])
    assert md.startswith("# Evaluation report: t") and "pairs_eval.jsonl" in md
