"""Settings without a database: precedence, bad values, password redaction, lazy construction."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

import otel_pg_exporter
from otel_pg_exporter import PostgresSpanExporter
from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter import settings as config_module
from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter.schema.table import DEFAULT_TABLE
from otel_pg_exporter.settings import (
    DEFAULT_POOL_MAX,
    DEFAULT_TIMEOUT_S,
    ExporterSettings,
)

SECRET = "Hunter2-Secret"
UNREACHABLE_DSN = f"postgresql://otel:{SECRET}@127.0.0.1:1/traces"

SETTING_VARIABLES = (
    ev.OTEL_EXPORTER_POSTGRES_DSN,
    ev.OTEL_EXPORTER_POSTGRES_SCHEMA,
    ev.OTEL_EXPORTER_POSTGRES_TABLE,
    ev.OTEL_EXPORTER_POSTGRES_TIMEOUT,
    ev.OTEL_EXPORTER_POSTGRES_POOL_MAX,
    ev.OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE,
    ev.OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS,
    ev.OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS,
    "DATABASE_URL",
)


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing reported yet, no settings in os.environ."""
    monkeypatch.setattr(config_module, "_reported", set())
    for name in SETTING_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "otel_pg_exporter" and record.levelno == logging.WARNING
    ]


# --- precedence -----------------------------------------------------------------------------


def test_dsn_explicit_argument_wins_over_every_variable() -> None:
    """An explicit dsn beats OTEL_EXPORTER_POSTGRES_DSN and DATABASE_URL."""
    environ = {ev.OTEL_EXPORTER_POSTGRES_DSN: "host=ours", "DATABASE_URL": "host=standard"}

    assert "host=explicit" == ExporterSettings.resolve(environ, dsn="host=explicit").dsn


def test_dsn_our_variable_wins_over_database_url() -> None:
    """OTEL_EXPORTER_POSTGRES_DSN beats DATABASE_URL."""
    environ = {ev.OTEL_EXPORTER_POSTGRES_DSN: "host=ours", "DATABASE_URL": "host=standard"}

    assert "host=ours" == ExporterSettings.resolve(environ).dsn


def test_dsn_database_url_is_used_when_our_variable_is_unset_or_blank() -> None:
    """DATABASE_URL is used when OTEL_EXPORTER_POSTGRES_DSN is missing or only whitespace."""
    assert "host=standard" == ExporterSettings.resolve({"DATABASE_URL": "host=standard"}).dsn
    assert (
        "host=standard"
        == ExporterSettings.resolve(
            {ev.OTEL_EXPORTER_POSTGRES_DSN: "  ", "DATABASE_URL": "host=standard"}
        ).dsn
    )


def test_dsn_defaults_to_empty_so_libpq_reads_its_pg_variables() -> None:
    """With no DSN anywhere the DSN is empty, which libpq completes from its PG* variables."""
    assert "" == ExporterSettings.resolve({}).dsn


def test_defaults_without_any_variable() -> None:
    """An empty environment gives the documented defaults."""
    settings = ExporterSettings.resolve({})

    assert (None, DEFAULT_TABLE, DEFAULT_TIMEOUT_S, DEFAULT_POOL_MAX, "execution.id") == (
        settings.schema,
        settings.table,
        settings.timeout_s,
        settings.pool_max,
        settings.execution_id_attribute,
    )
    assert ("trace_spans", 10.0, 2) == (DEFAULT_TABLE, DEFAULT_TIMEOUT_S, DEFAULT_POOL_MAX)


def test_variables_override_defaults() -> None:
    """Each OTEL_EXPORTER_POSTGRES_* variable replaces its default."""
    environ = {
        ev.OTEL_EXPORTER_POSTGRES_SCHEMA: "telemetry",
        ev.OTEL_EXPORTER_POSTGRES_TABLE: "spans",
        ev.OTEL_EXPORTER_POSTGRES_TIMEOUT: "2.5",
        ev.OTEL_EXPORTER_POSTGRES_POOL_MAX: "4",
        ev.OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE: "job.run_id",
    }
    settings = ExporterSettings.resolve(environ)

    assert ("telemetry", "spans", 2.5, 4, "job.run_id") == (
        settings.schema,
        settings.table,
        settings.timeout_s,
        settings.pool_max,
        settings.execution_id_attribute,
    )


def test_explicit_arguments_override_variables() -> None:
    """Explicit arguments beat the variables for every setting."""
    environ = {
        ev.OTEL_EXPORTER_POSTGRES_SCHEMA: "telemetry",
        ev.OTEL_EXPORTER_POSTGRES_TABLE: "spans",
        ev.OTEL_EXPORTER_POSTGRES_TIMEOUT: "2.5",
        ev.OTEL_EXPORTER_POSTGRES_POOL_MAX: "4",
    }
    settings = ExporterSettings.resolve(
        environ, schema="explicit_schema", table="explicit_table", timeout=7, pool_max=9
    )

    assert ("explicit_schema", "explicit_table", 7.0, 9) == (
        settings.schema,
        settings.table,
        settings.timeout_s,
        settings.pool_max,
    )


def test_resolve_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an environ mapping, resolve reads the process environment."""
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_TABLE, "from_os_environ")

    assert "from_os_environ" == ExporterSettings.resolve().table


# --- bad environment values -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "default"),
    [
        (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT, "abc", "timeout_s", DEFAULT_TIMEOUT_S),
        (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT, "-1", "timeout_s", DEFAULT_TIMEOUT_S),
        (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT, "nan", "timeout_s", DEFAULT_TIMEOUT_S),
        (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT, "inf", "timeout_s", DEFAULT_TIMEOUT_S),
        (ev.OTEL_EXPORTER_POSTGRES_POOL_MAX, "0", "pool_max", DEFAULT_POOL_MAX),
        (ev.OTEL_EXPORTER_POSTGRES_POOL_MAX, "2.5", "pool_max", DEFAULT_POOL_MAX),
        (ev.OTEL_EXPORTER_POSTGRES_TABLE, "t" * 64, "table", DEFAULT_TABLE),
        (ev.OTEL_EXPORTER_POSTGRES_TABLE, "nul\x00byte", "table", DEFAULT_TABLE),
    ],
)
def test_bad_variable_falls_back_to_the_default_and_warns_once(
    caplog: pytest.LogCaptureFixture, variable: str, value: str, attribute: str, default: object
) -> None:
    """A bad value uses the default and warns once naming the variable, however often resolved."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")

    first = ExporterSettings.resolve({variable: value})
    second = ExporterSettings.resolve({variable: value})

    assert (default, default) == (getattr(first, attribute), getattr(second, attribute))
    warnings = _warnings(caplog)
    assert 1 == len(warnings)
    assert variable in warnings[0]
    assert "default" in warnings[0]


def test_a_different_bad_value_warns_again(caplog: pytest.LogCaptureFixture) -> None:
    """The once-only rule is per value: a new bad value of the same variable is reported too."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")

    ExporterSettings.resolve({ev.OTEL_EXPORTER_POSTGRES_TIMEOUT: "abc"})
    ExporterSettings.resolve({ev.OTEL_EXPORTER_POSTGRES_TIMEOUT: "xyz"})

    assert 2 == len(_warnings(caplog))


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_table_variable_counts_as_unset(caplog: pytest.LogCaptureFixture, value: str) -> None:
    """An empty or blank variable is unset (OpenTelemetry's rule): default table, no warning."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")

    settings = ExporterSettings.resolve({ev.OTEL_EXPORTER_POSTGRES_TABLE: value})

    assert DEFAULT_TABLE == settings.table
    assert [] == _warnings(caplog)


def test_bad_variable_warning_never_shows_a_password(caplog: pytest.LogCaptureFixture) -> None:
    """A warning about a DSN-like variable shows the value with its password redacted."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")

    config_module.report_once("DATABASE_URL", UNREACHABLE_DSN, "testing the report")

    assert 1 == len(_warnings(caplog))
    assert SECRET not in caplog.text


# --- bad explicit arguments -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "value"),
    [
        ("timeout", "5"),
        ("timeout", 0),
        ("timeout", -1.5),
        ("timeout", True),
        ("pool_max", 0),
        ("pool_max", True),
        ("pool_max", 2.0),
        ("pool_max", "2"),
        ("table", ""),
        ("table", "t" * 64),
        ("table", 42),
        ("schema", ""),
        ("dsn", b"host=localhost"),
    ],
)
def test_bad_explicit_argument_raises_value_error_naming_it(parameter: str, value: object) -> None:
    """A wrong-kind or out-of-range explicit argument raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match=parameter):
        ExporterSettings.resolve({}, **{parameter: value})


def test_exporter_constructor_raises_on_a_bad_explicit_argument() -> None:
    """PostgresSpanExporter rejects a bad explicit argument the same way, naming it."""
    with pytest.raises(ValueError, match="pool_max"):
        PostgresSpanExporter(UNREACHABLE_DSN, pool_max=0)


# --- password redaction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            f"postgresql://otel:{SECRET}@db.example:5432/traces",
            "postgresql://otel:***@db.example:5432/traces",
        ),
        (
            f"postgres://otel:{SECRET}@db.example/traces?sslmode=require",
            "postgres://otel:***@db.example/traces?sslmode=require",
        ),
        (
            f"postgresql://otel:{SECRET}@h1:5432,h2:5433/traces",
            "postgresql://otel:***@h1:5432,h2:5433/traces",
        ),
        (f"postgresql://:{SECRET}@[::1]:5432/traces", "postgresql://:***@[::1]:5432/traces"),
        (
            "postgresql://otel:p@ss@w0rd@db.example/traces",
            "postgresql://otel:***@db.example/traces",
        ),
        (
            f"host=db.example password={SECRET} dbname=traces",
            "host=db.example password=*** dbname=traces",
        ),
        (
            "host=db.example password='with spaces and \\' quote' dbname=traces",
            "host=db.example password=*** dbname=traces",
        ),
        (
            f"host=db.example password = {SECRET} user=otel",
            "host=db.example password = *** user=otel",
        ),
        (f"host=db.example PASSWORD={SECRET}", "host=db.example PASSWORD=***"),
        (
            f"postgresql://otel@db.example/traces?sslmode=require&password={SECRET}",
            "postgresql://otel@db.example/traces?sslmode=require&password=***",
        ),
        (
            f"postgresql://otel@db.example/traces?password={SECRET}",
            "postgresql://otel@db.example/traces?password=***",
        ),
        ("postgresql://otel@db.example/traces", "postgresql://otel@db.example/traces"),
        ("host=db.example user=otel dbname=traces", "host=db.example user=otel dbname=traces"),
        ("", ""),
    ],
)
def test_redact_dsn_replaces_the_password(dsn: str, expected: str) -> None:
    """redact_dsn replaces the password with *** in URL, keyword and query forms, nothing else."""
    assert expected == redact_dsn(dsn)


def test_redact_dsn_hides_a_query_password_followed_by_more_parameters() -> None:
    """A ?password= followed by other parameters is hidden, the host and database kept."""
    redacted = redact_dsn(f"postgresql://otel@db.example/traces?password={SECRET}&sslmode=require")

    assert SECRET not in redacted
    assert redacted.startswith("postgresql://otel@db.example/traces?password=***")


@given(
    password=st.text(
        alphabet=st.characters(codec="ascii", categories=["L", "N", "P", "S"]),
        min_size=4,
    ).filter(lambda text: "'" not in text and "\\" not in text)
)
def test_redact_dsn_never_shows_a_keyword_password(password: str) -> None:
    """Whatever a single-quoted keyword-form password holds, redact_dsn shows none of it."""
    redacted = redact_dsn(f"host=db.example user=otel password='{password}' dbname=traces")

    assert "host=db.example user=otel password=*** dbname=traces" == redacted


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://otel:{SECRET}@db.example/traces",
        f"host=db.example password='{SECRET} x' dbname=traces",
        f"postgresql://otel@db.example/traces?password={SECRET}",
    ],
)
def test_settings_repr_never_shows_the_password(dsn: str) -> None:
    """repr(ExporterSettings) shows the DSN with its password redacted."""
    text = repr(ExporterSettings.resolve({}, dsn=dsn))

    assert SECRET not in text
    assert "***" in text


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://otel:{SECRET}@db.example/traces",
        f"host=db.example password='{SECRET} x' dbname=traces",
        f"postgresql://otel@db.example/traces?password={SECRET}",
    ],
)
def test_exporter_repr_never_shows_the_password(dsn: str) -> None:
    """repr(PostgresSpanExporter) shows its settings with the password redacted."""
    exporter = PostgresSpanExporter(dsn)
    try:
        text = repr(exporter)
    finally:
        exporter.shutdown()

    assert SECRET not in text
    assert "db.example" in text


# --- construction is lazy and never fails on the environment --------------------------------


def test_exporter_builds_from_garbage_environment_without_connecting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With garbage in every variable, PostgresSpanExporter() builds, warns and opens no pool."""
    caplog.set_level(logging.WARNING, logger="otel_pg_exporter")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_DSN, UNREACHABLE_DSN)
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_TIMEOUT, "abc")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_POOL_MAX, "0")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_TABLE, "x" * 100)
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_SCHEMA, "ü" * 32)
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS, "-5")
    monkeypatch.setenv(ev.OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS, "lots")

    exporter = PostgresSpanExporter()
    try:
        assert exporter._writer._pool is None
        assert (DEFAULT_TIMEOUT_S, DEFAULT_POOL_MAX, DEFAULT_TABLE, None) == (
            exporter.settings.timeout_s,
            exporter.settings.pool_max,
            exporter.settings.table,
            exporter.settings.schema,
        )
    finally:
        exporter.shutdown()
    assert 6 == len(_warnings(caplog))
    assert SECRET not in caplog.text


def test_exporter_with_an_unreachable_dsn_does_not_connect_on_construction() -> None:
    """An explicit DSN to a closed port builds an exporter whose pool is still unopened."""
    exporter = PostgresSpanExporter(UNREACHABLE_DSN, timeout=1)
    try:
        assert exporter._writer._pool is None
    finally:
        exporter.shutdown()


@given(
    environ=st.fixed_dictionaries(
        {},
        optional={
            name: st.text()
            | st.from_regex(r"\s*[-+]?[0-9_.]*([eE][-+]?[0-9]+)?\s*", fullmatch=True)
            for name in SETTING_VARIABLES
        },
    )
)
def test_resolve_never_raises_on_any_environment(environ: dict[str, str]) -> None:
    """Any text in any of the variables resolves to settings without raising."""
    settings = ExporterSettings.resolve(environ)

    assert settings.timeout_s > 0
    assert settings.pool_max >= 1
    assert settings.table


# --- every setting declared once ------------------------------------------------------------


def test_every_option_of_configure_and_the_exporter_is_a_declared_setting() -> None:
    """configure()'s keyword arguments are exactly the settings declared in settings.py, and
    the exporter's are a subset: no option is resolved outside the one chain."""
    import inspect

    declared = set(config_module.SETTINGS)
    configure_options = set(inspect.signature(otel_pg_exporter.configure).parameters)
    exporter_options = set(inspect.signature(PostgresSpanExporter).parameters) - {"environ"}

    assert declared == configure_options
    assert set() == exporter_options - declared


def test_every_variable_name_is_a_declared_settings_variable() -> None:
    """environment_variables (the opentelemetry-instrument flags) names exactly the variables
    the declared settings read, apart from the SDK's and libpq's own."""
    names = {value for name, value in vars(ev).items() if name.isupper()}
    read = {
        variable
        for setting in config_module.SETTINGS.values()
        for variable in setting.variables
        if not variable.startswith("OTEL_BSP_") and variable != "DATABASE_URL"
    }

    assert names == read


def test_the_readme_settings_table_names_every_setting() -> None:
    """Each declared setting appears in the README's Settings table with its variables."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = [
        name
        for name, setting in config_module.SETTINGS.items()
        if f"`{name}`" not in table
        or not all(f"`{variable}`" in table for variable in setting.variables)
    ]

    assert [] == missing
