"""Contamination check: word n-grams that held-out items share with the training data.

Training texts (train-split documents, sft_train, pairs_train) are reduced to a set of hashed word n-grams; each
held-out item (eval documents, sft_eval, pairs_eval) counts as contaminated when any of its n-grams is in the set.
The share of contaminated items per held-out set is flagged above a threshold.

N-grams that occur in more than `max_item_share` of one training source's items are boilerplate (an SFT prompt
template, a licence header) and dropped from the set first, or every templated example would look leaked. The set
holds 8-byte hashes, about 100 bytes per distinct n-gram in a Python set: fine for the corpora this pipeline
trains on a CPU; a web-scale corpus would want a Bloom filter instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import xxhash

from llm_pipeline.evaluation.generation import words


def ngram_hashes(text: str, n: int) -> dict[int, str]:
    """Hash -> n-gram text of every word n-gram of `text` (lower-cased words, punctuation dropped)."""
    w = words(text)
    out = {}
    for i in range(len(w) - n + 1):
        gram = " ".join(w[i : i + n])
        out[xxhash.xxh64_intdigest(gram.encode("utf-8"))] = gram
    return out


@dataclass
class TrainingNgrams:
    n: int = 8
    max_item_share: float = 0.2
    grams: set[int] = field(default_factory=set)
    sources: dict[str, int] = field(default_factory=dict)  # source -> items read
    boilerplate: int = 0  # distinct n-grams dropped as boilerplate

    def add_source(self, name: str, texts: Iterable[str]) -> None:
        counts: Counter[int] = Counter()
        items = 0
        for text in texts:
            items += 1
            counts.update(ngram_hashes(text, self.n).keys())
        # An n-gram in a handful of items is content; in a large share of them it is a template. The floor of 3 keeps
        # a tiny source (where one item is already a large share) from losing its content.
        limit = max(3, self.max_item_share * items)
        for gram, c in counts.items():
            if c > limit:
                self.boilerplate += 1
            else:
                self.grams.add(gram)
        self.sources[name] = self.sources.get(name, 0) + items


@dataclass
class Overlap:
    items: int = 0
    contaminated: int = 0
    too_short: int = 0  # items with fewer words than n: they cannot overlap and say nothing
    overlap_sum: float = 0.0  # sum over items of the share of their n-grams found in training data
    examples: list[dict] = field(default_factory=list)  # a few overlapping items, for the report

    @property
    def share(self) -> float:
        return self.contaminated / self.items if self.items else 0.0

    @property
    def mean_overlap(self) -> float:
        """Mean share of an item's n-grams seen in training: tells one shared phrase (low) from a copy (near 1)."""
        return self.overlap_sum / self.items if self.items else 0.0


def check_items(train: TrainingNgrams, items: Iterable[tuple[str, str]], max_examples: int = 3) -> Overlap:
    """Overlap of (item id, text) pairs with the training n-grams."""
    out = Overlap()
    for item_id, text in items:
        out.items += 1
        grams = ngram_hashes(text, train.n)
        if not grams:
            out.too_short += 1
            continue
        shared = [g for g in grams if g in train.grams]
        out.overlap_sum += len(shared) / len(grams)
        if shared:
            out.contaminated += 1
            if len(out.examples) < max_examples:
                out.examples.append({"id": item_id, "ngram": grams[shared[0]], "shared_ngrams": len(shared), "ngrams": len(grams)})
    return out


def contamination_report(train: TrainingNgrams, eval_sets: dict[str, list[tuple[str, str]]], threshold: float) -> dict:
    """Per held-out set: items, contaminated share and whether it is above `threshold`."""
    sets = {}
    for name, items in eval_sets.items():
        o = check_items(train, items)
        sets[name] = {
            "items": o.items,
            "contaminated": o.contaminated,
            "share": o.share,
            "mean_ngram_overlap": o.mean_overlap,
            "too_short": o.too_short,
            "flagged": o.items > 0 and o.share > threshold,
            "examples": o.examples,
        }
    return {
        "ngram": train.n,
        "threshold": threshold,
        "training_items": dict(train.sources),
        "training_ngrams": len(train.grams),
        "boilerplate_ngrams_ignored": train.boilerplate,
        "sets": sets,
        "flagged": sorted(name for name, s in sets.items() if s["flagged"]),
    }
