# One command installs everything and does the job:
#   make book       - install, execute every chapter at PRESET (default cpu) that is not up to date, build
#                     _build/html (FORCE=1 re-executes every chapter)
#   make test       - install, run the whole test suite (what CI runs)
#   make test-fast  - install, run the cheap tests: no chapter executed, no book built (under 2 min on 2 cores)
#   make test-colab - install, run every chapter's Colab install line and notebook in a Colab-like kernel
#   make lock       - regenerate requirements.lock from pyproject.toml (LOCK_UPGRADE=1: newest versions)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= cpu
# the locked environment: every package of the core and of every extra, exact versions with sha256 hashes,
# for CPython 3.11 on Linux x86_64 (torch==2.13.0 is pinned by the install: its build depends on TORCH_INDEX)
LOCK   := requirements.lock
PIP_VERSION   := 26.3
UV_VERSION    := 0.13.8
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

.PHONY: install lock data test test-fast test-colab book release-assets check-html bench sync clean print-torch-pip

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	# torch pinned first, from TORCH_INDEX (on Linux the CPU wheel, not the multi-GB CUDA stack)
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP)
	# everything else at the locked versions, each file checked against its locked sha256: the chapters'
	# core, the runner (papermill, jupytext, ipykernel), the book, tests, LM extras
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	# the package itself with the extras the lock holds (no dependency is resolved here: all are installed)
	$(PY) -m pip install --quiet -e ".[run,dev,book,lm]" --no-deps
	touch $@

install: $(VENV)/.installed

# the datasets the chapters and tests read: found in COLLAPSE_DATA_DIR (../shared/data) or the cache,
# else downloaded into data/cache/ and verified by sha256 (the tests themselves never download)
data: install
	$(PY) -m collapse_utils.core.data fetch mnist wikitext-2 smollm2-135m

test: data
	$(PY) -m pytest -q

# the fast lane: every test not marked slow (tests/conftest.py marks by cost: chapter executions, book
# builds, subprocess runs of the CLI)
test-fast: data
	$(PY) -m pytest -q -m "not slow"

# the Colab path end to end for every chapter (tests/test_colab.py): a fresh environment over a Colab-like
# base runs the notebook's own install line against a local tag, then the notebook at the smoke preset, its
# data from a local HTTP server; `make test` runs chapters 01 and 03 of it
test-colab: data
	COLLAPSE_COLAB_CHAPTERS=all $(PY) -m pytest -q -m colab tests/test_colab.py

# an unchanged chapter (same notebook source, parameters, preset, package source, data checksums and lock)
# is not executed again; FORCE=1 re-executes every chapter
book: data
	$(PY) -m collapse_utils book --preset $(PRESET) $(if $(FORCE),--force)

# the release's downloads, after `make book`: the executed notebooks (with the claims, scorecard and
# timings) and every run's tables (metrics, claims, parameters; no checkpoints), as .tar.gz under _build/release
GENERATED ?= book/_generated
RESULTS   ?= results
RELEASE   ?= _build/release
release-assets:
	mkdir -p $(RELEASE)
	tar -czf $(RELEASE)/executed-notebooks.tar.gz -C $(GENERATED) --exclude='./.*' .
	tar -czf $(RELEASE)/results.tar.gz -C $(RESULTS) --exclude=checkpoints --exclude='*.tmp' .

# regenerate requirements.lock with uv (installed into $(VENV)/lock-tools): existing pins are kept unless
# pyproject.toml needs others; LOCK_UPGRADE=1 takes the newest versions pyproject.toml allows. Torch is
# left out of the lock (the install pins it first), but its dependencies are locked, read from its CPU
# wheel (so no CUDA packages), found in pip's find-links folder where one is set, else on PyTorch's CPU index
TORCH_LINKS ?= $(or $(PIP_FIND_LINKS),https://download.pytorch.org/whl/cpu/torch/)
UV := $(VENV)/lock-tools/bin/uv
$(UV):
	$(PYTHON) -m venv $(VENV)/lock-tools
	$(VENV)/lock-tools/bin/python -m pip install --quiet uv==$(UV_VERSION)
lock: $(UV)
	printf 'torch==2.13.0+cpu\n' > $(VENV)/lock-tools/torch.txt  # the version the install pins
	$(UV) pip compile pyproject.toml --all-extras --quiet --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --no-emit-package torch --find-links $(TORCH_LINKS) --constraint $(VENV)/lock-tools/torch.txt \
	  $(if $(LOCK_UPGRADE),--upgrade) --custom-compile-command "make lock" -o $(LOCK)

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
