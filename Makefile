# A fresh clone needs only: make demo, make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format bench clean

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/execorder trace sample_models/seed.py:Model --concrete run_all_layers=true

test: $(STAMP)
	$(PY) -m pytest --durations=15

# Everything but the tests that start processes (torchrun, ranks, the CLI in a
# subprocess), time themselves or take seconds, on every core (up to 4): under a
# minute, for the edit-test loop.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not processes and not timing and not slow" -n auto --maxprocesses 4 --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check execorder tests sample_models benchmarks
	$(VENV)/bin/ruff format --check execorder tests sample_models benchmarks
	$(VENV)/bin/mypy execorder
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format execorder tests sample_models benchmarks
	$(VENV)/bin/ruff check --fix execorder tests sample_models benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_fx.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_diff.py
	$(PY) benchmarks/bench_timing.py
	$(PY) benchmarks/bench_ranks.py
	$(PY) benchmarks/bench_job.py
	$(PY) benchmarks/bench_meta.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_ddp.py
	$(PY) benchmarks/bench_fsdp.py
	$(PY) benchmarks/bench_diffusers.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
