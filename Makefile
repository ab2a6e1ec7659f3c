# Jalapeño: every target installs what it needs first (`make install`, a no-op once done).
#
#   make test      the whole suite (Amaranth-simulator tests and cocotb on Verilator)
#   make sim       only the cocotb RTL tests
#   make verilog   build/verilog/<unit>.v for every top-level unit
#   make lint      verilator --lint-only on every unit's Verilog
#   make bench     build/bench/results.json
#   make clean     remove build/ (keeps .venv)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Two pytest-xdist workers by default (the machines here have 2 cores); JOBS=1 runs serially.
JOBS   ?= 2
PYTEST := $(PY) -m pytest -n $(JOBS)

.PHONY: install test sim verilog lint bench clean distclean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: install
	$(PYTEST) tests

sim: install
	$(PYTEST) -m cocotb tests

verilog: install
	$(VENV)/bin/jalapeno verilog --out build/verilog

lint: install
	$(PY) scripts/lint_verilog.py

bench: install
	$(PY) scripts/bench.py --out build/bench/results.json

clean:
	rm -rf build sim_build .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
