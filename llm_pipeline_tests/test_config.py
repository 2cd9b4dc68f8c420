from pathlib import Path

import pytest

from llm_pipeline.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent

MINIMAL = """
domains:
  legal:
    sources:
      - path: data/sample/legal
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_default_config_loads():
    cfg = load_config(REPO / "configs/default.yaml", root=REPO)
    assert len(cfg.domain_names) >= 3
    assert cfg.data_path == REPO / "data"


def test_minimal_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.domain_names == ["legal"]
    assert cfg.tokenizer.vocab_size > 0 and cfg.deduped_shards.threshold > 0


@pytest.mark.parametrize(
    "text, key, message",
    [
        (MINIMAL + "tokenizr:\n  vocab_size: 10\n", "tokenizr", "unknown key"),
        (MINIMAL + "tokenizer:\n  vocab_sise: 10\n", "tokenizer.vocab_sise", "unknown key"),
        (MINIMAL + "tokenizer:\n  vocab_size: 10\n", "tokenizer.vocab_size", "greater than or equal"),
        (MINIMAL + "base_checkpoint:\n  learning_rate: fast\n", "base_checkpoint.learning_rate", "valid number"),
        (MINIMAL + "deduped_shards:\n  bands: 64\n  rows: 8\n  num_perm: 128\n", "deduped_shards", "must not exceed"),
        ("domains:\n  Legal Docs:\n    sources: [{path: x}]\n", "domains", "must match"),
        ("domains:\n  legal:\n    sources: []\n", "domains.legal.sources", "at least 1"),
        ("domains:\n  legal:\n    sources: [{path: x, hf_dataset: y}]\n", "domains.legal.sources.0", "exactly one"),
        ("seed: 1\n", "domains", "Field required"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, key, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}: {key}" in text
    assert message in text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "domains: [unclosed"))


def test_overrides_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), overrides={"data_dir": str(tmp_path / "d"), "tokenizer.vocab_size": 512}, root=tmp_path)
    assert cfg.data_path == tmp_path / "d"
    assert cfg.tokenizer.vocab_size == 512
    assert cfg.resolve("data/sample") == tmp_path / "data/sample"
