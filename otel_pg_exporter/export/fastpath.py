"""The compiled fast path of span mapping, when it was built: ``fast_to_row(mapper)``.

``otel_pg_exporter.export._fastrow`` (Cython, compiled at install time by ``hatch_build.py``)
maps the common SDK span to exactly the row ``SpanMapper.to_row`` gives, about three times
faster, and hands every other span to ``to_row``. Without a C compiler at install time the
module is absent and spans are mapped in pure Python; ``FAST_PATH_STATUS`` says which, and
``OTEL_EXPORTER_POSTGRES_FAST_PATH=false`` turns the fast path off at run time.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from opentelemetry.sdk.trace import ReadableSpan

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter import settings
from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.schema.table import STAGE_COLUMNS, Row


class FastRow(Protocol):
    """What ``fast_to_row`` gives: ``to_row`` as a callable that counts where spans went."""

    fast: int  # spans mapped by the compiled code
    fallbacks: int  # spans handed to the reference mapper

    def __call__(self, span: ReadableSpan) -> Row: ...


FAST_PATH_VARIABLE = ev.OTEL_EXPORTER_POSTGRES_FAST_PATH


_MODULE_NAME = "otel_pg_exporter.export._fastrow"


def _load() -> tuple[ModuleType | None, str]:
    try:
        module = importlib.import_module(_MODULE_NAME)
    except ModuleNotFoundError as exc:
        if exc.name == _MODULE_NAME:
            return None, "not built (no C compiler at install time)"
        return None, f"not loadable ({exc})"
    except ImportError as exc:  # built for another Python, or a broken build
        return None, f"not loadable ({exc})"
    return module, "on"


_MODULE, _LOADED = _load()


def fast_path_disabled() -> bool:
    """Whether ``OTEL_EXPORTER_POSTGRES_FAST_PATH`` turns the fast path off right now."""
    enabled: bool = settings.resolve("fast_path", None, os.environ)
    return not enabled


def fast_path_status(enabled: bool | None = None) -> str:
    """One line on whether spans are mapped by the compiled fast path, and if not, why;
    ``enabled`` is the resolved ``fast_path`` setting (None: read the environment)."""
    if _MODULE is None:
        return f"compiled fast path: {_LOADED}; spans are mapped in pure Python"
    if fast_path_disabled() if enabled is None else not enabled:
        return (
            f"compiled fast path: off ({FAST_PATH_VARIABLE}=false); spans are mapped in pure Python"
        )
    return "compiled fast path: on"


FAST_PATH_STATUS: str = fast_path_status()
"""``fast_path_status()`` at import; call the function for the environment of the moment."""

FAST_PATH_BUILT: bool = _MODULE is not None
"""Whether the compiled module was built and imports."""


def fast_to_row(mapper: SpanMapper, enabled: bool | None = None) -> FastRow | None:
    """A callable giving exactly ``mapper.to_row(span)``, faster for the common span; None
    when the module is not built or the fast path is off (``enabled``, the resolved
    ``fast_path`` setting; None: ``OTEL_EXPORTER_POSTGRES_FAST_PATH`` is read).

    It reads the mapper's settings now: call again after changing them.
    """
    if _MODULE is None or (fast_path_disabled() if enabled is None else not enabled):
        return None
    fast: FastRow = _MODULE.FastRow(mapper)
    return fast


CopyEncoder = Callable[[list[Row]], bytes | None]
"""``rows`` -> the whole binary COPY stream of them, or None for psycopg to write them."""


def copy_encoder(enabled: bool | None = None) -> CopyEncoder | None:
    """The compiled binary COPY encoder for staging rows (byte for byte what psycopg's
    ``write_row`` sends, about five times cheaper), or None when the module is not built or
    the fast path is off (``enabled`` as for ``fast_to_row``)."""
    if _MODULE is None or (fast_path_disabled() if enabled is None else not enabled):
        return None
    encode = _MODULE.encode_copy_rows
    text_columns = tuple(pg_type == "text" for _, pg_type in STAGE_COLUMNS)

    def encode_rows(rows: list[Row]) -> bytes | None:
        encoded: bytes | None = encode(rows, text_columns)
        return encoded

    return encode_rows
