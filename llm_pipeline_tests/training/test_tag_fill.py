"""Filling the shards' PII tags with surrogates for the training stages."""

import json
import re

from llm_pipeline.config import CleanedCorpusConfig
from llm_pipeline.io import MANIFEST, ShardWriter, write_json
from llm_pipeline.training import tag_fill
from llm_pipeline.training.corpus import iter_documents, iter_texts
from llm_pipeline.training.tag_fill import SURROGATES, TAG, TagFiller
from llm_pipeline_tests.training.fixtures import tiny_config

MINUTES = ("# Minutes of <DATE_TIME>\n\n<PERSON> opened the meeting at <ORGANIZATION> in <LOCATION>. "
           "<PERSON> (<EMAIL_ADDRESS>, <PHONE_NUMBER>) asked about <URL>.")


def test_fill_is_deterministic_under_a_seed_and_varies_with_it():
    a, b, c = TagFiller(seed=1).fill(MINUTES), TagFiller(seed=1).fill(MINUTES), TagFiller(seed=2).fill(MINUTES)
    assert a == b and a != c
    assert not TAG.search(a) and "<" not in a
    assert a.startswith("# Minutes of ") and " opened the meeting at " in a


def test_every_default_entity_type_gets_a_surrogate_of_its_shape():
    entities = CleanedCorpusConfig().pii_entities
    assert set(entities) <= set(SURROGATES)
    filler = TagFiller(seed=3)
    text = " | ".join(f"<{e}>" for e in entities)
    out = filler.fill(text).split(" | ")
    assert len(out) == len(entities) and dict(filler.filled) == {e: 1 for e in entities}
    values = dict(zip(entities, out))
    assert all(v and "<" not in v for v in values.values())
    assert re.fullmatch(r"[a-z._]+@example\.(com|org|net)", values["EMAIL_ADDRESS"])
    assert "555" in values["PHONE_NUMBER"] and values["URL"].startswith("https://")
    assert re.search(r"(19|20)\d\d", values["DATE_TIME"]) and values["AGE"].isdigit()
    assert values["IP_ADDRESS"].rsplit(".", 1)[0] in ("192.0.2", "198.51.100", "203.0.113")
    assert values["CREDIT_CARD"].replace(" ", "").isdigit() and values["UK_NHS"].startswith("999")


def test_tags_spread_over_varied_values():
    filler = TagFiller(seed=0)
    names = {filler.fill(f"Chapter {i}: <PERSON> wrote") for i in range(200)}
    assert len(names) > 100  # the context before a tag picks its surrogate: 200 contexts, many names


def test_unknown_tags_and_untagged_text_are_left_alone():
    filler = TagFiller(seed=1)
    plain = "A <b>bold</b> claim, 3 < 4, and <html> stays; so does a lone <."
    assert filler.fill(plain) is plain
    assert filler.fill("Ask <SECRET_THING> or <PERSON>.").startswith("Ask <SECRET_THING> or ")
    assert filler.unfilled == {"SECRET_THING": 1} and filler.filled == {"PERSON": 1}
    assert filler.stats() == {"filled": {"PERSON": 1}, "filled_total": 1, "unfilled": {"SECRET_THING": 1}, "documents": 1}


def test_hash_mode_tags_keep_one_surrogate_per_digest_across_documents():
    filler = TagFiller(seed=5)
    one = filler.fill("<PERSON:00112233aabbccdd> met <PERSON:ffeeddccbbaa9988>.")
    two = filler.fill("Later, <PERSON:00112233aabbccdd> left a note.")
    first = one.split(" met ")[0]
    assert two == f"Later, {first} left a note."
    assert filler.filled == {"PERSON": 3}


def test_a_repeated_passage_is_filled_the_same_way_in_every_document():
    # What picks a surrogate is the text just before its tag: a passage two documents share fills alike once its
    # tags are far enough into it, so the contamination check still sees the passage repeated.
    passage = ("The board thanks the retiring chair for many years of service and for chairing the review of "
               "<ORGANIZATION> accounts, and welcomes <PERSON> as the new chair.")
    filler = TagFiller(seed=1)
    one, two = filler.fill("Opening of one.\n" + passage), filler.fill("A different start.\n" + passage)
    assert one.split("\n")[1] == two.split("\n")[1] and "<" not in one


def test_surrogates_avoid_the_canaries_parts():
    # Without the canaries these names come up among 400 draws; with them, never (not even inside an e-mail).
    free = " ".join(TagFiller(seed=0).fill(f"Row {i}: <PERSON>, <EMAIL_ADDRESS>") for i in range(400)).lower()
    assert "rafael" in free and "castillo" in free
    guarded = TagFiller(seed=0, avoid=["Rafael Castillo"])
    text = " ".join(guarded.fill(f"Row {i}: <PERSON>, <EMAIL_ADDRESS>") for i in range(400)).lower()
    assert "rafael" not in text and "castillo" not in text and "<" not in text
    phones = TagFiller(seed=0, avoid=["+1 (617) 555-0147"])
    digits = ["".join(ch for ch in phones.surrogate("PHONE_NUMBER", str(i)) if ch.isdigit()) for i in range(3000)]
    assert not any("6175550147" in d for d in digits)


def test_config_decides_when_to_fill(tmp_path):
    canaries = tmp_path / "canaries.json"
    canaries.write_text(json.dumps({"canaries": [{"text": "Rafael Castillo", "entity": "PERSON"}]}))
    cfg = tiny_config(tmp_path, eval_report={"canaries_file": str(canaries)})
    filler = tag_fill.for_config(cfg)
    assert filler is not None and filler.seed == cfg.seed and "castillo" in filler.avoid
    for section in ({"cleaned_corpus": {"pii_mode": "hash"}},):
        assert tag_fill.for_config(tiny_config(tmp_path, **section)) is not None
    for section in ({"cleaned_corpus": {"pii_mode": "redact"}}, {"cleaned_corpus": {"pii_mode": "mask"}},
                    {"cleaned_corpus": {"pii": False}}, {"training": {"fill_redaction_tags": False}}):
        assert tag_fill.for_config(tiny_config(tmp_path, **section)) is None
    missing = tiny_config(tmp_path, eval_report={"canaries_file": str(tmp_path / "none.json")})
    assert tag_fill.for_config(missing).avoid == set()


def _shards(tmp_path, texts: list[str]):
    root = tmp_path / "deduped_shards"
    with ShardWriter(root / "legal") as w:
        for i, text in enumerate(texts):
            w.write({"id": f"d{i}", "domain": "legal", "text": text, "split": "eval" if i == 0 else "train"})
    write_json(root / "legal" / MANIFEST, {"stage": "deduped_shards", "domain": "legal"})
    return root


def test_corpus_reads_filled_text_only_with_a_filler(tmp_path):
    redact_mode = "Signed by  on  at the office."  # redact mode removed the spans: nothing to fill, read as is
    shards = _shards(tmp_path, [MINUTES, MINUTES.replace("<URL>", "<URL:0123456789abcdef>"), redact_mode])
    tagged = [r["text"] for r in iter_documents(shards, "legal", "train")]
    assert tagged[0] == MINUTES.replace("<URL>", "<URL:0123456789abcdef>")
    filler = TagFiller(seed=1)
    filled = [t for _, t in iter_texts(shards, ["legal"], "train", filler)]
    assert not any(TAG.search(t) for t in filled) and filled[1] == redact_mode
    assert filler.filled["PERSON"] == 2 and filler.filled["URL"] == 1 and filler.documents == 1
    assert [t for _, t in iter_texts(shards, ["legal"], "eval", TagFiller(seed=1))] == [TagFiller(seed=1).fill(MINUTES)]


def test_fill_with_spans_says_where_each_surrogate_stands():
    filler = TagFiller(seed=2)
    text, spans = filler.fill_with_spans("Dear <PERSON>, see <URL> and <NOPE> by <DATE_TIME>.")
    assert text == TagFiller(seed=2).fill("Dear <PERSON>, see <URL> and <NOPE> by <DATE_TIME>.")
    assert len(spans) == 3 and text[: spans[0][0]] == "Dear " and text[spans[0][1] :].startswith(", see ")
    assert text[spans[1][0] : spans[1][1]].startswith("https://") and text[spans[2][1] :] == "."
    assert filler.fill_with_spans("no tags") == ("no tags", [])


def test_a_city_and_country_surrogate_names_the_city_s_own_country():
    pairs = {TagFiller(seed=0).surrogate("LOCATION", str(i)) for i in range(400)}
    shown = [p.split(", ") for p in pairs if ", " in p]
    assert shown and all(tag_fill.CITY_COUNTRY[city] == country for city, country in shown)
