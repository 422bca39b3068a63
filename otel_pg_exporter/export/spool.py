"""The on-disk spool: batches of rows the database could not take, replayed once it answers.

A spool is one directory, shared by every process exporting to the same target. Each process
appends to segment files of its own and holds ``flock(LOCK_EX)`` on every segment it owns for
as long as it lives; a segment whose lock can be taken belongs to a process that died (or
closed its spool) and is replayed by whichever process claims it first. The kernel drops a
SIGKILLed process's locks with it, so nothing has to be cleaned up after a crash.

A segment is a sequence of records, one per appended batch::

    MAGIC b"OPS1" | u32 payload length | u32 crc32(payload) | u32 row count | payload

(little-endian), the payload being the batch as a compact JSON list of rows. JSON is written
with ``ensure_ascii=True``: every ``str`` round-trips exactly, lone surrogates and NUL
included, and encoding can never fail on a character; spans are mostly ASCII, so the escapes
cost little space. A record cut short by a crash or a full disk, or damaged later, ends the
reading of its segment and is counted in ``SpoolStats.corrupt_records``; it is never raised.

Durability: records are written with ``os.write`` (no user-space buffer), so a process crash
loses nothing already appended. ``fsync=True`` also makes each record survive a power loss,
at the cost of a disk flush per batch; without it a power loss may lose the last records.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from otel_pg_exporter.errors import SpoolError, SpoolRefused
from otel_pg_exporter.export import forks
from otel_pg_exporter.schema.table import Row

logger = logging.getLogger("otel_pg_exporter")

MAGIC = b"OPS1"
HEADER = struct.Struct("<4sIII")
SEGMENT_SUFFIX = ".seg"
# A segment is locked under this temporary name before it is renamed to ``*.seg``, so no
# other process can ever see (and claim) a segment its owner has not locked yet.
_NEW_SUFFIX = ".new"
# A ``.new`` file older than this was left by a process killed between creating and renaming
# it; younger ones may be about to be locked by their creator.
_STALE_NEW_S = 60.0


@dataclass(frozen=True)
class SpoolStats:
    """What the spool holds now (all processes' segments) and what this process saw so far."""

    segments: int
    bytes: int
    rows: int  # from record headers, without reading payloads
    corrupt_records: int
    dropped_rows: int


def encode_record(rows: Sequence[Row]) -> bytes:
    """The record (header and payload) of one batch."""
    try:
        text = json.dumps(list(rows), ensure_ascii=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise SpoolError(f"rows cannot be spooled: {exc}") from exc
    payload = text.encode("ascii")
    if len(payload) > 0xFFFFFFFF:
        raise SpoolError(f"a batch of {len(payload)} bytes is too large for one record")
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), len(rows)) + payload


def _read_record(fd: int, offset: int, size: int) -> tuple[list[Row], int] | None:
    """The rows of the record at ``offset`` and the next offset; None if torn or damaged."""
    header = os.pread(fd, HEADER.size, offset)
    if len(header) < HEADER.size:
        return None
    magic, length, crc, count = HEADER.unpack(header)
    start = offset + HEADER.size
    # Checked before reading: a damaged length must not make us allocate gigabytes.
    if magic != MAGIC or start + length > size:
        return None
    payload = os.pread(fd, length, start)
    if len(payload) < length or zlib.crc32(payload) != crc:
        return None
    try:
        decoded = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(decoded, list):
        return None
    rows = [tuple(row) for row in decoded if isinstance(row, list)]
    if len(rows) != count or len(decoded) != count:
        return None
    return cast(list[Row], rows), start + length


def _count_rows(fd: int, offset: int, size: int) -> tuple[int, int]:
    """Rows in the complete records from ``offset`` to ``size``, and where counting stopped."""
    rows = 0
    while offset + HEADER.size <= size:
        header = os.pread(fd, HEADER.size, offset)
        if len(header) < HEADER.size:  # cut back by its writer since we looked at its size
            break
        magic, length, _, count = HEADER.unpack(header)
        if magic != MAGIC or offset + HEADER.size + length > size:
            break
        rows += count
        offset += HEADER.size + length
    return rows, offset


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # a regular file never does this; do not loop forever if one does
            raise OSError(28, "No space left on device")
        view = view[written:]


def _lock_unowned(path: Path) -> int | None:
    """An fd locked by us on ``path`` if no live process holds it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, PermissionError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Its owner may have committed (deleted) it between our open() and flock().
        now, ours = os.stat(path), os.fstat(fd)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if (now.st_dev, now.st_ino) != (ours.st_dev, ours.st_ino):
        os.close(fd)
        return None
    return fd


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each readable by this user only."""
    missing: list[Path] = []
    path = directory
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            if not path.is_dir():
                raise


@dataclass
class _Current:
    name: str
    fd: int
    size: int


def inspect_segments(directory: str | os.PathLike[str]) -> list[tuple[str, int, int, bool]]:
    """``(name, bytes, rows, held)`` of each segment in ``directory``, oldest first, without
    opening a Spool: rows come from record headers, and ``held`` says a live process holds
    the segment's lock (its owner, or a replay), tested with a shared non-blocking flock
    released at once. A missing directory has no segments."""
    found: list[tuple[str, int, int, bool]] = []
    try:
        with os.scandir(directory) as entries:
            names = sorted(e.name for e in entries if e.name.endswith(SEGMENT_SUFFIX))
    except FileNotFoundError:
        return found
    for name in names:
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # replayed meanwhile
            continue
        try:
            size = os.fstat(fd).st_size
            rows, _ = _count_rows(fd, 0, size)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
        finally:
            os.close(fd)  # releases our shared lock, if taken
        found.append((name, size, rows, held))
    return found


class Spool:
    """A bounded directory of spooled batches; see the module docstring for the format.

    ``max_bytes`` bounds the whole directory (every process's segments). Room is made by
    deleting whole segments, oldest first, that no live process holds: this process's own
    (its current one included) and orphans. A record that could only fit by deleting a live
    process's segment, or that is larger than ``max_bytes`` itself, is not written: its rows
    count as dropped. Segments are at most ``min(segment_bytes, max_bytes // 4)`` long (one
    record may exceed that alone), so a full spool frees a quarter of itself at most at once.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int = 8 * 2**20,
        fsync: bool = False,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes!r}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes!r}")
        self.directory = Path(os.path.abspath(directory))
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, min(segment_bytes, max_bytes // 4))
        self.fsync = fsync
        try:
            _make_private_dirs(self.directory)
        except OSError as exc:
            raise SpoolError(f"cannot create spool directory {self.directory}: {exc}") from exc
        self._lock = threading.Lock()
        self._current: _Current | None = None
        self._closed_fds: dict[str, int] = {}  # own segments no longer appended to, locked
        self._claimed: set[str] = set()  # handed out as Segment objects
        self._row_counts: dict[str, tuple[int, int]] = {}  # name -> (rows, bytes counted)
        self._last_created_ns = 0
        self._corrupt_records = 0
        self._dropped_rows = 0
        self._is_closed = False
        forks.reset_in_child(forks.SPOOLS, self)

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def append(self, rows: Sequence[Row]) -> int:
        """Spool ``rows`` as one record; return how many *older* spooled rows were deleted
        to make room for it (0 when it fitted).

        An empty batch writes nothing. Raises SpoolRefused, writing nothing and deleting
        nothing, when the record cannot fit (larger than the spool, or room held by a live
        process): its rows count in ``dropped_rows``. Raises SpoolError if the record cannot
        be written; the segment is then cut back to its last complete record.
        """
        if not rows:
            return 0
        record = encode_record(rows)  # outside the lock: concurrent callers encode in parallel
        with self._lock:
            if self._is_closed:
                raise SpoolError("the spool is closed")
            try:
                dropped = self._make_room(len(record))
                if dropped is None:
                    self._dropped_rows += len(rows)
                    raise SpoolRefused(self._refusal(len(rows), len(record)), len(rows))
                self._write(record)
            except OSError as exc:
                raise SpoolError(
                    f"cannot spool {len(rows)} rows in {self.directory}: {exc}"
                ) from exc
            return dropped

    def _refusal(self, rows: int, size: int) -> str:
        if size > self.max_bytes:
            return (
                f"a batch of {rows} spans ({size} bytes) is larger than the whole spool "
                f"({self.max_bytes} bytes)"
            )
        return (
            f"no room for a batch of {rows} spans: the spool ({self.max_bytes} bytes) is held "
            "by segments of live processes"
        )

    def claim_oldest(self) -> Segment | None:
        """The oldest segment no live process holds (or our own), locked for the caller.

        Our current segment is claimed only when nothing older exists; later appends then go
        to a new segment. None when there is nothing to replay.
        """
        with self._lock:
            if self._is_closed:
                return None
            try:
                names = [name for name, _ in self._scan(remove_stale_new=True)]
                for name in names:
                    fd = self._take(name)
                    if fd is not None:
                        self._claimed.add(name)
                        return Segment(self, self.directory / name, fd)
            except OSError as exc:
                raise SpoolError(f"cannot read spool directory {self.directory}: {exc}") from exc
        return None

    def pending(self) -> SpoolStats:
        """Segments, bytes and rows in the directory now, with this spool's counters.

        Costs a directory scan and a stat per segment; rows are counted from record headers,
        reading only what was appended since the last call.
        """
        with self._lock:
            try:
                segments = self._scan()
                rows = sum(self._rows_in(name, size) for name, size in segments)
            except OSError as exc:
                raise SpoolError(f"cannot read spool directory {self.directory}: {exc}") from exc
            present = {name for name, _ in segments}
            for name in self._row_counts.keys() - present:
                del self._row_counts[name]
            return SpoolStats(
                segments=len(segments),
                bytes=sum(size for _, size in segments),
                rows=rows,
                corrupt_records=self._corrupt_records,
                dropped_rows=self._dropped_rows,
            )

    def close(self) -> None:
        """Release this process's locks and keep the files, for a later replay; idempotent.

        Segments already claimed stay locked until committed or released.
        """
        with self._lock:
            self._is_closed = True
            fds = list(self._closed_fds.values())
            if self._current is not None:
                fds.append(self._current.fd)
            self._current = None
            self._closed_fds.clear()
        for fd in fds:
            os.close(fd)

    # Everything below runs with self._lock held.

    def _scan(self, *, remove_stale_new: bool = False) -> list[tuple[str, int]]:
        """(name, size) of every segment in the directory, oldest first."""
        segments: list[tuple[str, int]] = []
        stale_before = time.time() - _STALE_NEW_S
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.name.endswith(SEGMENT_SUFFIX):
                        segments.append((entry.name, entry.stat(follow_symlinks=False).st_size))
                    elif (
                        remove_stale_new
                        and entry.name.endswith(SEGMENT_SUFFIX + _NEW_SUFFIX)
                        and entry.stat(follow_symlinks=False).st_mtime < stale_before
                    ):
                        self._remove_stale_new(Path(entry.path))
                except FileNotFoundError:  # committed by another process meanwhile
                    continue
        # Names start with the creation time in nanoseconds (fixed-width hex), so they sort
        # by age; mtime would not, as it is the time of a segment's last append.
        segments.sort()
        return segments

    def _remove_stale_new(self, path: Path) -> None:
        # Housekeeping only: an empty file left behind must not stop a replay.
        try:
            fd = _lock_unowned(path)
            if fd is not None:
                try:
                    path.unlink(missing_ok=True)
                finally:
                    os.close(fd)
        except OSError as exc:
            logger.debug("Could not remove %s: %s", path, exc)

    def _take(self, name: str) -> int | None:
        """A locked fd on segment ``name`` that no one else may use, taken from its owner."""
        current = self._current
        if current is not None and current.name == name:
            self._current = None
            return current.fd
        if name in self._closed_fds:
            return self._closed_fds.pop(name)
        if name in self._claimed:
            return None
        return _lock_unowned(self.directory / name)

    def _make_room(self, needed: int) -> int | None:
        """Delete oldest segments until ``needed`` more bytes fit: rows dropped (counted in
        ``dropped_rows``), or None if they cannot fit (nothing deleted then)."""
        if needed > self.max_bytes:
            return None
        segments = self._scan()
        excess = sum(size for _, size in segments) + needed - self.max_bytes
        victims: list[tuple[str, int, int, bool]] = []  # name, fd, size, ours before
        current = self._current
        for name, size in segments:
            if excess <= 0:
                break
            ours = name in self._closed_fds or (current is not None and current.name == name)
            fd = self._take(name)
            if fd is not None:
                victims.append((name, fd, size, ours))
                excess -= size
        if excess > 0:
            self._give_back(victims, current)
            return None
        dropped = 0
        for index, (name, fd, size, _) in enumerate(victims):
            try:
                rows = self._rows_in(name, size, fd)
                (self.directory / name).unlink(missing_ok=True)
            except OSError:
                self._give_back(victims[index:], current)
                raise
            os.close(fd)
            self._row_counts.pop(name, None)
            self._dropped_rows += rows
            dropped += rows
        return dropped

    def _give_back(
        self, victims: list[tuple[str, int, int, bool]], current: _Current | None
    ) -> None:
        """Undo ``_take`` for segments kept after all: ours stay ours, orphans are let go."""
        for name, fd, _, ours in victims:
            if current is not None and current.name == name:
                self._current = current
            elif ours:
                self._closed_fds[name] = fd
            else:
                os.close(fd)

    def _rows_in(self, name: str, size: int, fd: int | None = None) -> int:
        """Rows in segment ``name`` from its headers; only bytes not yet counted are read."""
        rows, counted = self._row_counts.get(name, (0, 0))
        if counted == size:
            return rows
        if counted > size:  # cut back after a failed write: count again
            rows, counted = 0, 0
        own_fd = fd is None
        if fd is None:
            try:
                fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                return rows
        try:
            more, counted = _count_rows(fd, counted, size)
        finally:
            if own_fd:
                os.close(fd)
        self._row_counts[name] = (rows + more, counted)
        return rows + more

    def _write(self, record: bytes) -> None:
        current = self._current
        if (
            current is not None
            and current.size > 0
            and current.size + len(record) > self.segment_bytes
        ):
            self._closed_fds[current.name] = current.fd
            current = self._current = None
        if current is None:
            current = self._current = self._create_segment()
        try:
            _write_all(current.fd, record)
            if self.fsync:
                os.fsync(current.fd)
        except OSError:
            try:
                os.ftruncate(current.fd, current.size)
            except OSError:
                # The torn record stays, and reading stops there: append nothing after it.
                self._closed_fds[current.name] = current.fd
                self._current = None
            raise
        current.size += len(record)

    def _create_segment(self) -> _Current:
        created_ns = max(time.time_ns(), self._last_created_ns + 1)
        self._last_created_ns = created_ns
        name = f"{created_ns:016x}-{secrets.token_hex(4)}-{os.getpid()}{SEGMENT_SUFFIX}"
        path = self.directory / name
        new_path = path.with_name(name + _NEW_SUFFIX)
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(new_path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            new_path.rename(path)
            if self.fsync:  # the new name must survive a power loss too
                dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            os.close(fd)
            new_path.unlink(missing_ok=True)
            raise
        return _Current(name, fd, 0)

    def after_fork_in_child(self) -> None:
        """In a forked child: let go of the parent's segments and start afresh."""
        # Closing our copies leaves the parent's locks in place: a flock belongs to the open
        # file description, which the parent still holds.
        fds = list(self._closed_fds.values())
        if self._current is not None:
            fds.append(self._current.fd)
        for fd in fds:
            os.close(fd)
        self._lock = threading.Lock()
        self._current = None
        self._closed_fds = {}
        self._claimed = set()
        self._row_counts = {}


class Segment:
    """A segment claimed for replay: read its records, then commit or release it."""

    def __init__(self, spool: Spool, path: Path, fd: int) -> None:
        self.path = path
        self._spool = spool
        self._fd: int | None = fd
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Segment({str(self.path)!r})"

    def records(self) -> Iterator[list[Row]]:
        """Each record's rows, oldest first; a torn or damaged record ends the iteration."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self.path.name} was already committed or released")
        offset = 0
        try:
            size = os.fstat(fd).st_size  # fixed: no one appends to a claimed segment
            while offset < size:
                record = _read_record(fd, offset, size)
                if record is None:
                    break
                rows, offset = record
                yield rows
        except OSError as exc:
            raise SpoolError(f"cannot read {self.path.name}: {exc}") from exc
        if offset < size:
            with self._spool._lock:
                self._spool._corrupt_records += 1

    def commit(self) -> None:
        """Every record is stored: delete the segment and release its lock."""
        spool = self._spool
        with spool._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            if os.getpid() == self._pid:
                try:
                    self.path.unlink(missing_ok=True)
                except OSError as exc:
                    spool._claimed.discard(self.path.name)
                    if spool._is_closed:
                        os.close(fd)
                    else:  # kept, to be claimed and replayed again later
                        spool._closed_fds[self.path.name] = fd
                    raise SpoolError(f"cannot delete replayed segment: {exc}") from exc
            spool._claimed.discard(self.path.name)
            spool._row_counts.pop(self.path.name, None)
            os.close(fd)

    def release(self) -> None:
        """Replay stopped midway: keep the segment for a later claim (records are replayed
        again from the start, which idempotent inserts make harmless)."""
        spool = self._spool
        with spool._lock:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            name = self.path.name
            spool._claimed.discard(name)
            if spool._is_closed or os.getpid() != self._pid:
                os.close(fd)
            else:
                # Kept locked by this process: no one else replays it while we are alive.
                spool._closed_fds[name] = fd
