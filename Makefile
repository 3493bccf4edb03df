# momedo — the two contract commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest postgresql-server clean fuzz test-long bench bench-quick

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/momedod run --dev

lint: $(STAMP)
	$(BIN)/ruff check momedod momedo_tui tests bench fuzz
	$(BIN)/ruff format --check momedod momedo_tui tests bench fuzz

typecheck: $(STAMP)
	$(BIN)/mypy --strict momedod/protocol momedod/store momedod/e2e
	$(BIN)/mypy momedod momedo_tui

# The store tests also run on PostgreSQL: tests/pg.py starts a throwaway server from the
# Debian package postgresql, installed here if missing (as root), else the command is shown.
PG_CTL_GLOB := /usr/lib/postgresql/*/bin/pg_ctl

postgresql-server:
	@ls $(PG_CTL_GLOB) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo 'installing the Debian package postgresql (for the postgres store tests)'; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends postgresql; \
	  else \
	    echo 'make test: the postgres store tests need a PostgreSQL server ($(PG_CTL_GLOB));' \
	         'install it with: sudo apt-get install postgresql' >&2; \
	    exit 1; \
	  fi; }

pytest: $(STAMP) postgresql-server
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck pytest

# Long variants of the fault tests, and the fuzz properties with many more examples.
test-long: $(STAMP) postgresql-server
	$(BIN)/pytest -q -p no:cacheprovider -m long tests
	$(BIN)/pytest -q -p no:cacheprovider --hypothesis-profile=long tests/fuzz

# Coverage-guided fuzzing of the frame and envelope parsers, FUZZ_SECONDS per target.
# atheris is installed on demand; where it does not build, fuzz/ runs a plain-Python loop.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	@$(BIN)/python -c 'import atheris' 2>/dev/null || $(BIN)/python -m pip install -q -e '.[fuzz]' \
	  || echo 'make fuzz: atheris did not install (no wheel or compiler for this Python);' \
	          'falling back to plain-Python fuzzing'
	$(BIN)/python fuzz/fuzz_parsers.py frames $(FUZZ_SECONDS)
	$(BIN)/python fuzz/fuzz_parsers.py envelopes $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) .momedo-dev .mypy_cache .ruff_cache

# --- installing on a server (see docs/ADMIN.md) ------------------------------------------------
# sudo make install [PREFIX=/opt/momedo] [WHEELHOUSE=DIR] [DESTDIR=DIR]; sudo make uninstall
# make wheelhouse [WHEELHOUSE=dist/wheelhouse] [WHEEL_ARCH=aarch64]; make check-unit [UNIT=...]
PREFIX         ?= /opt/momedo
DESTDIR        ?=
BINDIR         ?= /usr/local/bin
WHEELHOUSE     ?=
WHEEL_ARCH     ?= aarch64
WHEEL_PYTHON_VERSION ?= 3.11
INSTALL_PYTHON ?= /usr/bin/python3
UNIT           ?= systemd/momedod.service
INSTALL_ENV     = PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' BINDIR='$(BINDIR)' \
                  WHEELHOUSE='$(WHEELHOUSE)' WHEEL_ARCH='$(WHEEL_ARCH)' \
                  WHEEL_PYTHON_VERSION='$(WHEEL_PYTHON_VERSION)' \
                  INSTALL_PYTHON='$(INSTALL_PYTHON)'

.PHONY: install uninstall wheelhouse check-unit

install:
	@$(INSTALL_ENV) sh scripts/install.sh install

uninstall:
	@$(INSTALL_ENV) sh scripts/install.sh uninstall

wheelhouse:
	@$(INSTALL_ENV) sh scripts/install.sh wheelhouse

check-unit:
	@sh scripts/check-unit.sh '$(UNIT)'

# Every benchmark figure of issue 7 with its target (docs/PERFORMANCE.md); bench-quick is smaller.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run_all.py --quick
