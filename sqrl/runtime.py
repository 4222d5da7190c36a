"""Process-wide settings every sqrl entry point applies (CLI, Ray workers), and the lifetime of
the worker processes a command starts: they end with it, however it ends."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
CPU_BF16_ENV = "SQRL_CPU_BF16"
"""``1``/``0`` overrides ``cpu_bf16_native`` (a test, or a CPU the check misjudges)."""

log = logging.getLogger("sqrl.runtime")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """The log lines of every sqrl process: the CLI's, and a stage's own process (``recipes.stages``)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S")


def configure_torch() -> None:
    """Flush denormal floats to zero on CPU.

    Randomly initialised tiny models and fresh LoRA factors produce denormal activations; x86 CPUs
    handle those in microcode, and a tiny encoder's forward ran 8x slower with them (0.62 s vs
    0.08 s for 8 clips, measured here). Flushing changes results only below 1e-38.
    """
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_flush_denormal(True)


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in vectorised kernels (oneDNN's bf16 path: AVX-512 or
    AMX on x86, bf16 instructions on ARM). Without them torch falls back to a scalar reference GEMM:
    on an AVX2-only AMD EPYC a 200x1536 @ 1536x8960 matmul ran at 0.2 GFLOP/s in bf16 against 26.6 in
    fp32 on one thread (120x slower; docs/small.md, "bf16 on a CPU without AVX-512"). ``SQRL_CPU_BF16``
    (1 or 0) overrides the check."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV} must be 0 or 1, not {forced!r}")
        return forced == "1"
    return _cpu_bf16_check()


@functools.lru_cache(maxsize=None)
def _cpu_bf16_check() -> bool:
    import torch

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else _bf16_timed_probe()
    except RuntimeError:
        return _bf16_timed_probe()


def _bf16_timed_probe() -> bool:
    """Fallback when torch cannot say: bf16 counts as native unless it is over 8x slower than fp32 (the
    scalar path is ~100x slower, a vectorised one at most ~2x)."""
    import torch

    def seconds(dtype) -> float:
        a, b = torch.ones(128, 256, dtype=dtype), torch.ones(256, 256, dtype=dtype)
        a @ b
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        return time.perf_counter() - start

    return seconds(torch.bfloat16) < 8 * seconds(torch.float32)


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; a CUDA device asked for where
    torch sees none is an error, not a silent fall back to the CPU."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device}: torch sees no CUDA device (this torch: {torch.__version__})")
    return str(device)


def bf16_is_slow(device: object = "cpu") -> bool:
    """True on a CPU device whose bf16 matmuls take the scalar path (``cpu_bf16_native`` is False)."""
    return str(device).split(":")[0] == "cpu" and not cpu_bf16_native()


def compute_dtype(dtype: object, device: object = "cpu", what: str = "model") -> object:
    """``dtype`` unless it is torch.bfloat16 on a CPU where bf16 is slow: then torch.float32, with a warning
    that names ``what``. Weights stored in bf16 load into fp32 exactly, so only speed and memory change."""
    import torch

    if dtype == torch.bfloat16 and bf16_is_slow(device):
        log.warning("%s: bfloat16 asked for, but this CPU has no native bf16 matmul (no AVX-512/AMX; oneDNN "
                    "bf16 unsupported), where bf16 runs ~100x slower than fp32: using float32 "
                    "(set %s=1 to keep bf16)", what, CPU_BF16_ENV)
        return torch.float32
    return dtype


def _watch_parent(parent_pid: int, every_s: float) -> None:
    while True:
        time.sleep(every_s)
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os._exit(1)


def die_with_parent(parent_pid: int, every_s: float = 1.0, ignore_interrupt: bool = True) -> None:
    """Pool-worker initializer: end this worker when ``parent_pid`` dies, even by ``kill -9``.

    On Linux the kernel sends SIGTERM at once (``PR_SET_PDEATHSIG``); a daemon thread that polls the
    parent pid covers other systems and the case where the parent died before this call. With
    ``ignore_interrupt`` Ctrl-C is left to the parent, which stops its pool (a worker hit by the terminal's
    SIGINT would otherwise print a traceback per process); a stage's own process keeps it, to stop as the
    stage would in the parent's process."""
    if ignore_interrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends the worker
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, every_s), daemon=True, name="die-with-parent").start()


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` as Ctrl-C raises ``KeyboardInterrupt``, so
    ``with``/``finally`` blocks stop worker pools and remove staging folders. A no-op off the main thread
    (only it may set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def rss_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_memory() -> int | None:
    """Hand what a finished stage freed back to the system: collect reference cycles (a Trainer holds its model
    in several), empty the CUDA cache, and on glibc trim the heap, which otherwise keeps freed pages. Returns the
    bytes of resident memory released (None where it cannot be read).

    The stages of a pipeline run in one process; after calibration and warm-up that process kept ~7 GB, and
    the GRPO stage's workers then ran the 24-GiB machine out of memory (docs/small.md, "make small")."""
    import gc

    before = rss_bytes()
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    after = rss_bytes()
    return None if before is None or after is None else max(before - after, 0)
