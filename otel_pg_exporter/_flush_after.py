"""``flush_after``: store (or spool) a handler's spans before it returns, within a budget.

For code whose process may be frozen or end right after it returns (serverless handlers,
``multiprocessing`` workers, scripts ending with ``os._exit``): spans still queued in memory
would be lost. On leaving the block (return or raise), every finished span is flushed
through one deadline; what is not stored by then is appended to the disk spool at once, and
replayed later by this process or the next one on the same spool.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from otel_pg_exporter._configure import current_handle
from otel_pg_exporter.errors import SettingsError

logger = logging.getLogger("otel_pg_exporter")

DEFAULT_BUDGET_MS = 100.0

_F = TypeVar("_F", bound=Callable[..., Any])


def flush_now(budget_s: float) -> bool:
    """Flush what the configured handle holds within ``budget_s``, spooling the rest; True
    when everything was stored. Without ``configure()`` (or with tracing off): True at once.
    Never raises."""
    handle = current_handle()
    if handle is None or not handle.enabled:
        return True
    try:
        return handle.flush_or_spool(budget_s)
    except Exception as exc:  # the handler's outcome must never depend on tracing
        logger.warning("flush_after: could not flush the spans: %r", exc)
        return False


class FlushAfter:
    """What ``flush_after(budget_ms)`` returns: a decorator and a (sync or async) context
    manager. Reusable and reentrant: it holds no state between uses."""

    def __init__(self, budget_ms: float = DEFAULT_BUDGET_MS) -> None:
        if isinstance(budget_ms, bool) or not isinstance(budget_ms, int | float):
            raise SettingsError(f"budget_ms must be a number, got {type(budget_ms).__name__}")
        if not 0 <= budget_ms < float("inf"):
            raise SettingsError(f"budget_ms must be zero or more milliseconds, got {budget_ms}")
        self.budget_s = budget_ms / 1000

    def __repr__(self) -> str:
        return f"flush_after(budget_ms={self.budget_s * 1000:g})"

    def __enter__(self) -> FlushAfter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        flush_now(self.budget_s)

    async def __aenter__(self) -> FlushAfter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if current_handle() is None:
            return
        # On a worker thread: the event loop keeps serving other tasks meanwhile.
        await asyncio.to_thread(flush_now, self.budget_s)

    def __call__(self, func: _F) -> _F:
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await func(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return func(*args, **kwargs)

        return cast(_F, wrapper)


@overload
def flush_after(budget_ms: _F) -> _F: ...


@overload
def flush_after(budget_ms: float = DEFAULT_BUDGET_MS) -> FlushAfter: ...


def flush_after(budget_ms: Any = DEFAULT_BUDGET_MS) -> Any:
    """Flush the spans produced in a function or block when it returns or raises, within
    ``budget_ms`` milliseconds; what is not stored by then goes to the disk spool.

    Use it as ``@flush_after()``, ``@flush_after(budget_ms=50)``, ``@flush_after``, ``with
    flush_after():`` or ``async with flush_after():``, on sync and async functions. The
    return value and the exception pass through unchanged; the return is delayed by at most
    the budget plus the time to append the rest to the spool. Without ``configure()`` it
    does nothing. Spans still open when the block ends (a span around it) are not flushed:
    put ``flush_after`` outermost.
    """
    if callable(budget_ms):
        return FlushAfter()(budget_ms)
    return FlushAfter(budget_ms)
