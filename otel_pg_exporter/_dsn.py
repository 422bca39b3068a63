"""Connection strings: the password never leaves this module's functions in the clear.

Used by the exporter, the migrations, the CLI and the development database alike, so that
every log line, ``repr`` and exception that names a database shows ``***`` for its password.
"""

from __future__ import annotations

import re

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from otel_pg_exporter._untraced import untraced

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


# Shorter passwords are not scrubbed from messages by value: they would mangle every word
# containing them, and libpq never echoes a password anyway (redact_dsn still applies).
_SCRUB_MIN_CHARS = 4


def scrub_message(text: str, dsn: str) -> str:
    """``text`` (a database error) with the DSN's password removed, whatever its form."""
    text = redact_dsn(text)
    try:
        password = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        password = None
    if isinstance(password, str) and len(password) >= _SCRUB_MIN_CHARS:
        text = text.replace(password, "***")
    return text


def shown_dsn(dsn: str) -> str:
    """How a message names the database: the redacted DSN, or libpq's defaults."""
    return repr(redact_dsn(dsn)) if dsn.strip() else "the libpq defaults (PG* variables)"


def open_connection(
    dsn: str, *, application_name: str, error: type[Exception], connect_timeout: int = 10
) -> psycopg.Connection[TupleRow]:
    """An autocommit psycopg connection (untraced); a DSN libpq cannot parse or a failure to
    connect raises ``error`` with a message that holds no password."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise error(conninfo_problem(dsn, exc)) from None
    with untraced():
        try:
            return psycopg.connect(
                dsn,
                autocommit=True,
                connect_timeout=connect_timeout,
                application_name=application_name,
            )
        except psycopg.Error as exc:
            # One line: libpq's message, then its hint ("Is the server running ...").
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            text = "; ".join(lines) or type(exc).__name__
            raise error(f"cannot connect to {shown_dsn(dsn)}: {scrub_message(text, dsn)}") from None
