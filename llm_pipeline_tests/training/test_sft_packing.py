"""Packing SFT rows: every token used, documents kept apart by position ids, answers-only labels."""

from collections import Counter

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm_pipeline.training import sft_packing
from llm_pipeline.training.sft_packing import IGNORE, Segment


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_long_text_is_chunked_with_one_token_overlap_so_every_token_is_predicted_once():
    seg = Segment(list(range(1, 21)), list(range(1, 21)), "legal", "text")
    pieces = sft_packing.fit(seg, 8, Counter())
    assert all(len(p.ids) <= 8 for p in pieces)
    predicted = [t for p in pieces for t in p.labels[1:] if t != IGNORE]  # the first of each piece has no context
    assert predicted == list(range(2, 21))


def test_long_examples_keep_their_start_and_the_cut_is_counted():
    dropped = Counter()
    seg = Segment(list(range(10)), [IGNORE] * 4 + list(range(4, 10)), "legal", "example")
    (cut,) = sft_packing.fit(seg, 6, dropped)
    assert cut.ids == list(range(6)) and dropped["legal:example_tokens_past_max_length"] == 4


def test_best_fit_packing_fills_rows_and_keeps_every_segment():
    segs = [Segment([1] * n, [1] * n, "d", "text") for n in (7, 5, 3, 3, 2, 1)]
    rows = sft_packing.pack(segs, 8)
    assert sorted(len(s.ids) for r in rows for s in r) == [1, 2, 3, 3, 5, 7]
    assert all(sum(len(s.ids) for s in r) <= 8 for r in rows) and len(rows) == 3


def test_packed_documents_compute_exactly_what_they_would_alone():
    model = _tiny_llama()
    a, b = [5, 6, 7, 8, 9], [11, 12, 13, 14, 15, 16, 17]
    rows = sft_packing.as_records([[Segment(a, a, "x", "text"), Segment(b, b, "y", "text")]], "train")
    collator = sft_packing.PackedCollator(pad_id=0, position_packing=True)
    batch = collator(rows + rows[:0])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist() == list(range(5)) + list(range(7))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = model(torch.tensor([b]), use_cache=False).logits
    assert torch.allclose(packed[0, 5:], alone[0], atol=1e-5)
    # The first token of each document is not predicted from the previous document; the collator counts the rest.
    assert batch["labels"][0, 5].item() == IGNORE and collator.trained() == Counter({"text:x": 4, "text:y": 6})


def test_models_without_position_packing_get_a_plain_mask():
    class Other:
        config = type("C", (), {"model_type": "gpt2", "_attn_implementation": "eager"})()

    ok, reason = sft_packing.supports_position_packing(Other())
    assert not ok and "plain mask" in reason
    batch = sft_packing.PackedCollator(0, position_packing=False)(sft_packing.as_records([[Segment([1, 2], [1, 2], "d", "text")]], "eval"))
    assert batch["attention_mask"].tolist() == [[1, 1]]


def test_batched_encoding_gives_what_one_record_at_a_time_gives():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llm_pipeline.training import bpe

    texts = ["The court held that the notice was late.", "Rotate the API key every ninety days.", "Take one tablet daily."]
    bpe_model = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe_model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe_model.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe_model, unk_token="<unk>", eos_token="</s>")
    tok.chat_template = bpe.CHAT_TEMPLATE
    records = [{"text": texts[0], "domain": "legal"}, {"prompt": "Summarize:", "completion": texts[1], "domain": "software"},
               {"text": texts[2]}, {"messages": [{"role": "user", "content": "Dose?"}, {"role": "assistant", "content": texts[2]}]}]
    for completion_only in (True, False):
        batched = sft_packing.encode_all(records, tok, completion_only)
        single = [sft_packing.encode(r, tok, completion_only) for r in records]
        assert [(s.ids, s.labels, s.domain, s.kind) for s in batched] == [(s.ids, s.labels, s.domain, s.kind) for s in single]


def test_a_text_record_s_no_loss_spans_are_read_but_not_predicted():
    from llm_pipeline_tests.training.test_packing import _tokenizer

    tok = _tokenizer()
    text = "The tenant Maya Lee wrote to the landlord."
    start = text.index("Maya Lee")
    plain, marked = sft_packing.encode_all([{"text": text}, {"text": text, "no_loss": [[start, start + 8]]}], tok, True)
    assert marked.ids == plain.ids and plain.labels == plain.ids
    skipped = [i for i, label in enumerate(marked.labels) if label == IGNORE]
    assert skipped and tok.decode([marked.ids[i] for i in skipped]).strip() == "Maya Lee"
    assert all(marked.labels[i] == plain.ids[i] for i in range(len(plain.ids)) if i not in skipped)
    assert sft_packing.encode({"text": text, "no_loss": [[start, start + 8]]}, tok, True).labels == marked.labels
