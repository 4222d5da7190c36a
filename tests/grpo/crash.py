"""The crash the resume tests recover from: a GRPO run killed with ``kill -9`` right after a checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kill_after_checkpoint(config: Path, out: Path, cluster: str, step: int, timeout_s: float) -> None:
    """Run ``grpo.cli`` on ``config`` in a child process and ``kill -9`` it as soon as the checkpoint of
    ``step`` is complete (its trainer_state.json is written last): the crash the resume tests recover from."""
    env = dict(os.environ, RAY_ADDRESS=cluster, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "grpo.cli", "--config", str(config), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout_s
        while not (out / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").exists():
            assert proc.poll() is None, "the run ended before its checkpoint"
            assert time.time() < deadline, f"no checkpoint within {timeout_s:.0f} s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
