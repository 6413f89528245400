# The two set-up commands of the README: `make train` and `make test`. Each installs what it needs.
PY := .venv/bin/python

.PHONY: install train test test-fast lint bench

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the local CPU wheel; anything else pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: .venv/installed

train: install
	$(PY) jobs/train.py $(ARGS)

test: install
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check hyperray jobs tests bench
	$(PY) -m ruff format --check hyperray jobs tests bench

bench: install
	$(PY) bench/core.py
