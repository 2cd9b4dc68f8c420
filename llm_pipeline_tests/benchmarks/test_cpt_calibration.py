"""The pure helpers of benchmarks/cpt_calibration.py: how training rows are cut, the CPU-second clock the schedule
follows, and the summary against the original model and the TRL recipe."""

import pytest
from bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def cc():
    return load_benchmark("cpt_calibration")


def test_packed_rows_keep_every_token_with_eos_between_documents(cc):
    rows = cc.packed_rows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, 0)
    assert rows == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]


def test_document_rows_truncate_each_document_as_the_unpacked_recipe_does(cc):
    assert cc.document_rows([[1, 2, 3, 4, 5], [6], []], 3, 0) == [[1, 2, 3], [6, 0]]


def test_every_setting_names_a_known_method_and_the_default_order_covers_them(cc):
    assert set(cc.DEFAULT_ORDER) == set(cc.SETTINGS)
    assert {s["method"] for s in cc.SETTINGS.values()} == {"lora", "full"}
    assert cc.SETTINGS["trl"]["schedule"] == "constant" and not cc.SETTINGS["trl"]["packed"]


def test_clock_progress_is_the_share_of_the_budget_or_of_the_step_cap(cc):
    clock = cc.CpuClock(budget=1e9, start=0.0)
    assert clock.progress(0, 10) < 1e-3
    assert clock.progress(5, 10) == pytest.approx(0.5)
    assert cc.CpuClock(budget=1e-9, start=0.0).progress(0, 10) == 1.0


def _row(name, legal, minutes, other, cpu=50.0):
    scores = {"legal": {"perplexity": legal, "bits_per_byte": legal / 20}, "minutes": {"perplexity": minutes, "bits_per_byte": minutes / 40},
              "other": {"perplexity": other, "bits_per_byte": other / 20}}
    return {"setting": name, "steps": 4, "tokens": 4096, "cpu_s": cpu, "scores": scores}


def test_summary_averages_trained_domains_only_and_compares_with_trl(cc):
    rows = [_row("original", 20.0, 40.0, 10.0, 0.0), _row("trl", 19.0, 38.0, 10.0), _row("fast", 16.0, 30.0, 11.0, 100.0)]
    out = cc.summarize(rows, ["legal", "minutes"])
    assert [o["setting"] for o in out] == ["fast", "trl"]
    fast = out[0]
    assert fast["_mean"] == pytest.approx((0.2 + 0.25) / 2)  # the untrained domain's +10% is reported, not averaged
    assert fast["red_other"] == "-10.0%"
    assert fast["x_trl"] == pytest.approx(0.225 / 0.05, abs=0.01)
    assert fast["red_per_100_cpu_s"] == "22.5%" and fast["s_per_step"] == 25.0
    assert cc.summarize(rows[1:], ["legal"]) == []  # no original scored yet: nothing to compare with


def test_a_setting_names_the_text_it_trains_on(cc):
    assert cc.split_setting("lora_3e-3") == ("lora_3e-3", "raw")
    assert cc.split_setting("lora_3e-3@filled") == ("lora_3e-3", "filled")
    assert set(cc.TEXT_MODES) == {"raw", "redacted", "filled", "filled_masked"}


def test_tag_density_counts_tags_per_thousand_characters_by_type(cc):
    texts = ["<PERSON> met <PERSON:0123456789abcdef> at <ORGANIZATION>." + "x" * 960, "no tags " * 125]
    d = cc.tag_density(texts)
    assert d["characters"] == sum(len(t) for t in texts) and d["tags"] == 3
    assert d["counts"] == {"PERSON": 2, "ORGANIZATION": 1}
    assert d["per_1000_chars_by_type"]["PERSON"] == pytest.approx(2000 / d["characters"], abs=1e-3)


def test_training_text_comes_from_the_redacted_copy_and_held_out_text_stays_raw(cc, tmp_path):
    raw, red = tmp_path / "raw", tmp_path / "red"
    for i in range(8):
        for root, text in ((raw, f"Dana Reyes wrote memo {i}."), (red, f"<PERSON> wrote memo {i}.")):
            (root / "legal").mkdir(parents=True, exist_ok=True)
            (root / "legal" / f"m{i}.txt").write_text(text)
    train, held = cc.corpus(raw, ["legal"], 7, 6, 100, redacted=red)
    assert len(train) == 7 and all(t.startswith("<PERSON>") for t in train)
    assert held["legal"] and all("Dana Reyes" in t for t in held["legal"])


def test_masked_ids_mark_the_tokens_of_surrogates(cc):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["Minutes", "by", "Maya", "Lee", "of", "Acme", ".", "[UNK]"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    text = "Minutes by Maya Lee of Acme ."
    ids = cc.masked_ids(tok, [(text, [(11, 19), (23, 27)])])[0]
    assert ids == [0, 1, -3, -4, 4, -6, 6]
