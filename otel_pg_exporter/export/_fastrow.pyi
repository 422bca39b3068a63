"""Types of the compiled fast path (``_fastrow.pyx``), for mypy."""

from opentelemetry.sdk.trace import ReadableSpan

from otel_pg_exporter.export.mapping import SpanMapper
from otel_pg_exporter.schema.table import Row

REASONS: tuple[str, ...]

class FastRow:
    """``mapper.to_row`` for the common SDK span; anything else is handed to it."""

    fast: int
    fallbacks: int
    last_fallback: str | None
    last_error: str | None

    def __init__(self, mapper: SpanMapper) -> None: ...
    def __call__(self, span: ReadableSpan) -> Row: ...
    def fallback_counts(self) -> dict[str, int]: ...

COPY_SIGNATURE: bytes
COPY_TRAILER: bytes

def encode_copy_rows(rows: list[Row], text_columns: tuple[bool, ...]) -> bytes | None: ...
