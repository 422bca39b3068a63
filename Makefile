# Developer and CI entry points. `make test` is exactly what CI runs (.ci/run).
# Needs only Python >= 3.10 with venv and the PostgreSQL server binaries (pg_ctl, initdb,
# postgres); the tests start their own throwaway server, as root or as an ordinary user.

PYTHON ?= python3
VENV ?= .venv
VENV_BIN := $(VENV)/bin
# Touched after a successful install and older than pyproject.toml when the dependencies may
# have changed: depend on it from any target that needs the tools or the package installed.
VENV_STAMP := $(VENV)/.installed

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.DEFAULT_GOAL := test
.PHONY: test test-compat demo bench bench-scale reliability venv lint typecheck format clean

venv: $(VENV_STAMP)

# A venv without a working pip (python3-venv missing, an interrupted run) is made again.
# The compiled fast path is built by the install (hatch_build.py): a changed .pyx reinstalls.
$(VENV_STAMP): pyproject.toml hatch_build.py otel_pg_exporter/export/_fastrow.pyx
	$(VENV_BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(VENV_BIN)/python -m pip install --quiet --upgrade pip
	$(VENV_BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

lint: $(VENV_STAMP)
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .

typecheck: $(VENV_STAMP)
	$(VENV_BIN)/mypy

format: $(VENV_STAMP)
	$(VENV_BIN)/ruff format .
	$(VENV_BIN)/ruff check --fix .

# The layout-independent modules run a second time on a table partitioned by day (migrate
# --partitioned): the exporter, the SQL functions and the commands pass the same tests on both.
PARTITIONED_TESTS := tests/test_query.py tests/test_query_cli.py tests/test_writer.py \
	tests/test_exporter.py tests/test_cli.py tests/test_roundtrip.py tests/test_sender.py \
	tests/test_doctor.py tests/test_spool_cli.py tests/test_e2e.py tests/test_retention.py \
	tests/test_indexes.py tests/test_mcp.py

# The whole suite runs twice: with the compiled fast path (which must then be built wherever
# a C compiler and the Python headers exist, so the suite cannot silently test only the pure
# path) and with OTEL_EXPORTER_POSTGRES_FAST_PATH=false, the pure-Python mapper throughout.
EXPECT_FAST_PATH := $(shell (command -v cc || command -v gcc) >/dev/null 2>&1 && \
	$(PYTHON) -c "import os, sysconfig; p = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); print(int(os.path.exists(p)))" 2>/dev/null || echo 0)

test: lint typecheck
	OTEL_PG_EXPECT_FAST_PATH=$(EXPECT_FAST_PATH) $(VENV_BIN)/pytest
	OTEL_EXPORTER_POSTGRES_FAST_PATH=false $(VENV_BIN)/pytest
	TEST_TABLE_LAYOUT=partitioned $(VENV_BIN)/pytest $(PARTITIONED_TESTS)

# Every declared version range, tested at both ends (tests/compat/run.sh): the lowest version of
# each direct dependency pyproject.toml allows on Python 3.10 (.venv-compat-low, and
# .venv-compat-low-sentry for the sentry extra's higher floors), the newest on Python 3.13
# (.venv-compat-high). Interpreters come from pyenv or PATH; a missing one is skipped with a
# message. The subset covers mapping (compiled and pure), exporter, processor, configure, sender, deadlines, the
# instrument CLI and Sentry; about five minutes in all.
COMPAT_TESTS := tests/test_mapping.py tests/test_fastpath.py tests/test_exporter.py \
	tests/test_processor.py tests/test_configure.py tests/test_sender.py tests/test_deadlines.py \
	tests/test_instrument_cli.py
COMPAT_SENTRY_TESTS := tests/test_sentry.py

test-compat:
	COMPAT_TESTS="$(COMPAT_TESTS)" COMPAT_SENTRY_TESTS="$(COMPAT_SENTRY_TESTS)" tests/compat/run.sh

# A throwaway PostgreSQL (or DATABASE_URL), two instrumented services, real requests, and
# what landed in trace_spans.
demo: $(VENV_STAMP)
	$(VENV_BIN)/python examples/demo.py

# Side-by-side costs and throughput against the SDK baseline, raw COPY, per-span INSERT and
# the OTLP exporter; writes benchmarks/results/bench.{json,md}.
bench: $(VENV_STAMP)
	$(VENV_BIN)/python benchmarks/bench.py

# The read side, retention and the exporter on a table of 10 million spans, on both layouts
# (about 30 minutes and 15 GB of disk); writes benchmarks/results/bench-scale.{json,md}.
# SPANS=1000000 for a shorter run.
SPANS ?= 10000000
bench-scale: $(VENV_STAMP)
	$(VENV_BIN)/python -m benchmarks.bench_scale --spans $(SPANS)

# The fault scenarios at load: spans produced, stored, spooled, dropped, duplicated, app
# latency and memory; writes benchmarks/results/reliability.{json,md}.
reliability: $(VENV_STAMP)
	$(VENV_BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) .venv-compat-* .mypy_cache .ruff_cache .pytest_cache build dist
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
