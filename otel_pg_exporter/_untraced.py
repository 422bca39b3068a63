"""The one way the package keeps its own database work out of the traces it stores."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value


@contextmanager
def untraced() -> Iterator[None]:
    """Keep instrumentations (psycopg's included) from tracing the work inside, as the SDK's
    BatchSpanProcessor does around export()."""
    token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        detach(token)
