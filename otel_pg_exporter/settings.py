"""Every setting, declared once, resolved in one precedence chain.

A ``Setting`` names the keyword argument (of ``configure()``, ``PostgresSpanExporter`` or the
``otel-pg`` commands), the environment variables read for it (ours first, then the standard
one), how text becomes a value, the default and a one-line doc. ``Setting.resolve`` is the one
chain: explicit argument > our variable > standard variable > default. A bad explicit argument
raises ``SettingsError`` (a ``ValueError``) naming it; a bad environment value is reported
once (never with a password) and the default is used, so a typo never stops an application.

The settings objects below (``ExporterSettings``, ``BatchSettings``, ``SentrySettings``) are
frozen dataclasses whose field names are setting names; ``resolve_fields`` fills any of them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter._dsn import redact_dsn
from otel_pg_exporter.errors import SettingsError
from otel_pg_exporter.schema.table import DEFAULT_TABLE

logger = logging.getLogger("otel_pg_exporter")

_T = TypeVar("_T")
_D = TypeVar("_D")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_POOL_MAX = 2
DEFAULT_POOL_WAIT_MS = 100
DEFAULT_EXECUTION_ID_ATTRIBUTE = "execution.id"
DEFAULT_MAX_VALUE_CHARS = 65_536
DEFAULT_MAX_SPAN_CHARS = 1_048_576
DEFAULT_SPOOL_MAX_MB = 256
DEFAULT_RETENTION_DAYS = 30
# The SDK's 2,048 spans last 0.4 s at 5,000 spans/s; a database pause (a commit waiting on a
# checkpoint, a lock given up after 1 s) needs a little more.
DEFAULT_MAX_QUEUE_SIZE = 8192
DEFAULT_SCHEDULE_DELAY_MILLIS = 5000
DEFAULT_MAX_EXPORT_BATCH_SIZE = 512

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_IDENTIFIER_MAX = 63

# Process state: which bad values were already reported (a test fixture resets it).
_reported: set[tuple[str, str]] = set()
_reported_lock = threading.Lock()


def report_once(variable: str, value: str, problem: str) -> None:
    """Warn about a bad environment value once per process (never printing a password)."""
    key = (variable, value)
    with _reported_lock:
        if key in _reported:
            return
        _reported.add(key)
    shown = redact_dsn(value) if "DSN" in variable or "URL" in variable else value
    logger.warning("Ignoring %s=%r: %s", variable, shown, problem)


# --- text -> value ------------------------------------------------------------------------


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` or empty -> False, else ValueError."""
    folded = text.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"expected one of 1/true/yes/on or 0/false/no/off, got {text!r}")


def _text(text: str) -> str:
    return text


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _days(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number of days, 0 to keep spans forever")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _identifier(text: str) -> str:
    if not text or "\x00" in text or len(text.encode("utf-8", "surrogatepass")) > _IDENTIFIER_MAX:
        raise ValueError("must be a non-empty identifier of at most 63 bytes without NUL")
    return text


def _attribute_name(text: str) -> str:
    if not text:
        raise ValueError("must be a non-empty attribute name")
    return text


def _sample_rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a number from 0 to 1")
    return value


def _optional_path(text: str) -> str | None:
    return text.strip() or None


def parse_keys(text: str) -> tuple[str, ...]:
    """Names from a comma-separated environment variable, blanks skipped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


PATTERN_SEPARATOR = ";;"


def parse_patterns(text: str) -> tuple[str, ...]:
    """Regexes from one environment variable: separated by ``;;`` or newlines, surrounding
    whitespace ignored (write ``[ ]`` for a leading space), empty entries skipped."""
    entries = text.replace(PATTERN_SEPARATOR, "\n").split("\n")
    return tuple(entry.strip() for entry in entries if entry.strip())


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _regex_list(text: str) -> tuple[str, ...]:
    """``;;``-separated regular expressions; one that does not compile is reported, skipped."""
    kept: tuple[str, ...] = ()
    for pattern in text.split(PATTERN_SEPARATOR):
        if pattern and _compiles(pattern):
            kept += (pattern,)
        elif pattern:
            report_once(ev.SENTRY_IGNORE_MESSAGES, pattern, "not a regular expression")
    return kept


# --- explicit object -> value -------------------------------------------------------------


def _of_kind(kind: type, parse: Callable[[str], _T]) -> Callable[[object], _T]:
    """Accept an explicit value of ``kind`` (an int for a float), checked by ``parse``."""

    def accept(value: object) -> _T:
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"must be {kind.__name__}, got bool")
        if kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kind):
            raise ValueError(f"must be {kind.__name__}, got {type(value).__name__}")
        return parse(str(value))

    return accept


def _string_sequence(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"must be a sequence of str, got {type(value).__name__}")
    if not all(isinstance(item, str) for item in value):
        raise ValueError("must be a sequence of str")
    return tuple(value)


def _regex_sequence(value: object) -> tuple[str, ...]:
    items = _string_sequence(value)
    if not all(_compiles(item) for item in items):
        raise ValueError("must be a sequence of regular expressions")
    return items


def _is_error_name_or_type(item: object) -> bool:
    return isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))


def _error_sequence(value: object) -> tuple[str | type[BaseException], ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, Sequence)
        or not all(_is_error_name_or_type(item) for item in value)
    ):
        raise ValueError("must be a sequence of names or exception types")
    return tuple(value)


def _callable(value: object) -> Callable[..., Any]:
    if not callable(value):
        raise ValueError("must be callable")
    return value


def _attribute_mapping(value: object) -> Mapping[str, Any]:
    if not (isinstance(value, Mapping) and all(isinstance(key, str) and key for key in value)):
        raise ValueError("must be a mapping with non-empty str keys")
    return value


def _sampler(value: object) -> Any:
    from opentelemetry.sdk.trace.sampling import Sampler

    if not isinstance(value, Sampler):
        raise ValueError(f"must be a Sampler, got {type(value).__name__}")
    return value


def _connection_pool(value: object) -> Any:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    if isinstance(value, AsyncConnectionPool):
        raise ValueError(
            "an AsyncConnectionPool cannot be used from the exporter's threads; pass a "
            "psycopg_pool.ConnectionPool (the application's sync pool, or a small one of its "
            "own), or leave pool unset and let the exporter open its own (pool_max)"
        )
    if not isinstance(value, ConnectionPool):
        raise ValueError(f"must be a psycopg_pool.ConnectionPool, got {type(value).__name__}")
    return value


# --- the declarations ---------------------------------------------------------------------

_NO_NAMES: tuple[str, ...] = ()
_NO_ERRORS: tuple[str | type[BaseException], ...] = ()


@dataclass(frozen=True)
class Setting(Generic[_T]):
    """One option: its argument name, variables, parser, default and doc."""

    name: str
    variables: tuple[str, ...]
    default: _T
    doc: str
    parse: Callable[[str], _T] = _text  # type: ignore[assignment]  # text settings
    accept: Callable[[object], _T] | None = None
    # Where a variable set to an empty value means something (the spool folder: off), it is
    # parsed; elsewhere it counts as unset.
    empty_is_a_value: bool = False
    # A default that depends on the environment (the per-user cache folder).
    default_from: Callable[[Mapping[str, str]], _T] | None = None

    def resolve(self, explicit: object, environ: Mapping[str, str]) -> _T:
        """explicit argument > our variable > standard variable > default."""
        if explicit is not None:
            accept = self.accept or _of_kind(type(self.default), self.parse)
            try:
                return accept(explicit)
            except ValueError as exc:
                raise SettingsError(f"{self.name}: {exc}") from None
        for name in self.variables:
            raw = environ.get(name)
            if raw is None or (raw.strip() == "" and not self.empty_is_a_value):
                continue
            try:
                return self.parse(raw.strip())
            except ValueError as exc:
                report_once(name, raw, f"{exc}; using the default")
                break
        return self.default if self.default_from is None else self.default_from(environ)


def default_spool_dir(environ: Mapping[str, str]) -> str:
    """The per-user cache folder: ``$XDG_CACHE_HOME`` or ``~/.cache``, then our name."""
    base = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "otel_pg_exporter", "spool")


SETTINGS: dict[str, Setting[Any]] = {
    setting.name: setting
    for setting in (
        Setting(
            "enabled",
            (ev.ENABLE_DB_TRACING,),
            False,
            "master switch: nothing connects to or is written to the database unless true",
            parse_bool,
        ),
        Setting(
            "dsn",
            (ev.OTEL_EXPORTER_POSTGRES_DSN, "DATABASE_URL"),
            "",
            "libpq connection string or postgresql:// URL; empty: libpq's PG* variables",
            _text,
        ),
        Setting(
            "schema",
            (ev.OTEL_EXPORTER_POSTGRES_SCHEMA,),
            None,
            "schema of the spans table; default: the connection's current schema",
            _identifier,
            _of_kind(str, _identifier),
        ),
        Setting(
            "table",
            (ev.OTEL_EXPORTER_POSTGRES_TABLE,),
            DEFAULT_TABLE,
            "name of the spans table (always quoted as an identifier)",
            _identifier,
        ),
        Setting(
            "timeout",
            (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT,),
            DEFAULT_TIMEOUT_S,
            "seconds (not milliseconds) that one export may take in all, connecting included",
            _positive_float,
        ),
        Setting(
            "pool_max",
            (ev.OTEL_EXPORTER_POSTGRES_POOL_MAX,),
            DEFAULT_POOL_MAX,
            "most database connections the exporter opens per process",
            _positive_int,
        ),
        Setting(
            "pool",
            (),
            None,
            "the application's psycopg_pool.ConnectionPool, shared: one connection per batch "
            "at most, borrowed for one short transaction, the pool never closed",
            accept=_connection_pool,
        ),
        Setting(
            "pool_wait",
            (ev.OTEL_EXPORTER_POSTGRES_POOL_WAIT_MS,),
            DEFAULT_POOL_WAIT_MS,
            "milliseconds a batch waits for a connection of a shared pool, then it is spooled",
            _at_least(0),
        ),
        Setting(
            "execution_id_attribute",
            (ev.OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE,),
            DEFAULT_EXECUTION_ID_ATTRIBUTE,
            "span attribute copied into execution_id when it holds an integer",
            _attribute_name,
        ),
        Setting(
            "max_value_chars",
            (ev.OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS,),
            DEFAULT_MAX_VALUE_CHARS,
            "longest string stored for one attribute value; longer ones are cut with a marker",
            _at_least(64),
        ),
        Setting(
            "max_span_chars",
            (ev.OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS,),
            DEFAULT_MAX_SPAN_CHARS,
            "most characters of attributes, events and links stored for one span in all",
            _at_least(1024),
        ),
        Setting(
            "spool_dir",
            (ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR,),
            None,
            "folder of the on-disk buffer used while the database is unreachable; empty: off",
            _optional_path,
            _of_kind(str, _optional_path),
            empty_is_a_value=True,
            default_from=default_spool_dir,
        ),
        Setting(
            "spool_max_mb",
            (ev.OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB,),
            DEFAULT_SPOOL_MAX_MB,
            "largest size of the on-disk buffer, in megabytes",
            _positive_int,
        ),
        Setting(
            "retention_days",
            (ev.OTEL_EXPORTER_POSTGRES_RETENTION_DAYS,),
            DEFAULT_RETENTION_DAYS,
            "spans created more than this many days ago are deleted in the background; 0: never",
            _days,
        ),
        Setting(
            "scrub",
            (ev.OTEL_EXPORTER_POSTGRES_SCRUB,),
            True,
            "replace attribute keys and values that look like credentials with a marker",
            parse_bool,
        ),
        Setting(
            "scrub_patterns",
            (ev.OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS,),
            _NO_NAMES,
            "extra regular expressions (;;-separated) marking a key or value as secret",
            parse_patterns,
            _string_sequence,
        ),
        Setting(
            "scrub_allow",
            (ev.OTEL_EXPORTER_POSTGRES_SCRUB_ALLOW,),
            _NO_NAMES,
            "comma-separated attribute keys never scrubbed",
            parse_keys,
            _string_sequence,
        ),
        Setting(
            "fast_path",
            (ev.OTEL_EXPORTER_POSTGRES_FAST_PATH,),
            True,
            "map common spans with the compiled module when it was built; false: pure Python",
            parse_bool,
        ),
        Setting(
            "log_correlation",
            (ev.OTEL_EXPORTER_POSTGRES_LOG_CORRELATION,),
            True,
            "logging records get trace_id and span_id fields",
            parse_bool,
        ),
        Setting(
            "service_name",
            (),
            None,
            "resource service.name; default: the SDK's (OTEL_SERVICE_NAME)",
            _non_empty,
            _of_kind(str, _non_empty),
        ),
        Setting(
            "resource_attributes",
            (),
            None,
            "extra resource attributes; the SDK also reads OTEL_RESOURCE_ATTRIBUTES",
            accept=_attribute_mapping,
        ),
        Setting(
            "sampler",
            (),
            None,
            "a Sampler for a new tracer provider; the SDK also reads OTEL_TRACES_SAMPLER",
            accept=_sampler,
        ),
        Setting(
            "schedule_delay_millis",
            ("OTEL_BSP_SCHEDULE_DELAY",),
            DEFAULT_SCHEDULE_DELAY_MILLIS,
            "milliseconds between two exports of the batch processor",
            _positive_int,
        ),
        Setting(
            "max_queue_size",
            ("OTEL_BSP_MAX_QUEUE_SIZE",),
            DEFAULT_MAX_QUEUE_SIZE,
            "spans the batch processor holds before dropping the oldest",
            _positive_int,
        ),
        Setting(
            "max_export_batch_size",
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",),
            DEFAULT_MAX_EXPORT_BATCH_SIZE,
            "most spans in one export",
            _positive_int,
        ),
        Setting(
            "sentry_dsn",
            (ev.SENTRY_DSN,),
            None,
            "turns the Sentry bridge on: error events share ids with trace_spans rows",
            _non_empty,
            _of_kind(str, _non_empty),
        ),
        Setting(
            "sentry_environment",
            (ev.SENTRY_ENVIRONMENT,),
            None,
            "Sentry environment; default: sentry-sdk's (production)",
            _non_empty,
            _of_kind(str, _non_empty),
        ),
        Setting(
            "sentry_release",
            (ev.SENTRY_RELEASE,),
            None,
            "Sentry release; default: what sentry-sdk detects",
            _non_empty,
            _of_kind(str, _non_empty),
        ),
        Setting(
            "sentry_traces_sample_rate",
            (ev.SENTRY_TRACES_SAMPLE_RATE,),
            None,
            "share of traces (0 to 1) also sent to Sentry, whole; default 0.1 in production",
            _sample_rate,
            _of_kind(float, _sample_rate),
        ),
        Setting(
            "sentry_ignore_errors",
            (ev.SENTRY_IGNORE_ERRORS,),
            _NO_ERRORS,
            "exception class names (comma-separated) whose events never reach Sentry",
            parse_keys,
            _error_sequence,
        ),
        Setting(
            "sentry_ignore_messages",
            (ev.SENTRY_IGNORE_MESSAGES,),
            _NO_NAMES,
            "regular expressions (;;-separated) of error messages never sent to Sentry",
            _regex_list,
            _regex_sequence,
        ),
        Setting(
            "sentry_before_send",
            (),
            None,
            "a before_send hook run before the bridge's own",
            accept=_callable,
        ),
    )
}


def setting(name: str) -> Setting[Any]:
    """The declaration of ``name`` (KeyError for an unknown setting)."""
    return SETTINGS[name]


def resolve(name: str, explicit: object, environ: Mapping[str, str] | None = None) -> Any:
    """One setting through the precedence chain (``os.environ`` by default)."""
    return SETTINGS[name].resolve(explicit, os.environ if environ is None else environ)


def resolve_fields(
    cls: type[_D], environ: Mapping[str, str], explicit: Mapping[str, object], prefix: str = ""
) -> _D:
    """Build the settings dataclass ``cls``: each field is the setting ``prefix + field``."""
    values = {
        field.name: SETTINGS[prefix + field.name].resolve(
            explicit.get(prefix + field.name), environ
        )
        for field in dataclasses.fields(cast(Any, cls))
    }
    return cls(**values)


# --- the settings objects -----------------------------------------------------------------


@dataclass(frozen=True)
class ExporterSettings:
    """Everything PostgresSpanExporter needs, resolved once."""

    dsn: str
    schema: str | None
    table: str
    timeout: float
    pool_max: int
    execution_id_attribute: str
    max_value_chars: int
    max_span_chars: int
    spool_dir: str | None = None
    spool_max_mb: int = DEFAULT_SPOOL_MAX_MB
    retention_days: int = DEFAULT_RETENTION_DAYS
    pool_wait: int = DEFAULT_POOL_WAIT_MS
    fast_path: bool = True

    @property
    def timeout_s(self) -> float:
        """``timeout``, whose unit is seconds."""
        return self.timeout

    def __repr__(self) -> str:
        return (
            f"ExporterSettings(dsn={redact_dsn(self.dsn)!r}, schema={self.schema!r}, "
            f"table={self.table!r}, timeout_s={self.timeout}, pool_max={self.pool_max}, "
            f"execution_id_attribute={self.execution_id_attribute!r}, "
            f"max_value_chars={self.max_value_chars}, max_span_chars={self.max_span_chars}, "
            f"spool_dir={self.spool_dir!r}, spool_max_mb={self.spool_max_mb}, "
            f"retention_days={self.retention_days}, pool_wait={self.pool_wait}, "
            f"fast_path={self.fast_path})"
        )

    @classmethod
    def resolve(
        cls, environ: Mapping[str, str] | None = None, **explicit: object
    ) -> ExporterSettings:
        """The exporter's settings; ``explicit`` holds keyword arguments (None: not given)."""
        unknown = set(explicit) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown exporter settings: {', '.join(sorted(unknown))}")
        return resolve_fields(cls, os.environ if environ is None else environ, explicit)


@dataclass(frozen=True)
class BatchSettings:
    """The batch processor's options; a bad OTEL_BSP_* value never raises."""

    schedule_delay_millis: int
    max_queue_size: int
    max_export_batch_size: int

    @classmethod
    def resolve(cls, environ: Mapping[str, str], **explicit: object) -> BatchSettings:
        settings = resolve_fields(cls, environ, explicit)
        if settings.max_export_batch_size > settings.max_queue_size:
            both_explicit = explicit.get("max_export_batch_size") is not None
            if both_explicit and explicit.get("max_queue_size") is not None:
                raise SettingsError("max_export_batch_size must not exceed max_queue_size")
            # One of them came from a default or the environment: fit it.
            settings = dataclasses.replace(settings, max_export_batch_size=settings.max_queue_size)
        return settings


@dataclass(frozen=True)
class SentrySettings:
    """The Sentry bridge's settings (``configure(sentry_*=...)``, ``SENTRY_*``)."""

    dsn: str | None
    environment: str | None
    release: str | None
    traces_sample_rate: float | None
    ignore_errors: tuple[str | type[BaseException], ...]
    ignore_messages: tuple[str, ...]
    before_send: Callable[..., Any] | None

    @classmethod
    def resolve(cls, environ: Mapping[str, str], **explicit: object) -> SentrySettings:
        """``explicit`` keys are the ``configure()`` names (``sentry_dsn``, ...)."""
        return resolve_fields(cls, environ, explicit, prefix="sentry_")
