# One command installs everything and does the job: `make book` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu

.PHONY: install test book smoke bench clean sync

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned first: CI and laptops get the CPU wheel, never the multi-GB CUDA stack
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,book,lm]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

book: install
	$(PY) -m collapse_utils book --preset $(PRESET)

bench: install
	$(PY) benchmarks/bench_gaussian.py

sync: install
	$(VENV)/bin/jupytext --sync notebooks/*.md

clean:
	rm -rf _build book/_generated results
