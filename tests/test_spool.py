"""The disk spool on real files: round trips, damaged records, the size cap, and processes
that crash, live on, or claim segments concurrently."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, cast
from unittest.mock import Mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_pg_exporter.errors import SpoolError, SpoolRefused
from otel_pg_exporter.export import spool as spool_module
from otel_pg_exporter.export.spool import (
    HEADER,
    MAGIC,
    SEGMENT_SUFFIX,
    Spool,
    SpoolStats,
    encode_record,
)
from otel_pg_exporter.schema.table import Row

ROOT = Path(__file__).resolve().parent.parent
BIG = 2**20


def make_row(tag: str, i: int) -> Row:
    """A row of about 400 bytes, like a mapped HTTP server span, unique per (tag, i)."""
    return (
        f"{zlib.crc32(tag.encode()):08x}{i:024x}",
        f"{i:016x}",
        f"{i + 1:016x}" if i % 3 else None,
        "checkout",
        "GET /api/orders/{order_id}",
        "SERVER",
        1_700_000_000_000_000_000 + i,
        1_700_000_000_004_200_000 + i,
        "OK",
        None,
        i if i % 2 else None,
        '{"http.method":"GET","http.route":"/api/orders/{order_id}","http.status_code":200,'
        f'"net.peer.ip":"10.1.2.3","tag":"{tag}","user_agent.original":"curl/8.5.0"}}',
        None,
        None,
        '{"service.name":"checkout","service.version":"1.4.2","host.name":"web-7"}',
        "opentelemetry.instrumentation.asgi",
        '{"flags":1,"trace_state":""}',
    )


def make_batch(tag: str, n: int = 3) -> list[Row]:
    """``n`` rows tagged ``tag``."""
    return [make_row(tag, i) for i in range(n)]


def drain(spool: Spool) -> list[list[Row]]:
    """Every record of every claimable segment, oldest first, committing each segment."""
    records: list[list[Row]] = []
    while (segment := spool.claim_oldest()) is not None:
        records.extend(segment.records())
        segment.commit()
    return records


def segment_files(directory: Path) -> list[Path]:
    """The segment files in ``directory``, oldest first."""
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """A spool directory that does not exist yet."""
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_dir: Path) -> Iterator[Spool]:
    """A spool with room to spare, closed after the test."""
    opened = Spool(spool_dir, max_bytes=BIG)
    yield opened
    opened.close()


CHILD_PRELUDE = """\
import json, os, signal, sys, time
from otel_pg_exporter.export.spool import Spool
from otel_pg_exporter.errors import SpoolError
directory = sys.argv[1]
batches = [[tuple(row) for row in batch] for batch in json.loads(sys.argv[2])]
"""


def spawn(body: str, directory: Path, batches: list[list[Row]]) -> subprocess.Popen[str]:
    """Start CHILD_PRELUDE + ``body`` in a fresh interpreter, with pipes to talk to it."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD_PRELUDE + textwrap.dedent(body),
            str(directory),
            json.dumps(batches),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(child: subprocess.Popen[str], stdin: str = "") -> tuple[int, str]:
    """Wait for ``child``; its return code and stdout (its stderr if it failed)."""
    out, err = child.communicate(stdin, timeout=60)
    if child.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"child failed with {child.returncode}:\n{err}")
    return child.returncode, out


def test_round_trip_oldest_first_across_segments(spool_dir: Path) -> None:
    """Batches come back as tuples, oldest first, across one segment per record."""
    spool = Spool(spool_dir, max_bytes=BIG, segment_bytes=1)
    batches = [make_batch(f"b{n}", n + 1) for n in range(5)]
    for batch in batches:
        assert 0 == spool.append(batch)
    assert 5 == len(segment_files(spool_dir))
    total_bytes = sum(len(encode_record(batch)) for batch in batches)
    assert SpoolStats(5, total_bytes, 15, 0, 0) == spool.pending()

    assert batches == drain(spool)
    assert [] == segment_files(spool_dir)
    assert SpoolStats(0, 0, 0, 0, 0) == spool.pending()
    spool.close()


def test_records_share_a_segment_until_it_is_full(spool_dir: Path) -> None:
    """Records go to the current segment until the next would pass segment_bytes."""
    record_bytes = len(encode_record(make_batch("b0")))
    spool = Spool(spool_dir, max_bytes=BIG, segment_bytes=3 * record_bytes)
    batches = [make_batch(f"b{n}") for n in range(7)]
    for batch in batches:
        spool.append(batch)
    sizes = [path.stat().st_size for path in segment_files(spool_dir)]
    assert [3 * record_bytes, 3 * record_bytes, record_bytes] == sizes
    assert batches == drain(spool)
    spool.close()


def test_construction_creates_private_directories_and_no_files(tmp_path: Path) -> None:
    """The directory and its missing parents are created 0o700 and stay empty."""
    directory = tmp_path / "a" / "b" / "spool"
    spool = Spool(directory, max_bytes=BIG)
    assert [0o700, 0o700, 0o700] == [
        (path.stat().st_mode & 0o777) for path in (tmp_path / "a", tmp_path / "a" / "b", directory)
    ]
    assert [] == list(directory.iterdir())
    assert None is spool.claim_oldest()
    spool.close()


@pytest.mark.parametrize(
    ("max_bytes", "segment_bytes", "name"), [(0, BIG, "max_bytes"), (BIG, -1, "segment_bytes")]
)
def test_bad_sizes_raise_value_error(
    spool_dir: Path, max_bytes: int, segment_bytes: int, name: str
) -> None:
    """A size that is not positive raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match=name):
        Spool(spool_dir, max_bytes=max_bytes, segment_bytes=segment_bytes)


def test_empty_batch_writes_nothing(spool: Spool, spool_dir: Path) -> None:
    """An empty batch drops nothing and creates no segment."""
    assert 0 == spool.append([])
    assert [] == list(spool_dir.iterdir())


def test_claiming_the_current_segment_rotates_it(spool: Spool) -> None:
    """Claiming the segment being written sends later appends to a new one."""
    first, second = make_batch("first"), make_batch("second")
    spool.append(first)
    claimed = spool.claim_oldest()
    assert claimed is not None
    spool.append(second)
    assert [first] == list(claimed.records())
    claimed.commit()

    following = spool.claim_oldest()
    assert following is not None
    assert claimed.path != following.path
    assert [second] == list(following.records())
    following.commit()
    assert None is spool.claim_oldest()


def test_released_segment_is_claimed_again(spool: Spool) -> None:
    """A released segment keeps its file and is the next one claimed, records intact."""
    batch = make_batch("again")
    spool.append(batch)
    claimed = spool.claim_oldest()
    assert claimed is not None
    assert batch == next(claimed.records())
    claimed.release()
    claimed.release()  # idempotent

    again = spool.claim_oldest()
    assert again is not None
    assert claimed.path == again.path
    assert [batch] == list(again.records())
    again.commit()
    assert False is claimed.path.exists()


def test_claimed_segment_is_not_claimed_twice(spool: Spool) -> None:
    """While a segment is out for replay, claim_oldest() does not hand it out again."""
    spool.append(make_batch("once"))
    claimed = spool.claim_oldest()
    assert claimed is not None
    assert None is spool.claim_oldest()
    claimed.commit()
    claimed.commit()  # idempotent
    with pytest.raises(ValueError, match="already committed or released"):
        list(claimed.records())


def test_closed_spool_leaves_orphans_for_the_next_one(spool_dir: Path) -> None:
    """close() keeps the files; another spool on the directory replays them."""
    first = Spool(spool_dir, max_bytes=BIG, segment_bytes=1)
    batches = [make_batch("a"), make_batch("b")]
    for batch in batches:
        first.append(batch)
    first.close()
    first.close()  # idempotent
    with pytest.raises(SpoolError, match="closed"):
        first.append(make_batch("late"))

    second = Spool(spool_dir, max_bytes=BIG)
    assert batches == drain(second)
    second.close()


def write_three_records(spool_dir: Path) -> tuple[Path, list[list[Row]], list[int]]:
    """One closed segment of three records: its path, batches and record start offsets."""
    spool = Spool(spool_dir, max_bytes=BIG)
    batches = [make_batch(f"r{n}", 2) for n in range(3)]
    for batch in batches:
        spool.append(batch)
    spool.close()
    lengths = [len(encode_record(batch)) for batch in batches]
    (path,) = segment_files(spool_dir)
    return path, batches, [0, lengths[0], lengths[0] + lengths[1]]


@pytest.mark.parametrize(
    "cut",
    [1, HEADER.size - 1, HEADER.size, HEADER.size + 1, -1],
    ids=["in-magic", "in-header", "no-payload", "in-payload", "last-byte"],
)
def test_torn_tail_ends_iteration_and_is_counted(spool_dir: Path, cut: int) -> None:
    """A segment cut inside its last record yields the records before it and counts one."""
    path, batches, starts = write_three_records(spool_dir)
    size = path.stat().st_size
    os.truncate(path, size - 1 if cut == -1 else starts[2] + cut)

    spool = Spool(spool_dir, max_bytes=BIG)
    assert batches[:2] == drain(spool)
    assert 1 == spool.pending().corrupt_records
    spool.close()


@pytest.mark.parametrize(
    ("record", "where"),
    [(2, HEADER.size + 40), (1, HEADER.size), (1, 0), (1, 4)],
    ids=["payload-last", "payload-middle", "magic", "length"],
)
def test_flipped_byte_ends_iteration_and_is_counted(
    spool_dir: Path, record: int, where: int
) -> None:
    """A damaged record (checksum, magic or length) yields the records before it."""
    path, batches, starts = write_three_records(spool_dir)
    data = bytearray(path.read_bytes())
    data[starts[record] + where] ^= 0x55
    path.write_bytes(bytes(data))

    spool = Spool(spool_dir, max_bytes=BIG)
    assert batches[:record] == drain(spool)
    assert 1 == spool.pending().corrupt_records
    spool.close()


@pytest.mark.parametrize(
    ("payload", "count"),
    [(b"not json", 1), (b'{"a":1}', 1), (b"[[1],2]", 2), (b"[[1]]", 2), (b"\xff\xfe", 1)],
    ids=["not-json", "not-a-list", "row-not-a-list", "wrong-count", "not-utf8"],
)
def test_record_with_valid_checksum_but_bad_content_is_corrupt(
    spool_dir: Path, payload: bytes, count: int
) -> None:
    """A record whose checksum matches but whose payload is not a list of rows is corrupt."""
    path, batches, _ = write_three_records(spool_dir)
    with path.open("ab") as file:
        file.write(HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), count) + payload)

    spool = Spool(spool_dir, max_bytes=BIG)
    assert batches == drain(spool)
    assert 1 == spool.pending().corrupt_records
    spool.close()


def test_huge_length_in_a_damaged_header_reads_nothing_big(spool_dir: Path) -> None:
    """A header claiming a 4 GiB payload past the end of the file is a torn tail."""
    path, batches, _ = write_three_records(spool_dir)
    with path.open("ab") as file:
        file.write(HEADER.pack(MAGIC, 0xFFFFFFFF, 0, 1))

    spool = Spool(spool_dir, max_bytes=BIG)
    assert 6 == spool.pending().rows
    assert batches == drain(spool)
    assert 1 == spool.pending().corrupt_records
    spool.close()


def test_max_bytes_drops_the_oldest_segments(spool_dir: Path) -> None:
    """Past the cap, each append deletes the oldest record and returns its row count."""
    record_bytes = len(encode_record(make_batch("b00")))
    spool = Spool(spool_dir, max_bytes=5 * record_bytes, segment_bytes=1)
    batches = [make_batch(f"b{n:02}") for n in range(12)]

    dropped = [spool.append(batch) for batch in batches]

    assert [0] * 5 + [3] * 7 == dropped
    stats = spool.pending()
    assert SpoolStats(5, 5 * record_bytes, 15, 0, 21) == stats
    assert batches[7:] == drain(spool)
    spool.close()


def test_max_bytes_below_segment_bytes_shrinks_segments(spool_dir: Path) -> None:
    """A full spool frees a quarter of itself, not everything, when segments would be larger."""
    record_bytes = len(encode_record(make_batch("b00")))
    spool = Spool(spool_dir, max_bytes=8 * record_bytes)
    assert 2 * record_bytes == spool.segment_bytes
    for n in range(9):
        spool.append(make_batch(f"b{n:02}"))
    assert 7 * record_bytes == spool.pending().bytes
    assert 6 == spool.pending().dropped_rows
    spool.close()


def test_record_larger_than_max_bytes_is_dropped_alone(spool_dir: Path) -> None:
    """A batch bigger than the whole spool is counted as dropped; older records stay."""
    small = make_batch("small", 1)
    spool = Spool(spool_dir, max_bytes=2 * len(encode_record(small)))
    spool.append(small)

    with pytest.raises(SpoolRefused, match="larger than the whole spool") as refused:
        spool.append(make_batch("huge", 50))

    assert 50 == refused.value.rows

    assert SpoolStats(1, len(encode_record(small)), 1, 0, 50) == spool.pending()
    assert [small] == drain(spool)
    spool.close()


def test_unicode_none_and_big_integers_round_trip(spool: Spool) -> None:
    """Any text (emoji, NUL, lone surrogates), None and integers past 64 bits come back."""
    row = cast(
        Row,
        ("😀 ü", '\x00\n"\\', None, "\ud800", "\udfff x", "中文", 2**64, -(2**80), "", None)
        + (None,) * 7,
    )
    spool.append([row])
    assert [[row]] == drain(spool)


texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.sampled_from(
    ["😀🎉", "\ud83d", "\x00", "日本語", ""]
)
integers = st.integers() | st.sampled_from([2**63 - 1, -(2**63), 2**100])
optional_texts = st.none() | texts
rows = st.tuples(
    texts,
    texts,
    optional_texts,
    texts,
    texts,
    texts,
    integers,
    integers,
    texts,
    optional_texts,
    st.none() | integers,
    texts,
    optional_texts,
    optional_texts,
    optional_texts,
    optional_texts,
    optional_texts,
)
batches_of_rows = st.lists(st.lists(rows, min_size=0, max_size=4), max_size=5)


@settings(max_examples=150, deadline=None)
@given(batches=batches_of_rows)
def test_random_batches_round_trip_exactly(batches: list[list[Any]]) -> None:
    """Random batches (any text, None, big integers) come back exactly, oldest first."""
    with TemporaryDirectory() as directory:
        spool = Spool(directory, max_bytes=BIG, segment_bytes=300)
        for batch in batches:
            spool.append(batch)
        assert [batch for batch in batches if batch] == drain(spool)
        spool.close()


def test_concurrent_appends_from_threads_are_all_kept(spool_dir: Path) -> None:
    """Eight threads appending at once, across segment rotations, lose and tear nothing."""
    spool = Spool(spool_dir, max_bytes=BIG, segment_bytes=4000)
    tags = [f"t{thread}-{n:02}" for thread in range(8) for n in range(25)]

    def append_all(thread: int) -> None:
        for tag in tags[thread * 25 : (thread + 1) * 25]:
            spool.append(make_batch(tag, 2))

    threads = [threading.Thread(target=append_all, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    records = drain(spool)
    assert sorted(make_batch(tag, 2) for tag in tags) == sorted(records)
    assert 0 == spool.pending().corrupt_records
    spool.close()


def test_orphan_of_a_killed_process_is_replayed(spool_dir: Path) -> None:
    """Segments of a SIGKILLed process are claimed by the next one and read in full."""
    batches = [make_batch(f"k{n}") for n in range(3)]
    child = spawn(
        """
        spool = Spool(directory, max_bytes=2**20)
        for batch in batches:
            spool.append(batch)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        spool_dir,
        batches,
    )
    returncode, _ = finish(child)
    assert -signal.SIGKILL == returncode

    spool = Spool(spool_dir, max_bytes=BIG)
    segment = spool.claim_oldest()
    assert segment is not None
    assert segment.path.name.endswith(f"-{child.pid}{SEGMENT_SUFFIX}")
    assert batches == list(segment.records())
    segment.commit()
    assert None is spool.claim_oldest()
    spool.close()


def test_live_process_segments_are_neither_claimed_nor_dropped(spool_dir: Path) -> None:
    """A live owner's segments are never claimed or deleted; after it exits they are."""
    theirs = make_batch("theirs")
    child = spawn(
        """
        spool = Spool(directory, max_bytes=2**20)
        spool.append(batches[0])
        print("ready", flush=True)
        sys.stdin.readline()
        spool.close()
        """,
        spool_dir,
        [theirs],
    )
    assert child.stdout is not None
    assert "ready\n" == child.stdout.readline()
    record_bytes = len(encode_record(theirs))
    spool = Spool(spool_dir, max_bytes=2 * record_bytes, segment_bytes=1)
    try:
        assert None is spool.claim_oldest()
        assert 0 == spool.append(make_batch("mine_1"))
        assert 3 == spool.append(make_batch("mine_2"))  # ours goes; theirs is older but live
        with pytest.raises(SpoolRefused, match="held by segments of live processes"):
            spool.append(make_batch("mine_3", 6))  # would fit only in place of theirs
        assert SpoolStats(2, 2 * record_bytes, 6, 0, 9) == spool.pending()
        ours = spool.claim_oldest()
        assert ours is not None
        assert [make_batch("mine_2")] == list(ours.records())
        ours.commit()
        assert None is spool.claim_oldest()
    finally:
        finish(child, "exit\n")

    assert [theirs] == drain(spool)
    spool.close()


def test_two_processes_never_claim_the_same_segment(spool_dir: Path) -> None:
    """Two processes replaying 20 orphans concurrently share them without overlap."""
    writer = Spool(spool_dir, max_bytes=BIG, segment_bytes=1)
    for n in range(20):
        writer.append(make_batch(f"o{n}", 1))
    writer.close()
    names = {path.name for path in segment_files(spool_dir)}
    body = """
        spool = Spool(directory, max_bytes=2**20)
        print("ready", flush=True)
        sys.stdin.readline()  # both start claiming at once
        claimed, rows = [], []
        while (segment := spool.claim_oldest()) is not None:
            claimed.append(segment.path.name)
            rows.extend(row[0] for record in segment.records() for row in record)
            time.sleep(0.01)
            segment.commit()
        print(json.dumps([claimed, rows]))
        """
    children = [spawn(body, spool_dir, []) for _ in range(2)]
    for child in children:
        assert child.stdout is not None
        assert "ready\n" == child.stdout.readline()
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    (first, first_rows), (second, second_rows) = [json.loads(finish(c)[1]) for c in children]

    assert set() == set(first) & set(second)
    assert names == set(first) | set(second)
    assert 20 == len(first) + len(second)
    assert 20 == len(set(first_rows) | set(second_rows))
    assert [] == segment_files(spool_dir)


def test_forked_child_writes_its_own_segments(spool_dir: Path) -> None:
    """After fork the child appends to new segments; the parent's stay its own, locked."""
    batches = [make_batch("parent"), make_batch("child"), make_batch("parent later")]
    child = spawn(
        """
        spool = Spool(directory, max_bytes=2**20)
        spool.append(batches[0])
        pid = os.fork()
        if pid == 0:
            try:
                spool.append(batches[1])
            except BaseException:
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        spool.append(batches[2])
        print(status, len(os.listdir(directory)), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        spool_dir,
        batches,
    )
    _, out = finish(child)
    assert "0 2\n" == out

    spool = Spool(spool_dir, max_bytes=BIG)
    assert [batches[0], batches[2], batches[1]] == drain(spool)
    spool.close()


def test_full_file_cuts_the_partial_record_back(spool_dir: Path) -> None:
    """A write cut short (file size limit, as on a full disk) raises SpoolError and leaves
    only whole records behind."""
    batch = make_batch("limited", 5)
    record_bytes = len(encode_record(batch))
    child = spawn(
        f"""
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = {int(3.5 * record_bytes)}
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        spool = Spool(directory, max_bytes=2**20)
        stored = 0
        try:
            for _ in range(10):
                spool.append(batches[0])
                stored += 1
        except SpoolError as exc:
            print(stored, exc, flush=True)
        spool.close()
        """,
        spool_dir,
        [batch],
    )
    _, out = finish(child)
    stored, message = out.split(" ", 1)
    assert "3" == stored
    assert "File too large" in message

    (path,) = segment_files(spool_dir)
    assert 3 * record_bytes == path.stat().st_size
    spool = Spool(spool_dir, max_bytes=BIG)
    assert [batch] * 3 == drain(spool)
    assert 0 == spool.pending().corrupt_records
    spool.close()


def write_half_then_fail(fd: int, data: bytes) -> None:
    """Write half of ``data``, then fail as a full disk does."""
    os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("can_cut_back", [True, False], ids=["cut-back", "cannot-cut-back"])
def test_failed_write_never_hides_later_records(
    spool: Spool, spool_dir: Path, monkeypatch: pytest.MonkeyPatch, can_cut_back: bool
) -> None:
    """After a half-written record, later appends are read back: the half record is cut off,
    or, if that fails too, left as the torn tail of a segment no longer appended to."""
    before, failed, after = make_batch("before"), make_batch("failed"), make_batch("after")
    spool.append(before)
    with monkeypatch.context() as patch:
        patch.setattr(spool_module, "_write_all", write_half_then_fail)
        if not can_cut_back:
            patch.setattr(os, "ftruncate", Mock(side_effect=OSError(errno.EIO, "I/O error")))
        with pytest.raises(SpoolError, match="No space left on device"):
            spool.append(failed)
    spool.append(after)

    assert (1 if can_cut_back else 2) == len(segment_files(spool_dir))
    assert [before, after] == drain(spool)
    assert (0 if can_cut_back else 1) == spool.pending().corrupt_records


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_raises_spool_error(spool: Spool, spool_dir: Path) -> None:
    """Appending into a directory we may not write raises SpoolError, not OSError."""
    spool_dir.chmod(0o500)
    try:
        with pytest.raises(SpoolError, match="Permission denied"):
            spool.append(make_batch("denied"))
    finally:
        spool_dir.chmod(0o700)
    assert [] == list(spool_dir.iterdir())


def test_vanished_directory_raises_spool_error(spool: Spool, spool_dir: Path) -> None:
    """Appending after the directory was removed raises SpoolError, even as root."""
    spool_dir.rmdir()
    with pytest.raises(SpoolError, match="No such file"):
        spool.append(make_batch("gone"))
    with pytest.raises(SpoolError, match="No such file"):
        spool.claim_oldest()


def test_directory_that_is_a_file_raises_spool_error(tmp_path: Path) -> None:
    """A spool path naming an existing file raises SpoolError at construction."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="cannot create"):
        Spool(tmp_path / "file" / "spool", max_bytes=BIG)


def test_stale_half_created_segment_is_removed(spool: Spool, spool_dir: Path) -> None:
    """A '.new' file left by a process killed while creating a segment goes when old."""
    spool_dir.mkdir(exist_ok=True)
    stale = spool_dir / f"0000000000000001-00000000-1{SEGMENT_SUFFIX}.new"
    young = spool_dir / f"0000000000000002-00000000-1{SEGMENT_SUFFIX}.new"
    stale.touch()
    young.touch()
    os.utime(stale, (time.time() - 120, time.time() - 120))

    assert None is spool.claim_oldest()
    assert [young] == list(spool_dir.iterdir())


def test_append_cost_per_row(spool_dir: Path) -> None:
    """Print the append and replay-read cost per row for 512-row batches of ~400-byte rows."""
    batch = make_batch("bench", 512)
    record_bytes = len(encode_record(batch))
    spool = Spool(spool_dir, max_bytes=2**30)
    rounds = 40
    started = time.perf_counter()
    for _ in range(rounds):
        spool.append(batch)
    append_s = time.perf_counter() - started
    started = time.perf_counter()
    rows_read = 0
    while (segment := spool.claim_oldest()) is not None:
        for record in segment.records():  # each record dropped once stored, as in a replay
            rows_read += len(record)
        segment.commit()
    read_s = time.perf_counter() - started
    spool.close()
    assert rounds * 512 == rows_read
    synced = Spool(spool_dir / "fsync", max_bytes=2**30, fsync=True)
    started = time.perf_counter()
    for _ in range(10):
        synced.append(batch)
    fsync_s = (time.perf_counter() - started) / 10
    synced.close()
    print(
        f"\nspool: {record_bytes / 512:.0f} bytes/row on disk;"
        f" append {append_s / rounds / 512 * 1e6:.2f} µs/row"
        f" ({append_s / rounds * 1e3:.2f} ms per 512-row batch);"
        f" replay read {read_s / rows_read * 1e6:.2f} µs/row;"
        f" append with fsync=True {fsync_s * 1e3:.2f} ms per batch"
    )
