"""Secrets stay out of Ray's logs and the run folder, and an HTTP judge still gets its key (issue 13, item 3).

The end-to-end test runs ``python -m grpo.cli`` as a user would, with a judge API key and an HF token in its
environment, on its own local Ray cluster whose temporary folder is private to the test (``RAY_TMPDIR``), an
OpenAI-protocol stub judge that refuses requests without the key, and then greps every file Ray wrote (logs
included) and the run folder for both values.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from grpo.worker_env import Secret, collect_secrets, install_secrets, secret_names, worker_env
from sqrl.config import save_config

from .test_driver import TEST_REWARDS, make_config

REPO = Path(__file__).resolve().parents[1].parent
JUDGE_KEY = "sk-planted-" + "7f3a9c1e5b2d4f60"  # built at run time so the test source itself is no hit
HF_TOKEN = "hf_planted" + "Q2w3E4r5T6y7U8i9"


# ----------------------------------------------------------------------------------- the allow-list
def test_each_role_gets_only_allow_listed_harmless_variables():
    environ = {"SQRL_CACHE": "/c", "SQRL_JUDGE_API_KEY": "k", "HF_HOME": "/h", "HF_TOKEN": "t",
               "HUGGING_FACE_HUB_TOKEN": "t", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "DS_ACCELERATOR": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_API_KEY": "v",
               "AWS_SECRET_ACCESS_KEY": "a", "OPENAI_API_KEY": "o", "PATH": "/bin", "SQRL_OTHER": "x"}
    common = {"SQRL_CACHE": "/c", "HF_HOME": "/h", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    assert worker_env("reward", environ) == common
    assert worker_env("policy", environ) == {**common, "DS_ACCELERATOR": "cpu"}
    assert worker_env("rollout", environ, torch_threads=2) == {**common, "VLLM_CPU_KVCACHE_SPACE": "1",
                                                               "OMP_NUM_THREADS": "2"}
    assert worker_env("reward", environ, exclude=["SQRL_CACHE"]) == {k: v for k, v in common.items()
                                                                    if k != "SQRL_CACHE"}
    with pytest.raises(ValueError, match="role"):
        worker_env("judge", environ)


def test_secret_names_come_from_every_judge_of_the_reward_entries(tmp_path):
    judge_file = tmp_path / "judge.yaml"
    judge_file.write_text("backend: openai\nbase_url: http://127.0.0.1:1/v1\nmodel: m\napi_key_env: FILE_KEY\n")
    entries = [{"name": "accuracy"},
               {"name": "llm_judge_dimwise", "params": {"judge": "qwen3_openai"}},  # configs/judges/qwen3_openai.yaml
               {"name": "llm_judge_unified", "params": {"judge": str(judge_file)}},
               {"name": "x.custom", "params": {"inner": [{"judge": {"backend": "openai", "api_key_env": "DICT_KEY"}}]}},
               {"name": "llm_judge_dimwise", "params": {"judge": "smollm2"}}]  # in-process, no key
    assert secret_names(entries, ["EXTRA"]) == ["SQRL_JUDGE_API_KEY", "FILE_KEY", "DICT_KEY", "EXTRA"]


def test_a_secret_hides_in_repr_survives_pickling_and_is_installed_in_the_worker(monkeypatch):
    import pickle

    secrets = collect_secrets(["A_KEY", "UNSET_KEY"], {"A_KEY": "s3cr3t"})
    assert list(secrets) == ["A_KEY"]
    assert "s3cr3t" not in repr(secrets) and "s3cr3t" not in str(secrets["A_KEY"])
    again = pickle.loads(pickle.dumps(secrets))
    monkeypatch.delenv("A_KEY", raising=False)
    install_secrets(again)
    assert os.environ["A_KEY"] == "s3cr3t" and isinstance(again["A_KEY"], Secret)


# ----------------------------------------------------------------------------------- end to end
class KeyedJudge:
    """An OpenAI-protocol judge on 127.0.0.1 that answers "Score: 7" with the right key and 401 without."""

    def __init__(self, key: str):
        self.authorized = self.refused = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                ok = self.headers.get("Authorization") == f"Bearer {key}"
                outer.authorized, outer.refused = outer.authorized + ok, outer.refused + (not ok)
                body = ({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Score: 7"}}]} if ok
                        else {"error": {"message": "invalid api key"}})
                data = json.dumps(body).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def files_holding(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {n[:6]}..." for n in needles if n.encode() in data]
    return hits


def test_a_planted_key_reaches_the_judge_but_no_log_nor_the_run_folder(grpo_cache, tiny_init, corpus, tmp_path):
    judge = KeyedJudge(JUDGE_KEY)
    ray_tmp = Path(tempfile.mkdtemp(prefix="sqrl-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    try:
        judge_cfg = {"backend": "openai", "base_url": judge.url, "model": "judge", "mode": "generate",
                     "api_key_env": "SQRL_JUDGE_API_KEY", "max_attempts": 1, "timeout_s": 20, "concurrency": 4}
        entries = (f"[{{name: {TEST_REWARDS}.text_stats}}, {{name: llm_judge_dimwise, weight: 0.1, "
                   f"params: {{judge: {json.dumps(judge_cfg)}, dimensions: [noise, overall]}}}}]")
        cfg = make_config(tiny_init, corpus, f"rewards.entries={entries}", "train.steps=2", "train.save_every=1",
                          "cluster.num_cpus=2")
        config = tmp_path / "grpo.yaml"
        save_config(cfg, config)
        run = tmp_path / "run"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(SQRL_JUDGE_API_KEY=JUDGE_KEY, HF_TOKEN=HF_TOKEN, RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(REPO),
                   RAY_AUTH_MODE="disabled", DS_ACCELERATOR="cpu")
        proc = subprocess.run([sys.executable, "-m", "grpo.cli", "--config", str(config), "--out", str(run)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        # the judge got the key on every request: its reward was scored, never refused
        assert judge.authorized == 2 * 2 * 4 * 2 and judge.refused == 0  # steps x clips x G x dimensions
        assert all(r["rewards/llm_judge_dimwise/mean"] == pytest.approx(2 * 0.7) for r in rows)
        sessions = list((ray_tmp / "ray").glob("session_2*"))
        assert sessions and any((s / "logs" / "runtime_env_agent.log").exists() for s in sessions)
        assert files_holding(ray_tmp, [JUDGE_KEY, HF_TOKEN]) == []
        assert files_holding(run, [JUDGE_KEY, HF_TOKEN]) == []
        assert JUDGE_KEY not in proc.stdout + proc.stderr and HF_TOKEN not in proc.stdout + proc.stderr
    finally:
        judge.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
