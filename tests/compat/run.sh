#!/usr/bin/env bash
# The compatibility run behind `make test-compat`: a subset of the suite (COMPAT_TESTS and
# COMPAT_SENTRY_TESTS from the Makefile: mapping, exporter, processor, configure, sender,
# deadlines, the instrument CLI, and Sentry) in three venvs:
#   low         the lowest version of every direct dependency pyproject.toml allows, on the
#               oldest supported Python (tests/compat/lowest.py writes the pip constraints);
#   low-sentry  the same with the sentry extra, whose floors are higher (opentelemetry-sdk 1.35
#               through its OTLP exporter), for the Sentry tests;
#   high        the newest versions pip finds, on the newest supported Python, for both sets.
# Interpreters are found through `pyenv root` (versions/3.X*/bin/python3.X), else on PATH; a
# missing one skips its venvs with a message, without failing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

LOW_PYTHON_VERSION=${LOW_PYTHON_VERSION:-3.10}
HIGH_PYTHON_VERSION=${HIGH_PYTHON_VERSION:-3.13}
# Test tools only: the versions under test are those of the package's own requirements.
TOOLS=(pytest pytest-timeout hypothesis "opentelemetry-instrumentation-psycopg")
export PIP_DISABLE_PIP_VERSION_CHECK=1

find_python() {
    local version=$1 root candidate
    if command -v pyenv >/dev/null 2>&1 && root=$(pyenv root 2>/dev/null); then
        for candidate in $(ls -d "$root"/versions/"$version"*/bin/python"$version" 2>/dev/null | sort -V -r); do
            if [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
        done
    fi
    candidate=$(command -v "python$version" 2>/dev/null || true)
    # A pyenv shim answers even when that version is not installed: ask it to run.
    if [ -n "$candidate" ] && "$candidate" -c 'import sys' >/dev/null 2>&1; then
        echo "$candidate"; return 0
    fi
    return 1
}

# run_half NAME PYTHON_VERSION EXTRAS TESTS...
run_half() {
    local name=$1 version=$2 extras=$3 venv=".venv-compat-$1" python started
    shift 3
    if ! python=$(find_python "$version"); then
        echo "test-compat $name: skipped: no Python $version found (pyenv install $version)"
        return 0
    fi
    started=$(date +%s)
    echo "test-compat $name: $("$python" --version) at $python, venv $venv"
    "$python" -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    if [ "$name" = high ]; then
        "$venv/bin/python" -m pip install --quiet --upgrade -e ".[$extras]" "${TOOLS[@]}"
    else
        "$venv/bin/python" -m pip install --quiet 'tomli; python_version < "3.11"'
        "$venv/bin/python" tests/compat/lowest.py ${extras//,/ } > "$venv/constraints.txt"
        "$venv/bin/python" -m pip install --quiet --constraint "$venv/constraints.txt" \
            -e ".[$extras]" "${TOOLS[@]}"
    fi
    "$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
        | grep -i -E '^(opentelemetry-(api|sdk|exporter-otlp-proto-http|instrumentation[a-z-]*)|psycopg[a-z-]*|sentry-sdk)==' \
        | tr '\n' ' '
    echo
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
    echo "test-compat $name: passed in $(( $(date +%s) - started )) s"
}

# shellcheck disable=SC2086  # the test lists are space-separated paths
run_half low "$LOW_PYTHON_VERSION" examples $COMPAT_TESTS
# shellcheck disable=SC2086
run_half low-sentry "$LOW_PYTHON_VERSION" sentry,examples $COMPAT_SENTRY_TESTS
# shellcheck disable=SC2086
run_half high "$HIGH_PYTHON_VERSION" sentry,examples $COMPAT_TESTS $COMPAT_SENTRY_TESTS
