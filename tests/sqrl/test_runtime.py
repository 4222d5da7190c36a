"""sqrl.runtime: where bf16 is slow, every stage computes in fp32 instead, and says so."""
import logging

import pytest
import torch

from sqrl.runtime import CPU_BF16_ENV, _bf16_timed_probe, _cpu_bf16_check, compute_dtype, cpu_bf16_native


def test_the_override_decides_and_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert cpu_bf16_native() is False
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert cpu_bf16_native() is True
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="SQRL_CPU_BF16 must be 0 or 1"):
        cpu_bf16_native()


def test_compute_dtype_falls_back_to_fp32_only_for_bf16_on_a_slow_cpu(monkeypatch, caplog):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    with caplog.at_level(logging.WARNING, logger="sqrl.runtime"):
        assert compute_dtype(torch.bfloat16, "cpu", "judge x") is torch.float32
    assert "judge x: bfloat16 asked for" in caplog.text and "SQRL_CPU_BF16=1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sqrl.runtime"):
        assert compute_dtype(torch.float32, "cpu") is torch.float32
        assert compute_dtype(torch.float16, "cpu") is torch.float16
        assert compute_dtype(torch.bfloat16, "cuda:0") is torch.bfloat16      # a GPU is never second-guessed
        assert compute_dtype(torch.bfloat16, torch.device("cuda")) is torch.bfloat16
    assert not caplog.text
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert compute_dtype(torch.bfloat16, torch.device("cpu")) is torch.bfloat16


def test_the_timed_probe_agrees_with_torchs_own_answer():
    """The fallback, timed, against oneDNN's capability check on this machine (the scalar bf16 path is
    ~100x slower than fp32, a vectorised one within ~2x; the probe's line is 8x)."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:
        pytest.skip("this torch has no oneDNN bf16 check")
    assert _bf16_timed_probe() == bool(probe()) == _cpu_bf16_check()


def test_release_memory_gives_freed_heap_pages_back_to_the_system():
    """glibc keeps freed heap pages in a fragmented heap; a pipeline's process kept ~7 GB after its SFT stages."""
    import sys

    import pytest
    import torch

    from sqrl.runtime import release_memory, rss_bytes

    if not sys.platform.startswith("linux") or rss_bytes() is None:
        pytest.skip("reads /proc and trims glibc's heap")
    blocks = [torch.ones(4096) for _ in range(20_000)]   # 16 KiB each: glibc's heap, below its mmap threshold
    keep = blocks[::100]                                 # the heap cannot shrink from its top alone
    del blocks
    before = rss_bytes()
    freed = release_memory()
    assert freed > 200 * 2**20 and rss_bytes() < before - 200 * 2**20
    assert len(keep) == 200 and release_memory() >= 0
