"""``otel-pg spool`` and ``otel-pg spool replay``: this machine's disk spools.

The spool folder (``OTEL_EXPORTER_POSTGRES_SPOOL_DIR``, else the per-user cache folder) holds
one sub-folder per target database and table, named by ``spool_folder_key``. A segment is
held by its owner process with ``flock`` for as long as that process lives; one no live
process holds is an orphan, which ``replay`` moves into the table now, leaving held segments
to their owners.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from otel_pg_exporter import environment_variables as ev
from otel_pg_exporter._untraced import untraced
from otel_pg_exporter.cli.common import (
    EXIT_DATABASE_ERROR,
    EXIT_OK,
    Subcommands,
    settings_of,
    target_options,
    where,
)
from otel_pg_exporter.errors import OtelPgError, SpoolError, WriteError
from otel_pg_exporter.export.exporter import spool_folder_key
from otel_pg_exporter.export.spool import Spool, inspect_segments
from otel_pg_exporter.export.writer import SpanWriter
from otel_pg_exporter.settings import ExporterSettings, Setting, setting

# --- shared with ``otel-pg doctor`` -------------------------------------------------------


def human_bytes(size: float) -> str:
    """``size`` in B, kB, MB, GB or TB (powers of 1024, as ``pg_size_pretty``)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def human_age(seconds: float) -> str:
    """A duration in the largest fitting unit: ``40 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def setting_source(
    declared: Setting[Any], explicit: object, environ: Mapping[str, str]
) -> tuple[str, str | None]:
    """Where ``Setting.resolve`` takes the value from: ``argument``, a variable's name or
    ``default``; and, when a variable was set but unusable, why it was ignored."""
    if explicit is not None:
        return "argument", None
    for name in declared.variables:
        raw = environ.get(name)
        if raw is None or (raw.strip() == "" and not declared.empty_is_a_value):
            continue
        try:
            declared.parse(raw.strip())
        except ValueError as exc:
            return "default", f"{name} is not usable ({exc})"
        return name, None
    return "default", None


@dataclass(frozen=True)
class SpoolFolder:
    """One target's spool folder as found on disk."""

    key: str
    path: str
    segments: int
    rows: int
    bytes: int
    oldest_age_s: float | None  # age of the oldest segment, None when empty
    held_segments: int  # segments a live process holds (its owner, or a replay)

    @property
    def owner_alive(self) -> bool:
        return self.held_segments > 0

    @property
    def orphaned_rows(self) -> bool:
        return self.segments > self.held_segments


def _created_s(name: str, path: str) -> float:
    """A segment's creation time: its name starts with it in hex nanoseconds."""
    try:
        return int(name.split("-", 1)[0], 16) / 1e9
    except ValueError:
        try:
            return os.stat(path).st_mtime
        except OSError:
            return time.time()


def inspect_folder(path: str, key: str | None = None) -> SpoolFolder:
    """Rows, bytes, age and owner of the spool folder ``path`` (read only)."""
    segments = inspect_segments(path)
    now = time.time()
    oldest = None
    if segments:
        name = segments[0][0]
        oldest = now - _created_s(name, os.path.join(path, name))
    return SpoolFolder(
        key=key if key is not None else os.path.basename(path),
        path=path,
        segments=len(segments),
        rows=sum(rows for _, _, rows, _ in segments),
        bytes=sum(size for _, size, _, _ in segments),
        oldest_age_s=oldest,
        held_segments=sum(1 for _, _, _, held in segments if held),
    )


def spool_folders(spool_dir: str) -> list[SpoolFolder]:
    """Every target folder under ``spool_dir``, by key; none when it does not exist."""
    try:
        with os.scandir(spool_dir) as entries:
            keys = sorted(entry.name for entry in entries if entry.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise SpoolError(f"cannot read spool folder {spool_dir}: {exc}") from exc
    try:
        return [inspect_folder(os.path.join(spool_dir, key), key) for key in keys]
    except OSError as exc:
        raise SpoolError(f"cannot read spool folder {spool_dir}: {exc}") from exc


def resolved_spool_dir(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The spool folder the exporter would use here (None: spool off), and its source."""
    declared = setting("spool_dir")
    source, problem = setting_source(declared, None, environ)
    value: str | None = declared.resolve(None, environ)
    if problem is not None:
        source = f"default; {problem}"
    return (os.path.abspath(value) if value else None), source


# --- otel-pg spool ------------------------------------------------------------------------


def _owner(folder: SpoolFolder) -> str:
    if folder.segments == 0:
        return "-"
    if folder.held_segments == folder.segments:
        return "alive"
    if folder.held_segments:
        return f"alive ({folder.segments - folder.held_segments} segments orphaned)"
    return "not alive"


def _run_list(args: argparse.Namespace, out: TextIO) -> int:
    spool_dir, source = resolved_spool_dir(os.environ)
    folders = spool_folders(spool_dir) if spool_dir else []
    if args.json:
        document = {
            "spool_dir": spool_dir,
            "source": source,
            "folders": [
                {**asdict(folder), "owner_alive": folder.owner_alive} for folder in folders
            ],
        }
        print(json.dumps(document, indent=2), file=out)
        return EXIT_OK
    if spool_dir is None:
        print(
            f"The disk spool is off ({ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR} is empty): "
            "spans are dropped while the database is down",
            file=out,
        )
        return EXIT_OK
    print(f"Spool folder: {spool_dir} (from {source})", file=out)
    waiting = [folder for folder in folders if folder.segments]
    empty = len(folders) - len(waiting)
    if not waiting:
        found = f"{empty} empty target folders" if folders else "the folder holds no spool yet"
        print(f"Nothing is waiting ({found})", file=out)
        return EXIT_OK
    print(f"{'TARGET KEY':<18}{'ROWS':>10}{'SIZE':>11}{'OLDEST':>10}  OWNER", file=out)
    for folder in waiting:
        age = "-" if folder.oldest_age_s is None else human_age(folder.oldest_age_s)
        print(
            f"{folder.key:<18}{folder.rows:>10}{human_bytes(folder.bytes):>11}{age:>10}"
            f"  {_owner(folder)}",
            file=out,
        )
    if empty:
        print(f"({empty} empty target folders not shown; --json lists them)", file=out)
    if any(folder.orphaned_rows for folder in folders):
        print(
            "Orphaned segments wait for the next exporter of their target, or for "
            "otel-pg spool replay --dsn ... (with its --schema/--table)",
            file=out,
        )
    return EXIT_OK


# --- otel-pg spool replay -----------------------------------------------------------------


def _check_connection(dsn: str, timeout_s: float) -> None:
    """Raise OtelPgError (password-free) unless the database answers now."""
    from otel_pg_exporter.cli.doctor import connect

    connect(dsn, timeout_s).close()


def _run_replay(args: argparse.Namespace, out: TextIO) -> int:
    settings = settings_of(args)
    spool_dir, _ = resolved_spool_dir(os.environ)
    if spool_dir is None:
        print(
            f"The disk spool is off ({ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR} is empty): "
            "nothing to replay",
            file=out,
        )
        return EXIT_OK
    key = spool_folder_key(settings.dsn, settings.schema, settings.table)
    path = os.path.join(spool_dir, key)
    started = time.monotonic()
    try:
        _check_connection(settings.dsn, settings.timeout_s)
    except OtelPgError as exc:
        print(f"otel-pg spool replay: error: {exc}; nothing was replayed", file=sys.stderr)
        return EXIT_DATABASE_ERROR
    if not os.path.isdir(path):
        print(f"Nothing to replay for {where(settings)}: no spool folder {path}", file=out)
        _say_other_folders(spool_dir, key, out)
        return EXIT_OK
    replayed, duplicates, refused, error = _replay_folder(path, settings)
    left = inspect_folder(path, key)
    elapsed = time.monotonic() - started
    print(
        f"Replayed {replayed} rows ({duplicates} of them already stored) into {where(settings)} "
        f"from {path} in {elapsed:.2f} s; {left.rows} rows left",
        file=out,
    )
    if refused:
        print(f"The database refused {refused} rows: they were dropped", file=out)
    if left.held_segments:
        print(
            f"{left.held_segments} segments are held by a live exporter process, which "
            "replays them itself once the database answers",
            file=out,
        )
    _say_other_folders(spool_dir, key, out)
    if error is not None:
        print(f"otel-pg spool replay: error: {error}; the rest stays spooled", file=sys.stderr)
        return EXIT_DATABASE_ERROR
    return EXIT_OK


def _say_other_folders(spool_dir: str, key: str, out: TextIO) -> None:
    others = [
        folder for folder in spool_folders(spool_dir) if folder.key != key and folder.orphaned_rows
    ]
    if others:
        print(
            f"{len(others)} other spool folders hold {sum(f.rows for f in others)} rows for "
            "other targets (otel-pg spool lists them)",
            file=out,
        )


def _replay_folder(path: str, settings: ExporterSettings) -> tuple[int, int, int, str | None]:
    """Move every orphaned segment of ``path`` into the table, oldest first: rows stored,
    duplicates among them, rows refused, and the error that stopped it (None: drained)."""
    spool = Spool(path, max_bytes=settings.spool_max_mb * 2**20)
    writer = SpanWriter(
        dsn=settings.dsn,
        table=settings.table,
        schema=settings.schema,
        pool_max=1,
        timeout_s=settings.timeout_s,
    )
    replayed = duplicates = refused = 0
    try:
        while (segment := spool.claim_oldest()) is not None:
            try:
                for rows in segment.records():
                    with untraced():
                        outcome = writer.write(rows, time.monotonic() + settings.timeout_s)
                    replayed += outcome.inserted + outcome.duplicates
                    duplicates += outcome.duplicates
                    refused += len(outcome.rejected)
            except WriteError as exc:
                segment.release()
                return replayed, duplicates, refused, exc.cause
            except BaseException:
                segment.release()
                raise
            segment.commit()
    finally:
        spool.close()
        writer.close()
    return replayed, duplicates, refused, None


def add_spool(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "spool",
        help="list this machine's disk spools; 'spool replay' drains one into the database",
        description=(
            "List the spool folders under the spool directory "
            f"(${ev.OTEL_EXPORTER_POSTGRES_SPOOL_DIR}, else the per-user cache folder): per "
            "target its rows, size, oldest segment and whether its owner process is alive."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=_run_list)
    actions = parser.add_subparsers(dest="spool_command", metavar="{replay}", required=False)
    replay = actions.add_parser(
        "replay",
        parents=[target_options()],
        help="move orphaned spooled spans of the target into its table now",
        description=(
            "Replay the spool folder of the target given by --dsn/--schema/--table (the "
            "folder its exporter would use) into the table now, oldest first. Segments held "
            "by a live exporter are left to it. Rows already stored are skipped."
        ),
    )
    replay.set_defaults(run=_run_replay)
