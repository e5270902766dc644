# The two commands the README promises: `make demo` (main job) and `make test` (test suite),
# and `make lint` (ruff and mypy, which CI runs before the tests).
# Each creates .venv with every dependency when it is absent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,dp,flower,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gradguard demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) runs .pytest_cache
