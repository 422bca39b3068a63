"""Attributes learned after their span ended, waiting to be added to the span's row.

Process state: this module holds ``LATE_ATTRIBUTES``, the only mutable map the Sentry bridge
shares with the exporters. Bounded in entries and age, so spans never exported cost nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class LateAttributes:
    """Attributes learned after their span ended, added to its row.

    A Sentry event captured just after an ASGI server span ended still names that span; the
    span can no longer take attributes, so its ``sentry.event_id`` waits here. The mapper
    merges it when the span is still queued; otherwise the exporter updates the stored row.
    """

    def __init__(self, max_entries: int = 10_000, max_age_s: float = 300.0) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        self._max_entries = max_entries
        self._max_age_s = max_age_s

    def __bool__(self) -> bool:
        return bool(self._items)

    def add(self, trace_id: int, span_id: int, key: str, value: Any) -> None:
        with self._lock:
            if len(self._items) >= self._max_entries:  # spans never exported: forget the oldest
                self._items.pop(next(iter(self._items)))
            _, attributes = self._items.get((trace_id, span_id), (0.0, {}))
            attributes[key] = value
            self._items[(trace_id, span_id)] = (time.monotonic(), attributes)

    def pop(self, trace_id: int, span_id: int) -> dict[str, Any] | None:
        with self._lock:
            item = self._items.pop((trace_id, span_id), None)
        return None if item is None else item[1]

    def waiting(self) -> list[tuple[int, int, dict[str, Any]]]:
        """Entries whose span may already be stored; entries too old to matter are dropped."""
        cutoff = time.monotonic() - self._max_age_s
        with self._lock:
            for key in [key for key, (added, _) in self._items.items() if added < cutoff]:
                del self._items[key]
            return [
                (trace_id, span_id, dict(a)) for (trace_id, span_id), (_, a) in self._items.items()
            ]


LATE_ATTRIBUTES = LateAttributes()
"""The process's one instance. Owner: the export pipeline (every PostgresSpanExporter reads
and empties it). Writer: the Sentry bridge's ``before_send``, which learns a span's
``sentry.event_id`` after the span ended. Nothing else touches it."""
