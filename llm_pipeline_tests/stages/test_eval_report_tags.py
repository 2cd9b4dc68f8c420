"""eval_report on held-out documents that hold PII tags: the scores are computed outside them.

The shards hold cleaned_corpus's tags (`<PERSON>`, `<URL>`, ...). The report reads them filled with surrogates, as
training does, and leaves the surrogates out of every model's score; with `training.fill_redaction_tags` off it
leaves the tags themselves out.
"""

import json
import shutil

import pytest

from evaluation.fixtures import DOMAINS, build_upstream, tiny_config
from llm_pipeline.io import MANIFEST, ShardWriter, iter_records, write_json
from llm_pipeline.runner import run_stage

MID = " The notice went to <PERSON> of <ORGANIZATION> at <EMAIL_ADDRESS> on <DATE_TIME>."


def _tag(domain: str, text: str) -> str:
    # legal: tags in the middle of the text (what follows reads the surrogates as context);
    # medicine: one tag that ends the document, so nothing scored ever reads its surrogate.
    return text + MID + " It was sent." if domain == "legal" else text + " Reviewed by <PERSON>"


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-report-tags")
    build_upstream(root / "data", docs_per_domain=8)
    for d in DOMAINS:
        folder = root / "data" / "deduped_shards" / d
        records = [{**r, "text": _tag(d, r["text"])} for r in iter_records(folder)]
        shutil.rmtree(folder)
        with ShardWriter(folder, max_rows=10) as w:
            for r in records:
                w.write(r)
        write_json(folder / MANIFEST, {"stage": "deduped_shards", "domain": d})
    return root


def _original(folder):
    """A pretrained model the base started from, with a tokenizer of its own (other tokens for the same text)."""
    import random

    from evaluation.fixtures import document, make_model, make_tokenizer

    rng = random.Random(3)
    tok = make_tokenizer([document(rng, d) for d in DOMAINS for _ in range(20)], vocab_size=400)
    make_model(len(tok), seed=7).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _run(root, name, seed=0, fill=True, original=False):
    shutil.copytree(root / "data", root / name / "data", ignore=shutil.ignore_patterns("eval_report", ".cache"))
    cfg = tiny_config(root / name, samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0,
                      max_eval_pairs=2, max_task_examples=2, max_vs_original_bits_per_byte_ratio=1e3)
    cfg.seed = seed
    cfg.training.fill_redaction_tags = fill
    if original:
        cfg.base_checkpoint.source, cfg.base_checkpoint.model = "pretrained", str(_original(root / name / "original"))
        cfg.tokenizer.mode = "extend"
    res = run_stage(cfg, "eval_report")
    return res, json.loads((res.output_dir / "metrics.json").read_text())


def test_scores_leave_the_surrogates_out_whichever_were_drawn(tagged):
    res, m = _run(tagged, "seed0", original=True)
    scoring = m["perplexity_scoring"]
    # Every model, the original with its own tokenizer too, is scored on the same bytes: what the ratio gates divide.
    assert "original" in m["perplexity"]
    for d in DOMAINS:
        assert len({m["perplexity"][x]["by_domain"][d]["bytes"] for x in m["perplexity"]}) == 1
        assert m["perplexity"]["original"]["by_domain"][d]["tokens"] != m["perplexity"]["base"]["by_domain"][d]["tokens"]
    assert "vs_original_bits_per_byte" in {g["name"] for g in m["gates"]}
    assert scoring["mode"] == "surrogates"
    # 2 eval documents a domain: 4 tags each in legal, 1 in medicine.
    assert scoring["by_domain"]["legal"]["spans"] == 8 and scoring["by_domain"]["medicine"]["spans"] == 2
    assert scoring["chars_left_out"] > 0
    assert res.metadata["perplexity_scoring"] == scoring["line"] and "legal: 8 (" in scoring["line"]
    assert scoring["line"] in (res.output_dir / "report.md").read_text()

    other_res, other = _run(tagged, "seed7", seed=7, original=True)
    assert other["perplexity_scoring"]["chars_left_out"] != scoring["chars_left_out"]  # other surrogates were drawn
    for model in m["perplexity"]:
        a, b = m["perplexity"][model]["by_domain"], other["perplexity"][model]["by_domain"]
        for d in DOMAINS:
            # The bytes outside the surrogates and the tokens scored are the same text whatever the surrogates.
            assert a[d]["bytes"] == b[d]["bytes"] and a[d]["tokens"] == b[d]["tokens"]
        # A surrogate that ends each document is never scored nor read: the domain's score does not move.
        assert a["medicine"]["perplexity"] == pytest.approx(b["medicine"]["perplexity"], rel=1e-5)
        assert a["medicine"]["bits_per_byte"] == pytest.approx(b["medicine"]["bits_per_byte"], rel=1e-5)


def test_with_filling_off_the_tags_themselves_are_left_out(tagged):
    res, m = _run(tagged, "tags", fill=False)
    scoring = m["perplexity_scoring"]
    assert scoring["mode"] == "tags" and "fill_redaction_tags is off" in scoring["line"]
    # Each tag with the space before it (a tokenizer joins that space to the word after it).
    assert scoring["by_domain"]["legal"] == {"spans": 8, "chars": 2 * len(" <PERSON> <ORGANIZATION> <EMAIL_ADDRESS> <DATE_TIME>")}
    assert scoring["by_domain"]["medicine"] == {"spans": 2, "chars": 2 * len(" <PERSON>")}
    # The tag at the end of a medicine document is neither read as text to predict nor counted in the bytes.
    texts = [r["text"] for r in iter_records(tagged / "data" / "deduped_shards" / "medicine") if r["split"] == "eval"]
    assert m["perplexity"]["base"]["by_domain"]["medicine"]["bytes"] == sum(len(t.encode()) - len(" <PERSON>") for t in texts)


def test_cached_scores_are_reused_only_for_the_same_surrogates(tagged):
    """The result cache's key holds the text as scored and the spans left out: another seed draws other surrogates,
    so every (model, domain) is scored again; the same seed reads them all back."""
    first, _ = _run(tagged, "cache")
    assert first.stats["perplexity_cache"] == {"hits": 0, "misses": 6}

    def again(seed):
        cfg = tiny_config(tagged / "cache", samples=0, prompts=[], probes=[], adversarial_prompts=[], review_per_domain=0,
                          max_eval_pairs=2, max_task_examples=2)
        cfg.seed = seed
        return run_stage(cfg, "eval_report").stats["perplexity_cache"]

    assert again(0) == {"hits": 6, "misses": 0}
    assert again(7) == {"hits": 0, "misses": 6}
