"""Score only the answer tokens in the LM head on every device, not only on Triton ones.

TRL's SFTTrainer trains through a fused LM head (``trl.trainer.utils.add_fused_lm_head``): the backbone
runs, then the head projects the hidden states onto the vocabulary in tiles and keeps each token's
log-probability. On CUDA/XPU it projects only the positions whose label is not ignored. On every other
device it projects **all** positions and masks afterwards, because on Neuron a varying number of positions
would change the tile shapes and recompile each batch. A CPU does not compile anything, yet it takes that
path too: the prompt and the audio frames (most of a calibration example) go through a vocabulary-wide
matmul in the forward and twice more in the backward (the recomputed tile and the hidden-state gradient).

On the small backbone (SmolLM2's 49k vocabulary, 576 wide) that is about a fifth of a calibration step's
FLOPs for tokens that carry no loss (``benchmarks/bench_small.py --parts sft``; docs/small.md). The loss,
the gradients and the logged metrics are the same either way: the compact path gathers the labelled
positions, runs the same kernel on them and scatters the results back.

``compact_head(trainer_cls)`` makes TRL take the compact path for the duration of each loss call, on every
device type that has no compiler to keep shapes for (``COMPACT_DEVICES``). It relies on TRL's module-level
``_use_triton`` hook in ``trl.trainer.utils`` (TRL 1.16); if a TRL release drops that hook, the wrapper logs
a warning once and the stage trains as TRL does (slower, same result). ``tests/sft/test_compact_head.py``
checks both the equality and the saving, so such a release fails the suite instead of slowing runs quietly.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

log = logging.getLogger(__name__)

# Device types where the compact path is safe and cheaper (no graph compiler keyed on shapes).
COMPACT_DEVICES = frozenset({"cpu", "mps"})


@contextlib.contextmanager
def compact_positions() -> Iterator[bool]:
    """Within the block, TRL's fused LM head projects only labelled positions on ``COMPACT_DEVICES`` too.
    Yields whether the hook was found (False: TRL's own behaviour, nothing changed)."""
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a core dependency
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or not callable(original):
        _warn_once()
        yield False
        return

    def use_compact(device) -> bool:
        return getattr(device, "type", str(device)) in COMPACT_DEVICES or original(device)

    trl_utils._use_triton = use_compact
    try:
        yield True
    finally:
        trl_utils._use_triton = original


_warned = False


def _warn_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("this TRL has no trl.trainer.utils._use_triton hook: the LM head scores every position "
                    "on the CPU (same loss, ~20%% slower small-model steps; sft/compact_head.py)")


def compact_head(trainer_cls):
    """``trainer_cls`` whose loss projects only the answer tokens through the LM head on a CPU too."""

    class CompactHeadTrainer(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            with compact_positions():
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)

    CompactHeadTrainer.__name__ = CompactHeadTrainer.__qualname__ = f"CompactHead{trainer_cls.__name__}"
    return CompactHeadTrainer
