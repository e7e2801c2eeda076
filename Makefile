# One command installs everything and does the job:
#   make book   - install, execute every chapter at PRESET (default cpu), build _build/html
#   make test   - install, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
# torch wheel source, added to pip as an extra index for the torch install only. On Linux the default
# index's torch==2.13.0 is the CUDA build (several GB); PyTorch's CPU index has torch==2.13.0+cpu, which pip
# prefers (same version, local label) when that index is reachable, and otherwise pip falls back to the
# default index and any local wheels. Set it empty for the default index's build (CUDA on Linux, for the
# paper preset on a GPU), or to another PyTorch index:
#   make install TORCH_INDEX=                                              # default index (CUDA on Linux)
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu126        # a chosen CUDA build
# (a change takes effect on a fresh .venv: `rm -rf .venv` first)
ifeq ($(shell uname -s 2>/dev/null),Linux)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
else
TORCH_INDEX ?=
endif
# --retries 1: where the extra index cannot be reached pip falls back at once, not after 5 retries per package
TORCH_PIP := $(if $(strip $(TORCH_INDEX)),--extra-index-url $(strip $(TORCH_INDEX)) --retries 1)
# datasets: an explicit COLLAPSE_DATA_DIR wins; else a sibling ../shared/data if present; else data/cache
ifeq ($(origin COLLAPSE_DATA_DIR), undefined)
ifneq ($(wildcard ../shared/data/mnist),)
export COLLAPSE_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: install data test book check-html bench sync clean print-torch-pip

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned first, from TORCH_INDEX (on Linux the CPU wheel, not the multi-GB CUDA stack)
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP)
	# everything: the chapters' core, the runner (papermill, jupytext, ipykernel), the book, tests, LM extras
	$(PY) -m pip install --quiet -e ".[run,dev,book,lm]"
	touch $@

install: $(VENV)/.installed

# the datasets the chapters and tests read: found in COLLAPSE_DATA_DIR (../shared/data) or the cache,
# else downloaded into data/cache/ and verified by sha256 (the tests themselves never download)
data: install
	$(PY) -m collapse_utils.core.data fetch mnist wikitext-2

test: data
	$(PY) -m pytest -q

book: data
	$(PY) -m collapse_utils book --preset $(PRESET)

# open every page of the built book in headless Chromium (network blocked): pages load without script
# errors, maths typeset by the local MathJax, images load, internal links and anchors resolve
check-html: install
	$(PY) -m collapse_utils.tooling.htmlcheck _build/html

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# regenerate the committed, output-free .ipynb files from the reviewed MyST sources
sync: install
	$(VENV)/bin/jupytext --to ipynb --update notebooks/*.md

clean:
	rm -rf _build book/_generated results

# what the torch install line adds to pip (to check TORCH_INDEX without installing anything)
print-torch-pip:
	@echo "pip install torch==2.13.0 $(TORCH_PIP)"
