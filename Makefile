# ctdenoise: the two README commands are `make demo` and `make test`.
# Each installs what it needs first (system packages, .venv, the package), then runs.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_STAMP := .cache/system-deps.ok
PYTEST_ARGS ?=

export JAVA_HOME ?= /usr/lib/jvm/java-17-openjdk-amd64
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(BIN)/python

.PHONY: help install system-deps test demo ui bench freeze clean

help:
	@echo "make test   install everything, then run the whole test suite"
	@echo "make demo   install everything, then run the pipeline on simulated low-dose scans"
	@echo "make ui     start Airflow standalone on 127.0.0.1:8080 with the local runtime"
	@echo "make bench  run the benchmarks in bench/"

install: $(STAMP) $(SYSTEM_STAMP)

# Java 17 (Spark), dicom3tools (dciodvfy checks written DICOM), Chromium (report rendering test),
# Orthanc with DICOMweb and the Web Viewer (the PACS of the delivery tests, make demo and make ui), dcmtk.
$(SYSTEM_STAMP): scripts/system-deps.sh
	@bash scripts/system-deps.sh
	@mkdir -p $(dir $@) && touch $@

$(STAMP): requirements.txt pyproject.toml | $(SYSTEM_STAMP)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11 (Debian: apt-get install python3.11 python3.11-venv)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==25.3"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	@touch $@

# CT_DENOISE_TESTS_NO_SKIP: everything is installed here, so a skipped check fails (tests/conftest.py).
test: install
	CT_DENOISE_TESTS_NO_SKIP=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python scripts/demo.py

ui: install
	$(BIN)/python scripts/ui.py

# Benchmarks (not tests): the SVD/local-mode speed table, then the denoising-quality table.
# bench/requirements.txt adds what only the benchmarks use (BM3D, PyWavelets).
bench: install
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	$(BIN)/python bench/svd.py
	$(BIN)/python bench/quality.py

freeze:
	$(BIN)/python -m pip freeze --exclude-editable > requirements.txt

clean:
	rm -rf $(VENV) .cache demo-output .pytest_cache
