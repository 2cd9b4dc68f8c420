"""What DPO does to the domain's own text, measured while it trains: the guard of dpo_model's loop.

    guard = HeldOutGuard.build(model, tokenizer, shards, domains, max_ratio=1.03, max_tokens=None)  # scores SFT once
    ok = guard(metrics)                        # at each held-out evaluation of the loop

The promotion gate compares DPO's held-out perplexity with SFT's on every domain's held-out documents
(eval_report's `max_dpo_vs_sft_perplexity_ratio`). A figure from the preference pairs does not predict it: with
another document's continuation as the rejected side, the chosen continuations grew more likely under DPO (ratio
0.955) while the documents grew less (1.067 on the worst domain). So the guard scores held-out documents themselves,
the way the report does (`evaluation/perplexity.score_texts`), on the first `DOCUMENTS` of each domain's eval split
(each cut to `DOCUMENT_CHARS`) and of the held-out general text when continued pretraining mixed some in (a domain
DPO never trains on), and compares each one's perplexity with the SFT model's on the same documents. The documents'
PII tags are filled as training read them and the surrogates left out of the score (with filling off, the tags
themselves; `evaluation/heldout.py`): a surrogate is a random made-up value, and how a model guesses it is noise.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from llm_pipeline.training import budget

DOCUMENTS = 12  # per domain: the sample's held-out split holds ~15 a domain; enough for a stable figure
DOCUMENT_CHARS = 2_000  # a few hundred tokens of each: the opening of a document is what a reader meets


def first_of_each(texts: list[tuple[str, str]], n: int) -> list[int]:
    """Indices of the first `n` texts of each domain: a guard short of time still looks at every domain (the gate
    judges each one), with fewer documents of each."""
    seen: dict[str, int] = defaultdict(int)
    keep = []
    for i, (domain, _) in enumerate(texts):
        if seen[domain] < n:
            seen[domain] += 1
            keep.append(i)
    return keep


class HeldOutGuard:
    def __init__(self, model, tokenizer, texts: list[tuple[str, str]], max_ratio: float,
                 skip: list[list[tuple[int, int]]] | None = None, left_out: dict | None = None):
        from llm_pipeline.evaluation.models import LoadedModel
        from llm_pipeline.evaluation.perplexity import encode

        self.lm = LoadedModel("policy", model, tokenizer, is_adapter=True)
        self.texts = texts
        self.skip = skip if skip is not None else [[] for _ in texts]  # per text: character spans not scored
        self.left_out = left_out or {}
        # The tokenizer does not change while DPO trains: every evaluation reads the same ids and offsets.
        self.ids, self.offsets = encode(tokenizer, [t for _, t in texts]) if any(self.skip) else (None, None)
        self.max_ratio = max_ratio
        self.keep = list(range(len(texts)))
        started = time.perf_counter()
        self.reference = self._scores()  # the SFT model, before the first update
        self.seconds = time.perf_counter() - started  # what one evaluation costs, all documents scored
        self.figures: list[dict] = []  # one per evaluation: the worst domain and its ratio

    @classmethod
    def build(cls, model, tokenizer, shards: Path, domains: list[str], max_ratio: float,
              max_tokens: int | None = None, general: Iterable[str] = (), view=None) -> "HeldOutGuard | None":
        """A guard on the first held-out documents of each domain, and of `general` (held-out general text, a domain
        DPO never trains on, as `general`); None when there are none. Under a time budget, `max_tokens` (what an
        evaluation can afford) keeps the first of each domain that fit, at least one of each. `view`
        (``evaluation.heldout.HeldOut.for_config``) says how the documents' PII tags are read and left out of the
        score; without it the tags themselves are left out."""
        from llm_pipeline.evaluation.heldout import HeldOut
        from llm_pipeline.evaluation.perplexity import tokenize
        from llm_pipeline.training.corpus import iter_documents

        view = view if view is not None else HeldOut("tags")
        texts, skip = [], []
        for domain in domains:
            raw = [rec["text"] for rec in itertools.islice(iter_documents(shards, domain, "eval", columns=["id", "text", "split"]), DOCUMENTS)]
            scored, spans = view.prepare(raw, max_chars=DOCUMENT_CHARS, group=domain)
            texts += [(domain, t) for t in scored]
            skip += spans
        general = [t[:DOCUMENT_CHARS] for t in itertools.islice(general, DOCUMENTS)]  # not redacted: scored whole
        texts += [("general", t) for t in general]
        skip += [[] for _ in general]
        if texts and max_tokens is not None:
            lengths = [len(ids) for ids in tokenize(tokenizer, [t for _, t in texts])]
            n = DOCUMENTS
            while n > 1 and sum(lengths[i] for i in first_of_each(texts, n)) > max_tokens:
                n -= 1
            kept = first_of_each(texts, n)
            texts, skip = [texts[i] for i in kept], [skip[i] for i in kept]
        left_out = {"mode": view.mode, "spans": sum(map(len, skip)), "chars": sum(b - a for sp in skip for a, b in sp)}
        return cls(model, tokenizer, texts, max_ratio, skip, left_out) if texts else None

    def fit_budget(self, allowance: float) -> int:
        """Score only the documents an evaluation can afford in `allowance` seconds, at what scoring them for the SFT
        model took (the first of each domain, at least one, the same at every evaluation; the SFT model's scores are
        kept per document)."""
        per_doc = self.seconds / max(1, len(self.texts))
        groups = len({d for d, _ in self.texts})
        n = max(1, budget.affordable(len(self.texts), per_doc, allowance) // groups)
        self.keep = first_of_each(self.texts, n)
        return len(self.keep)

    def _scores(self):
        import torch

        from llm_pipeline.evaluation.perplexity import score_texts

        model = self.lm.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                texts = [self.texts[i][1] for i in self.keep]
                if self.ids is None:
                    return score_texts(self.lm, texts, batch_size=8)
                return score_texts(self.lm, texts, batch_size=8, token_ids=[self.ids[i] for i in self.keep],
                                   offsets=[self.offsets[i] for i in self.keep], skip=[self.skip[i] for i in self.keep])
        finally:
            model.train(was_training)

    def ratios(self) -> dict[str, float]:
        """Each domain's held-out perplexity under the policy now over the SFT model's, on the kept documents."""
        now = self._scores()
        nll, ref, tokens = defaultdict(float), defaultdict(float), defaultdict(int)
        for i, score in zip(self.keep, now):
            domain = self.texts[i][0]
            nll[domain] += score.nll
            ref[domain] += self.reference[i].nll
            tokens[domain] += score.tokens
        return {d: math.exp((nll[d] - ref[d]) / tokens[d]) for d in nll if tokens[d]}

    def __call__(self, metrics: dict | None = None) -> bool:
        ratios = self.ratios()
        worst = max(ratios, key=ratios.get)
        self.figures.append({"worst_domain": worst, "ratio": round(ratios[worst], 5)})
        return ratios[worst] <= self.max_ratio

    def summary(self) -> dict:
        domains = sorted({self.texts[i][0] for i in self.keep})
        return {"documents": len(self.keep), "domains": domains, "max_ratio": self.max_ratio,
                "evaluations": self.figures, "reference_seconds": round(self.seconds, 3),
                "left_out_of_score": self.left_out}
