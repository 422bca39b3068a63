"""Connection strings: the password never leaves this module's functions in the clear.

Used by the exporter, the migrations, the CLI and the development database alike, so that
every log line, ``repr`` and exception that names a database shows ``***`` for its password.
"""

from __future__ import annotations

import re

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
