# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; the host (ComfyUI, A1111) owns torch, so it is not in
# the project's base dependencies.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.spare-installed
# Headless Chromium for the front-end extension's browser check (Debian's package).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo app test test-fast bench bench-full bench-cost lint train-toy clean

$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m spare_core.cli demo --out outputs

# The browser app on the toy model (http://127.0.0.1:7860; gradio is in the dev extra).
app: $(STAMP)
	$(PY) -m spare_core.cli app

test: $(STAMP) $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(PY) -m pytest
	CHROMIUM=$(CHROMIUM) node --test tests/web/*.test.mjs

$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

# The tests not marked slow (a few minutes).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow"
	node --test tests/web/*.test.mjs

bench: $(STAMP)
	$(PY) bench/toy_quality.py
	$(PY) bench/erasure.py --quick --variants default

bench-full: $(STAMP)
	$(PY) bench/erasure.py

# Training-step cost of SPARE and ESD-x on full-size SD1.5 and SDXL UNets (about 10 minutes on 2 cores).
bench-cost: $(STAMP)
	$(PY) bench/cost.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

train-toy: $(STAMP)
	$(PY) -m spare_core.toy.train --out spare_core/toy/weights

clean:
	rm -rf $(VENV) outputs .pytest_cache
