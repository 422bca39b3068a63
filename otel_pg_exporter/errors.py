"""Every error the package raises to its callers derives from ``OtelPgError``.

``export()`` never raises: the write and spool errors below are what the exporter catches,
counts and logs. Settings, migration (and query) errors reach the caller; none of their
messages contains a password.
"""

from __future__ import annotations


class OtelPgError(Exception):
    """Base of every otel_pg_exporter error."""


class SettingsError(OtelPgError, ValueError):
    """An explicit argument of the wrong kind or out of range; the message names it."""


class WriteError(OtelPgError):
    """A batch could not be stored; ``cause`` is a short, password-free reason."""

    transient = True

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class SpoolError(OtelPgError):
    """The disk spool could not be opened, read or written."""


class SpoolRefused(SpoolError):
    """The spool cannot take this batch: larger than the spool itself, or room held by a
    live process. The batch was not written; ``rows`` is its size."""

    def __init__(self, message: str, rows: int) -> None:
        super().__init__(message)
        self.rows = rows


class MigrationError(OtelPgError):
    """A migration, rollback or history read failed."""


class QueryError(OtelPgError):
    """A read of the spans table failed: no connection, functions not installed, bad input."""


class NotFound(QueryError):
    """The trace, span or execution asked for has no rows."""


__all__ = [
    "MigrationError",
    "NotFound",
    "OtelPgError",
    "QueryError",
    "SettingsError",
    "SpoolError",
    "SpoolRefused",
    "WriteError",
]
