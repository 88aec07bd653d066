# Two commands for a newcomer: `make demo` and `make test`. Both create / update .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.robverify-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision first: these releases lie on this machine's disk (pip takes them, no download).
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	# Not plain dependencies (see pyproject.toml): metadata that would break the resolver.
	$(BIN)/pip install -q --no-deps auto-lirpa==0.3
	$(BIN)/pip install -q --no-deps --ignore-requires-python ada-verona==1.0.3
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/robverify demo

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Headless Chromium renders report.html in tests/test_report.py; installed from Debian where we may (root + apt-get),
# otherwise that one test is skipped.
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the report's browser test will be skipped"; \
	else echo "chromium absent (needs root and apt-get to install): the report's browser test will be skipped"; fi

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_crown.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
