# One command installs everything and does the job:
#   make book   - install, execute every chapter at PRESET (default cpu), build _build/html
#   make test   - install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
# datasets: an explicit COLLAPSE_DATA_DIR wins; else a sibling ../shared/data if present; else data/cache
ifeq ($(origin COLLAPSE_DATA_DIR), undefined)
ifneq ($(wildcard ../shared/data/mnist),)
export COLLAPSE_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: install test book bench sync clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned first: the CPU wheel, never the multi-GB CUDA stack an unpinned torch pulls in
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,book,lm]"
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

book: install
	$(PY) -m collapse_utils book --preset $(PRESET)

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# regenerate the committed, output-free .ipynb files from the reviewed MyST sources
sync: install
	$(VENV)/bin/jupytext --to ipynb --update notebooks/*.md

clean:
	rm -rf _build book/_generated results
