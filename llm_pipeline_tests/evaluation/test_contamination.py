from llm_pipeline.evaluation.contamination import TrainingNgrams, check_items, contamination_report, ngram_hashes

PLANTED = "the tenant shall return every key to the landlord on the final day"


def test_ngrams_are_word_level_and_case_insensitive():
    assert set(ngram_hashes("A b, C d!", 2).values()) == {"a b", "b c", "c d"}
    assert ngram_hashes("too short", 8) == {}


def test_a_planted_overlap_is_found_and_flagged():
    train = TrainingNgrams(n=8)
    train.add_source("docs", [f"Background text number {i} about nothing in particular at all today." for i in range(5)] + [f"Intro. {PLANTED}."])
    items = [("clean-1", "A held-out text that shares no long run of words with training."), ("leak", f"Other words. {PLANTED.upper()}!")]
    report = contamination_report(train, {"eval documents": items}, threshold=0.05)
    s = report["sets"]["eval documents"]
    assert (s["items"], s["contaminated"], s["flagged"]) == (2, 1, True)
    assert s["examples"][0]["id"] == "leak" and s["examples"][0]["ngram"] in PLANTED
    assert report["flagged"] == ["eval documents"]
    assert 0 < s["mean_ngram_overlap"] < 0.5  # one planted sentence, not a copied document


def test_below_threshold_is_not_flagged():
    train = TrainingNgrams(n=3)
    train.add_source("docs", ["alpha beta gamma delta"])
    items = [("a", "alpha beta gamma")] + [(f"x{i}", f"unrelated words here {i}") for i in range(19)]
    s = contamination_report(train, {"set": items}, threshold=0.1)["sets"]["set"]
    assert s["share"] == 0.05 and not s["flagged"]


def test_template_boilerplate_is_not_contamination():
    template = "Continue the following passage from the legal domain please:"
    train = TrainingNgrams(n=4, max_item_share=0.2)
    train.add_source("sft_train", [f"{template} item {i} {i * 7} {i * 13}" for i in range(20)])
    assert train.boilerplate > 0
    o = check_items(train, [("e1", f"{template} a brand new held out passage")])
    assert o.contaminated == 0


def test_items_shorter_than_n_are_counted_but_cannot_overlap():
    train = TrainingNgrams(n=8)
    train.add_source("docs", ["one two three four five six seven eight"])
    o = check_items(train, [("s", "one two")])
    assert (o.items, o.too_short, o.contaminated) == (1, 1, 0)
