"""Log correlation: every ``logging`` record carries ``trace_id`` and ``span_id``.

Inside a span they hold the W3C hex ids (the strings stored in ``trace_spans``); outside a
span they exist and are empty, so ``%(trace_id)s`` works in any format string. Code that
still passes ``extra={"trace_id": ...}`` keeps working: its explicit value wins.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace

_FIELDS = ("trace_id", "span_id")
_lock = threading.Lock()
_installed = False
_previous_factory: Callable[..., logging.LogRecord] | None = None
_previous_make_record: Any = None


def _correlated_factory(
    base: Callable[..., logging.LogRecord],
) -> Callable[..., logging.LogRecord]:
    get_current_span = trace.get_current_span

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        context = get_current_span().get_span_context()
        if context.is_valid:
            # printf-style: half the time of an f-string with a format spec, on every record.
            record.trace_id = "%032x" % context.trace_id  # noqa: UP031
            record.span_id = "%016x" % context.span_id  # noqa: UP031
        else:
            record.trace_id = ""
            record.span_id = ""
        return record

    return factory


def _make_record_allowing_explicit_ids(original: Any) -> Any:
    # Logger.makeRecord refuses `extra` keys already present on the record; the factory
    # now sets trace_id and span_id, so take them out of `extra` and apply them after.
    def make_record(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Mapping[str, object] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        explicit: dict[str, object] = {}
        if extra and any(field in extra for field in _FIELDS):
            extra = dict(extra)
            for field in _FIELDS:
                if field in extra:
                    explicit[field] = extra.pop(field)
        record: logging.LogRecord = original(
            self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo
        )
        record.__dict__.update(explicit)
        return record

    return make_record


def install() -> None:
    """Add ``trace_id``/``span_id`` to every log record; idempotent."""
    global _installed, _previous_factory, _previous_make_record  # noqa: PLW0603
    with _lock:
        if _installed:
            return
        _previous_factory = logging.getLogRecordFactory()
        _previous_make_record = logging.Logger.makeRecord
        logging.setLogRecordFactory(_correlated_factory(_previous_factory))
        logging.Logger.makeRecord = _make_record_allowing_explicit_ids(  # type: ignore[method-assign]
            _previous_make_record
        )
        _installed = True


def uninstall() -> None:
    """Undo ``install``; used by tests and ``Handle.shutdown``."""
    global _installed  # noqa: PLW0603
    with _lock:
        if not _installed:
            return
        if _previous_factory is not None:
            logging.setLogRecordFactory(_previous_factory)
        logging.Logger.makeRecord = _previous_make_record  # type: ignore[method-assign]
        _installed = False
