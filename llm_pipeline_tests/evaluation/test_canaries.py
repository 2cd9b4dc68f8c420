"""PII canaries: distinctive parts, and finding them in documents, training files, a real BPE vocabulary and outputs."""

import json
import random

import pytest

from evaluation.fixtures import DOMAINS, document, make_tokenizer
from llm_pipeline.evaluation.canaries import Canary, CanaryScan, distinctive_parts, load_canaries, mask
from llm_pipeline.evaluation.data import Notes

NAME = "Leontyne Harrowgate"
EMAIL = "leontyne.harrowgate@brambleford-clinic.org"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        (NAME, ["leontyne", "harrowgate"]),
        (EMAIL, ["leontyne", "harrowgate", "brambleford", "clinic"]),
        ("+1 (617) 555-0147", ["16175550147"]),  # every run is short: the digits together are the distinctive part
        ("536-22-8471", ["536228471"]),
        ("DE73 5181 7560 4806 3581 78", ["de73518175604806358178"]),
        ("Bo Li", []),
    ],
)
def test_distinctive_parts(text, parts):
    assert distinctive_parts(text, 6) == parts


def _canaries(*texts):
    return [Canary(text=t, entity="X", parts=distinctive_parts(t, 6)) for t in texts]


def test_full_string_found_case_and_whitespace_insensitively():
    scan = CanaryScan(_canaries(NAME, "+1 (617) 555-0147"), common_part_max_documents=5)
    scan.scan_document("deduped_shards/medicine", "doc-7", "Seen by LEONTYNE\n  harrowgate today.")
    scan.scan_document("deduped_shards/medicine", "doc-8", "Call [PHONE_NUMBER] for Leontyne.")  # the phone is redacted
    res = scan.results()
    # The full name in doc-7; its first name left alone in doc-8 is a leak of that part (the parts of doc-7's whole
    # name are that one finding, not more).
    assert res["leaked"] == 1 and res["items"][0]["found_in"] == {"deduped_shards/medicine": 1, "deduped_shards (a part)": 1}
    assert res["items"][0]["examples"]["deduped_shards (a part)"] == [f"{mask('leontyne')} in 1 document(s)"]
    assert {p["documents"] for p in res["items"][0]["parts"]} == {1, 2}
    assert res["items"][0]["examples"]["deduped_shards/medicine"] == ["doc-7"]
    assert res["items"][0]["canary"] == mask(NAME) != NAME and not res["items"][1]["leaked"]


def test_training_files_are_searched_in_every_string_value(tmp_path):
    path = tmp_path / "sft_train.jsonl"
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": f"write to {EMAIL}"}]}, {"prompt": "clean"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    scan = CanaryScan(_canaries(EMAIL), 5)
    scan.scan_records("lora_adapter/sft_train.jsonl", path)
    assert scan.results()["items"][0]["found_in"] == {"lora_adapter/sft_train.jsonl": 1}


def _corpus(with_canary: bool) -> list[str]:
    rng = random.Random(0)
    texts = [document(rng, d) + " The clinic opens early." for d in DOMAINS for _ in range(20)]
    if with_canary:
        texts += [f"Patient {NAME} was seen by Dr {NAME}; {NAME} recovered."] * 40
    return texts


def test_a_vocabulary_learned_from_leaked_text_is_flagged():
    scan = CanaryScan(_canaries(NAME, EMAIL), common_part_max_documents=5)
    for i, text in enumerate(_corpus(with_canary=False)):
        scan.scan_document("deduped_shards/x", f"d{i}", text)  # "clinic" is in 40 documents: an ordinary word
    scan.scan_tokenizer(make_tokenizer(_corpus(with_canary=True), vocab_size=320))
    res = scan.results()
    name, email = res["items"]
    assert name["leaked"] and name["found_in"].get("tokenizer vocabulary", 0) >= 1
    assert name["vocabulary"]["tokens"] and all("…" in t for t in name["vocabulary"]["tokens"])
    assert name["tokenization"]["tokens"] < len(NAME) / 2  # the canary compresses like a learned word
    assert mask("clinic") in email["vocabulary"]["parts_common"] and res["common_parts_ignored"] >= 1
    assert "clinic" not in json.dumps(res)  # parts are reported masked too


def test_a_clean_vocabulary_is_not_flagged():
    scan = CanaryScan(_canaries(NAME, EMAIL), common_part_max_documents=5)
    for i, text in enumerate(_corpus(with_canary=False)):
        scan.scan_document("deduped_shards/x", f"d{i}", text)
    scan.scan_tokenizer(make_tokenizer(_corpus(with_canary=False), vocab_size=320))
    res = scan.results()
    assert res["leaked"] == 0 and res["vocabulary"]["checked"]


def test_load_canaries_notes_a_missing_or_bad_file(tmp_path):
    notes = Notes()
    assert load_canaries(tmp_path / "none.json", notes, 6) is None and "not found" in notes.items[0]
    bad = tmp_path / "bad.json"
    bad.write_text('{"canaries": [{"text": "Casimir Ostrowski-Fenn", "entity": "PERSON"}, {"entity": "EMAIL"}]}')
    got = load_canaries(bad, notes, 6)
    assert [c.parts for c in got] == [["casimir", "ostrowski"]] and any("skipped 1" in n for n in notes.items)


def test_a_widely_leaked_part_is_counted_however_many_documents_hold_it():
    """A surname left behind by redaction in 40 documents is 40 leaks, not an "ordinary word"; a real English word
    of the canary (clinic) is not one."""
    scan = CanaryScan(_canaries(NAME, EMAIL), common_part_max_documents=5)
    for i in range(40):
        scan.scan_document("deduped_shards/x", f"d{i}", f"The clinic wrote to Ms Harrowgate about visit {i}.")
    res = scan.results()
    name, email = res["items"]
    assert name["leaked"] and name["found_in"] == {"deduped_shards (a part)": 1}
    assert name["examples"]["deduped_shards (a part)"] == [f"{mask('harrowgate')} in 40 document(s)"]
    assert {p["part"]: (p["documents"], p["ordinary_word"]) for p in email["parts"]}[mask("clinic")] == (40, True)
    assert "harrowgate" not in json.dumps(res).lower() and res["ordinary_words_from"] == "dictionary"


def test_an_organisation_named_in_the_corpus_is_not_a_leak_of_an_address_at_it():
    canary = "c.ostrowski-fenn@quayside-legal.net"
    scan = CanaryScan(_canaries(canary), common_part_max_documents=5)
    for i in range(6):
        scan.scan_document("deduped_shards/legal", f"d{i}", f"An agreement with Quayside Shipping GmbH, number {i}.")
    res = scan.results()
    assert not res["items"][0]["leaked"]
    scan.scan_document("deduped_shards/legal", "d9", "Mr Ostrowski signed it.")  # the mailbox's owner is personal
    assert scan.results()["items"][0]["leaked"] is True
