"""Device and precision defaults."""

import pytest
import torch

from llm_pipeline.training import device


def test_auto_picks_a_precision_and_says_why():
    plan = device.plan_device("auto")
    assert plan.precision in ("fp32", "bf16", "fp16") and plan.reason
    if not torch.cuda.is_available() and not device.cpu_has_native_bf16():
        assert plan.precision == "fp32" and plan.use_cpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")
def test_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        device.plan_device("fp16")


def test_small_models_train_on_one_thread_and_the_setting_is_restored():
    before = torch.get_num_threads()
    plan = device.DevicePlan("cpu", "fp32", "test")
    with device.cpu_threads_for(1000, plan) as info:
        assert torch.get_num_threads() == 1 and info["cpu_threads"] == 1
    assert torch.get_num_threads() == before
    # The size of a pass decides when it is known: small ops on one thread, large ones on torch's default.
    with device.cpu_threads_for(1000, plan, op_macs=device.SMALL_OP_MACS // 2) as info:
        assert torch.get_num_threads() == 1 and "multiply-accumulates" in info["cpu_threads_reason"]
    with device.cpu_threads_for(1000, plan, op_macs=device.SMALL_OP_MACS * 10) as info:
        assert torch.get_num_threads() == before and info["cpu_threads"] == before
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU rule")
@pytest.mark.parametrize("native_bf16", [True, False])
def test_runs_whose_batch_widths_vary_stay_fp32_on_a_cpu(monkeypatch, native_bf16):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    assert device.plan_device("auto").precision == ("bf16" if native_bf16 else "fp32")
    plan = device.plan_device("auto", varying_shapes=True)
    assert plan.precision == "fp32"
    if native_bf16:
        assert "every new shape" in plan.reason
    assert device.plan_device("bf16", varying_shapes=True).precision == "bf16"  # set in config: honoured


def test_peak_rss_is_the_processs_own_not_its_parents():
    """Linux carries ru_maxrss across fork and exec; a child of a large parent must still report its own peak."""
    import subprocess
    import sys

    ballast = bytearray(600 * 2**20)
    ballast[:: 4096] = b"\1" * len(ballast[:: 4096])  # resident, not just reserved
    code = "from llm_pipeline.training.device import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < device.peak_rss_mb() - 500
    del ballast
