"""Settings: one precedence chain, pure and testable.

explicit argument > our variable > standard variable > default. A bad explicit argument raises
``ValueError`` naming it; a bad environment value is reported once and the default is used.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter.export.scrubbing import Scrubber, parse_keys, parse_patterns

logger = logging.getLogger("otel_pg_exporter")

_T = TypeVar("_T")

DEFAULT_TABLE = "trace_spans"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_POOL_MAX = 2
DEFAULT_EXECUTION_ID_ATTRIBUTE = "execution.id"
DEFAULT_MAX_VALUE_CHARS = 65_536
DEFAULT_MAX_SPAN_CHARS = 1_048_576
DEFAULT_SPOOL_MAX_MB = 256

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

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


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` or empty -> False, else ValueError."""
    folded = text.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"expected one of 1/true/yes/on or 0/false/no/off, got {text!r}")


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


_IDENTIFIER_MAX = 63


def _identifier(text: str) -> str:
    if not text or "\x00" in text or len(text.encode("utf-8", "surrogatepass")) > _IDENTIFIER_MAX:
        raise ValueError("must be a non-empty identifier of at most 63 bytes without NUL")
    return text


def env_value(
    environ: Mapping[str, str],
    names: tuple[str, ...],
    parse: Callable[[str], _T],
    default: _T,
) -> _T:
    """The first set variable among ``names``, parsed; a bad value is reported and skipped."""
    for name in names:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            return parse(raw.strip())
        except ValueError as exc:
            report_once(name, raw, f"{exc}; using the default")
            return default
    return default


def explicit_value(name: str, value: object, parse: Callable[[str], _T], kind: type) -> _T:
    """Validate an explicit argument: wrong type or range raises ``ValueError`` naming it."""
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{name} must be {kind.__name__}, got bool")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    try:
        return parse(str(value))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class ExporterSettings:
    """Everything PostgresSpanExporter needs, resolved once."""

    dsn: str
    schema: str | None
    table: str
    timeout_s: float
    pool_max: int
    execution_id_attribute: str
    max_value_chars: int
    max_span_chars: int
    spool_dir: str | None = None
    spool_max_mb: int = DEFAULT_SPOOL_MAX_MB

    def __repr__(self) -> str:
        return (
            f"ExporterSettings(dsn={redact_dsn(self.dsn)!r}, schema={self.schema!r}, "
            f"table={self.table!r}, timeout_s={self.timeout_s}, pool_max={self.pool_max}, "
            f"execution_id_attribute={self.execution_id_attribute!r}, "
            f"max_value_chars={self.max_value_chars}, max_span_chars={self.max_span_chars}, "
            f"spool_dir={self.spool_dir!r}, spool_max_mb={self.spool_max_mb})"
        )

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        dsn: str | None = None,
        schema: str | None = None,
        table: str | None = None,
        timeout: float | None = None,
        pool_max: int | None = None,
        execution_id_attribute: str | None = None,
        max_value_chars: int | None = None,
        max_span_chars: int | None = None,
        spool_dir: str | None = None,
        spool_max_mb: int | None = None,
    ) -> ExporterSettings:
        env = os.environ if environ is None else environ

        def pick(
            name: str,
            value: Any,
            variables: tuple[str, ...],
            parse: Callable[[str], _T],
            kind: type,
            default: _T,
        ) -> _T:
            if value is not None:
                return explicit_value(name, value, parse, kind)
            return env_value(env, variables, parse, default)

        return cls(
            dsn=resolve_dsn(dsn, env),
            schema=pick(
                "schema", schema, (ev.OTEL_EXPORTER_POSTGRES_SCHEMA,), _identifier, str, None
            ),
            table=pick(
                "table", table, (ev.OTEL_EXPORTER_POSTGRES_TABLE,), _identifier, str, DEFAULT_TABLE
            ),
            timeout_s=pick(
                "timeout",
                timeout,
                (ev.OTEL_EXPORTER_POSTGRES_TIMEOUT,),
                _positive_float,
                float,
                DEFAULT_TIMEOUT_S,
            ),
            pool_max=pick(
                "pool_max",
                pool_max,
                (ev.OTEL_EXPORTER_POSTGRES_POOL_MAX,),
                _positive_int,
                int,
                DEFAULT_POOL_MAX,
            ),
            execution_id_attribute=pick(
                "execution_id_attribute",
                execution_id_attribute,
                (ev.OTEL_EXPORTER_POSTGRES_EXECUTION_ID_ATTRIBUTE,),
                _identifier_attr,
                str,
                DEFAULT_EXECUTION_ID_ATTRIBUTE,
            ),
            max_value_chars=pick(
                "max_value_chars",
                max_value_chars,
                (ev.OTEL_EXPORTER_POSTGRES_MAX_VALUE_CHARS,),
                _at_least(64),
                int,
                DEFAULT_MAX_VALUE_CHARS,
            ),
            max_span_chars=pick(
                "max_span_chars",
                max_span_chars,
                (ev.OTEL_EXPORTER_POSTGRES_MAX_SPAN_CHARS,),
                _at_least(1024),
                int,
                DEFAULT_MAX_SPAN_CHARS,
            ),
            spool_dir=resolve_spool_dir(spool_dir, env),
            spool_max_mb=pick(
                "spool_max_mb",
                spool_max_mb,
                (ev.OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB,),
                _positive_int,
                int,
                DEFAULT_SPOOL_MAX_MB,
            ),
        )


def _identifier_attr(text: str) -> str:
    if not text:
        raise ValueError("must be a non-empty attribute name")
    return text


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def default_spool_dir(environ: Mapping[str, str]) -> str:
    """The per-user cache folder: ``$XDG_CACHE_HOME`` or ``~/.cache``, then our name."""
    base = environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "otel_pg_exporter", "spool")


def resolve_spool_dir(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """``spool_dir=`` > OTEL_EXPORTER_POSTGRES_SPOOL_DIR > the per-user cache folder; an
    empty value (argument or variable) turns the spool off: None."""
    if explicit is not None:
        if not isinstance(explicit, str):
            raise ValueError(f"spool_dir must be str, got {type(explicit).__name__}")
        return explicit.strip() or None
    if ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR in environ:
        return environ[ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR].strip() or None
    return default_spool_dir(environ)


def resolve_enabled(explicit: bool | None, environ: Mapping[str, str]) -> bool:
    """``enabled=`` > ENABLE_DB_TRACING > off. A garbage value is reported once: off."""
    if explicit is not None:
        if not isinstance(explicit, bool):
            raise ValueError(f"enabled must be bool, got {type(explicit).__name__}")
        return explicit
    return env_value(environ, (ev.ENABLE_DB_TRACING,), parse_bool, False)


def resolve_flag(
    name: str, explicit: bool | None, variable: str, environ: Mapping[str, str], default: bool
) -> bool:
    """A boolean option: explicit argument > its variable > default."""
    if explicit is not None:
        if not isinstance(explicit, bool):
            raise ValueError(f"{name} must be bool, got {type(explicit).__name__}")
        return explicit
    return env_value(environ, (variable,), parse_bool, default)


def resolve_dsn(explicit: str | None, environ: Mapping[str, str]) -> str:
    """``--dsn``/argument > OTEL_EXPORTER_POSTGRES_DSN > DATABASE_URL > "" (libpq ``PG*``)."""
    if explicit is not None:
        if not isinstance(explicit, str):
            raise ValueError(f"dsn must be str, got {type(explicit).__name__}")
        return explicit
    for name in (ev.OTEL_EXPORTER_POSTGRES_DSN, "DATABASE_URL"):
        value = environ.get(name, "").strip()
        if value:
            return value
    return ""


# Greedy up to the last "@": an unescaped "@" inside a password is redacted too, never shown.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>.*)(?=@)", re.I)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S*)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.I)


def conninfo_problem(dsn: str, exc: BaseException) -> str:
    """Why libpq could not parse ``dsn``, without the password libpq's message may quote."""
    if redact_dsn(dsn) == dsn and "password" not in dsn.lower():
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    else:
        detail = "the detail is withheld because it may quote the password"
    return (
        f"invalid connection string {redact_dsn(dsn)!r} ({detail}); "
        "check quoting, and percent-encode special characters in a URL"
    )


def redact_dsn(dsn: str) -> str:
    """The connection string with any password replaced by ``***``."""
    for pattern in (_URL_PASSWORD, _KEYWORD_PASSWORD, _QUERY_PASSWORD):
        dsn = pattern.sub(r"\g<head>***", dsn)
    return dsn


def resolve_scrubber(
    scrub: bool | None,
    patterns: Sequence[str] | None,
    allow: Sequence[str] | None,
    environ: Mapping[str, str],
) -> Scrubber | None:
    """The credential scrubber, on unless turned off; None when off."""
    if not resolve_flag("scrub", scrub, ev.OTEL_EXPORTER_POSTGRES_SCRUB, environ, True):
        return None
    for name, value in (("scrub_patterns", patterns), ("scrub_allow", allow)):
        if value is not None and (
            isinstance(value, str) or not all(isinstance(item, str) for item in value)
        ):
            raise ValueError(f"{name} must be a sequence of str")
    if patterns is not None:
        try:
            Scrubber(extra_patterns=patterns)
        except ValueError as exc:
            raise ValueError(f"scrub_patterns: {exc}") from None
        chosen = tuple(patterns)
    else:
        raw = environ.get(ev.OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS, "")
        chosen = ()
        for pattern in parse_patterns(raw):
            try:
                Scrubber(extra_patterns=(pattern,))
            except ValueError as exc:
                report_once(ev.OTEL_EXPORTER_POSTGRES_SCRUB_PATTERNS, pattern, f"{exc}; skipped")
            else:
                chosen += (pattern,)
    if allow is None:
        allow = parse_keys(environ.get(ev.OTEL_EXPORTER_POSTGRES_SCRUB_ALLOW, ""))
    return Scrubber(extra_patterns=chosen, allowed_keys=tuple(allow))
