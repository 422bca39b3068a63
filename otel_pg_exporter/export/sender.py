"""The sender: one daemon thread that stores mapped batches while the export thread goes on.

The SDK's export thread maps batch n+1 (pure Python, holding the GIL) while the sender waits
on PostgreSQL for batch n (COPY, INSERT and commit, with the GIL released), so the two
overlap instead of taking turns. Batches waiting for the sender are joined into one COPY, up
to ``max_batch_rows``, which is what keeps up when spans arrive faster than one transaction
per batch allows.

The hand-off is bounded: at most ``max_pending_rows`` wait in memory behind the batch being
written. When the sender makes no progress for ``wait_s`` (a silent network, a server that
stopped answering), ``submit`` says no and the caller spools the batch; later batches are
refused at once, without waiting, until the sender finishes its current batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from otel_pg_exporter.schema.table import Row

# Fewer, larger transactions keep up under a CPU-bound application, where every round trip
# of the sender waits for the GIL (up to the 5 ms switch interval) on its way back.
MAX_PENDING_ROWS = 8192
MAX_BATCH_ROWS = 4096


class Sender:
    """Writes batches through ``deliver`` on its own thread, started at the first submit.

    ``deliver(rows)`` stores (or spools) the rows and answers whether every row is in the
    table; it must not raise. It is called with at most ``max_batch_rows`` rows, except that
    a single larger batch is delivered whole.
    """

    def __init__(
        self,
        deliver: Callable[[list[Row]], bool],
        *,
        max_pending_rows: int = MAX_PENDING_ROWS,
        max_batch_rows: int = MAX_BATCH_ROWS,
        name: str = "otel_pg_exporter-send",
    ) -> None:
        self._deliver = deliver
        self._max_pending_rows = max_pending_rows
        self._max_batch_rows = max_batch_rows
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[list[Row]] = deque()
        self._pending_rows = 0
        self._inflight: list[Row] | None = None
        # The batch being written when it was taken back (take_in_hand, stop): its fate is
        # the taker's, so a failure to store it is not spooled a second time.
        self._taken: list[Row] | None = None
        self._finished = 0  # deliveries done, success or not
        self._refused_at: int | None = None  # value of _finished when a hand-off gave up
        self._all_stored = True  # since the last flush()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def rows_in_hand(self) -> int:
        """Rows handed over and not yet stored or spooled (waiting, or being written)."""
        with self._cond:
            inflight = self._inflight
            return self._pending_rows + (len(inflight) if inflight is not None else 0)

    def after_fork_in_child(self) -> None:
        """A fresh, idle sender: the parent's thread did not survive the fork, and the parent
        still stores the batches it had handed over."""
        self._reset()

    def submit(self, rows: list[Row], wait_s: float) -> bool:
        """Hand ``rows`` to the sender; False when it was stuck for ``wait_s`` (or stopped)."""
        cond = self._cond
        with cond:
            if self._stopping:
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            if self._pending_rows and self._pending_rows + len(rows) > self._max_pending_rows:
                if self._refused_at == self._finished:
                    return False  # still stuck on the batch that made us give up last time
                give_up_at = time.monotonic() + wait_s
                while self._pending_rows and (
                    self._pending_rows + len(rows) > self._max_pending_rows
                ):
                    remaining = give_up_at - time.monotonic()
                    if remaining <= 0 or self._stopping:
                        self._refused_at = self._finished
                        return False
                    cond.wait(remaining)
            self._refused_at = None
            self._pending.append(rows)
            self._pending_rows += len(rows)
            cond.notify_all()
            return True

    def flush(self, timeout_s: float) -> bool:
        """Wait until every batch handed over has been delivered; True when all of them were
        stored (none spooled or dropped) within ``timeout_s``."""
        give_up_at = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._inflight is not None:
                remaining = give_up_at - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            stored, self._all_stored = self._all_stored, True
            return stored

    def take_in_hand(self) -> list[list[Row]]:
        """Take back, without waiting, every batch not yet stored, for the caller to spool.

        Waiting batches leave the sender; the batch being written stays (it may still commit,
        and inserts are idempotent) but is returned too, once: a later failure to store it is
        the caller's, so the exporter does not spool it again. The next ``flush()`` says
        False."""
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
            inflight = self._inflight
            if inflight is not None and inflight is not self._taken:
                left.insert(0, inflight)
                self._taken = inflight
            if left:
                self._all_stored = False
            self._cond.notify_all()
            return left

    def taken_back(self, rows: list[Row]) -> bool:
        """Whether ``rows``, being written, were taken back by ``take_in_hand`` or ``stop``."""
        with self._cond:
            return rows is self._taken

    def stop(self, timeout_s: float) -> list[list[Row]]:
        """Deliver what is pending within ``timeout_s`` and stop; what could not be delivered
        in time (including the batch still being written) is returned for the caller to
        spool. Storing it twice is harmless: inserts are idempotent."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
            self._pending_rows = 0
            if self._inflight is not None and self._inflight is not self._taken:
                left.insert(0, self._inflight)
                self._taken = self._inflight
            return left

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending and not self._stopping:
                    cond.wait()
                if not self._pending:
                    return
                rows = self._pending.popleft()
                limit = self._max_batch_rows
                while self._pending and len(rows) + len(self._pending[0]) <= limit:
                    rows = rows + self._pending.popleft()  # a new list: callers keep theirs
                self._pending_rows -= len(rows)
                self._inflight = rows
                cond.notify_all()
            try:
                stored = self._deliver(rows)
            except Exception:  # deliver reports its own failures; the thread must not die
                stored = False
            with cond:
                if self._inflight is rows:
                    self._inflight = None
                if self._taken is rows:
                    self._taken = None
                self._finished += 1
                if not stored:
                    self._all_stored = False
                cond.notify_all()
