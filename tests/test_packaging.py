"""The built wheel holds migrations, py.typed and entry points; installed, it loads and migrates."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
BIN = "Scripts" if sys.platform == "win32" else "bin"

# Run inside the fresh venv: the exporter found through its entry point, built with no arguments.
LOAD_ENTRY_POINT = """
import importlib.metadata, json
from opentelemetry.sdk.trace.export import SpanExporter
entry_point = importlib.metadata.entry_points(group="opentelemetry_traces_exporter")["postgres"]
exporter_class = entry_point.load()
exporter = exporter_class()
print(json.dumps({
    "is_span_exporter": issubclass(exporter_class, SpanExporter),
    "name": exporter_class.__module__ + ":" + exporter_class.__qualname__,
    "file": __import__("otel_pg_exporter").__file__,
    "pool_opened": exporter._writer._pool is not None,
}))
exporter.shutdown()
"""


def _run(args: Sequence[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=_clean_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _clean_environment() -> dict[str, str]:
    """The environment minus anything that would let the venv see this checkout or a database."""
    hidden = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "DATABASE_URL")
    return {
        name: value
        for name, value in os.environ.items()
        if name not in hidden and not name.startswith("OTEL_")
    }


def _require_success(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        pytest.fail(
            f"{what} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout with `python -m build --wheel`, once per module."""
    outdir = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(REPO_ROOT)]
    result = _run(command, cwd=outdir, timeout=600)
    if result.returncode != 0:
        # An isolated build fetches hatchling from PyPI; offline, build with the installed one.
        result = _run([*command, "--no-isolation"], cwd=outdir, timeout=600)
    _require_success(result, "python -m build --wheel")
    (built,) = outdir.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel: Path) -> set[str]:
    """Every member name of the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.fixture(scope="module")
def entry_points(wheel: Path, wheel_names: set[str]) -> configparser.ConfigParser:
    """The wheel's dist-info/entry_points.txt, parsed."""
    (name,) = [member for member in wheel_names if member.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign] # names are case-sensitive
    with zipfile.ZipFile(wheel) as archive:
        parser.read_string(archive.read(name).decode("utf-8"))
    return parser


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A fresh venv with the wheel installed (dependencies from PyPI); returns its bin folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / BIN / "python"
    result = _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheel)],
        cwd=root,
        timeout=900,
    )
    _require_success(result, "pip install <wheel>")
    return root / BIN


def test_wheel_ships_every_migration_file(wheel_names: set[str]) -> None:
    """Every file of the repository's sql/ is in the wheel under otel_pg_exporter/schema/sql/."""
    expected = {
        f"otel_pg_exporter/schema/sql/{path.name}" for path in SQL_DIR.iterdir() if path.is_file()
    }

    assert "otel_pg_exporter/schema/sql/0001_trace_spans.sql" in expected
    assert expected == {
        name for name in wheel_names if name.startswith("otel_pg_exporter/schema/sql/")
    }


def test_wheel_ships_py_typed(wheel_names: set[str]) -> None:
    """The wheel carries the PEP 561 marker, so users' type checkers read our annotations."""
    assert "otel_pg_exporter/py.typed" in wheel_names


def test_wheel_ships_no_bytecode_or_tests(wheel_names: set[str]) -> None:
    """Caches and the test suite stay out of the wheel."""
    assert [] == sorted(
        name for name in wheel_names if "__pycache__" in name or name.startswith("tests/")
    )


def test_wheel_registers_the_traces_exporter_entry_point(
    entry_points: configparser.ConfigParser,
) -> None:
    """`postgres` in opentelemetry_traces_exporter points at PostgresSpanExporter."""
    assert "otel_pg_exporter:PostgresSpanExporter" == entry_points.get(
        "opentelemetry_traces_exporter", "postgres"
    )


def test_wheel_registers_the_otel_pg_console_script(
    entry_points: configparser.ConfigParser,
) -> None:
    """The otel-pg command runs otel_pg_exporter.cli:main."""
    assert "otel_pg_exporter.cli:main" == entry_points.get("console_scripts", "otel-pg")


def test_installed_entry_point_loads_a_span_exporter_built_without_arguments(
    installed_venv: Path, tmp_path: Path
) -> None:
    """In a fresh venv the `postgres` entry point loads a SpanExporter that builds with no args."""
    result = _run(
        [str(installed_venv / "python"), "-c", LOAD_ENTRY_POINT], cwd=tmp_path, timeout=120
    )
    _require_success(result, "loading the entry point")
    loaded = json.loads(result.stdout)

    assert (True, "otel_pg_exporter.export.exporter:PostgresSpanExporter", False) == (
        loaded["is_span_exporter"],
        loaded["name"],
        loaded["pool_opened"],
    )
    assert Path(loaded["file"]).resolve().is_relative_to(installed_venv.parent.resolve())


def test_installed_otel_pg_migrate_creates_the_table(
    installed_venv: Path, tmp_path: Path, fresh_dsn: str
) -> None:
    """`otel-pg migrate` from the installed wheel exits 0 and creates trace_spans."""
    result = _run(
        [str(installed_venv / "otel-pg"), "migrate", "--dsn", fresh_dsn], cwd=tmp_path, timeout=120
    )
    _require_success(result, "otel-pg migrate")

    assert "Applied migration(s) 1" in result.stdout
    with psycopg.connect(fresh_dsn) as conn:
        row = conn.execute("SELECT to_regclass('trace_spans') IS NOT NULL").fetchone()
    assert (True,) == row


# Run inside the fresh venv: every entry point of the distribution loads, every public path
# imports, and importing the package pulls in no development helper.
LOAD_EVERYTHING = """
import importlib, importlib.metadata, json, sys
import otel_pg_exporter
imported = sorted(name for name in sys.modules if name.startswith("otel_pg_exporter"))
loaded = {}
for entry_point in importlib.metadata.distribution("otel_pg_exporter").entry_points:
    target = entry_point.load()
    loaded[entry_point.group + ":" + entry_point.name] = getattr(target, "__name__", repr(target))
from otel_pg_exporter import CountingBatchSpanProcessor, Handle, PostgresSpanExporter, configure
from otel_pg_exporter.processor import CountingBatchSpanProcessor as old_path
print(json.dumps({"imported": imported, "loaded": loaded,
                  "old_path_is_same": old_path is CountingBatchSpanProcessor}))
"""


def test_installed_wheel_loads_every_entry_point_and_imports_no_dev_helper(
    installed_venv: Path, tmp_path: Path
) -> None:
    """In a fresh venv: the exporter, configurator, post-instrument hook, environment
    variables, propagator and console script all load; otel_pg_exporter.processor still
    imports; `import otel_pg_exporter` imports nothing from testing/ (the throwaway
    PostgreSQL) nor the CLI."""
    result = _run(
        [str(installed_venv / "python"), "-c", LOAD_EVERYTHING], cwd=tmp_path, timeout=120
    )
    _require_success(result, "loading every entry point")
    found = json.loads(result.stdout)

    assert {
        "opentelemetry_traces_exporter:postgres": "PostgresSpanExporter",
        "opentelemetry_configurator:postgres": "PostgresConfigurator",
        "opentelemetry_post_instrument:postgres": "post_instrument",
        "opentelemetry_environment_variables:postgres": ("otel_pg_exporter.environment_variables"),
        "opentelemetry_propagator:xtrace": "XTracePropagator",
        "console_scripts:otel-pg": "main",
    } == found["loaded"]
    assert found["old_path_is_same"]
    assert [] == [
        name
        for name in found["imported"]
        if name.startswith(("otel_pg_exporter.testing", "otel_pg_exporter.cli"))
    ]


def test_the_readme_module_map_matches_the_folders() -> None:
    """Every module path the README's module map names exists, and every subpackage and
    top-level module of the package is in the map."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Module map", 1)[1].split("\n## ", 1)[0]
    named = {
        name
        for line in section.splitlines()
        if line.startswith("| `")
        for name in line.split("|")[1].strip().strip("`").split("`, `")
    }
    package = REPO_ROOT / "otel_pg_exporter"
    present = {
        f"otel_pg_exporter/{path.name}" + ("/" if path.is_dir() else "")
        for path in package.iterdir()
        if not path.name.startswith(("__pycache__", ".")) and path.name != "py.typed"
    }
    kept_quietly = {"otel_pg_exporter/__main__.py"}  # python -m otel_pg_exporter: the CLI

    assert [] == sorted(name for name in named if not (REPO_ROOT / name).exists())
    assert [] == sorted(present - named - kept_quietly)
