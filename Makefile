# momedo — the two contract commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/momedod run --dev

lint: $(STAMP)
	$(BIN)/ruff check momedod momedo_tui tests bench
	$(BIN)/ruff format --check momedod momedo_tui tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict momedod/protocol momedod/store
	$(BIN)/mypy momedod momedo_tui

pytest: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .momedo-dev .mypy_cache .ruff_cache
