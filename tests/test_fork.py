"""Forked processes: children's spans are stored and the parent's connection survives them.

Each test runs a script in a fresh interpreter: configure() sets the global tracer provider,
and forking the test runner itself would copy pytest into the children.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support import clean_environ, query

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """\
import json, multiprocessing, os, sys
from opentelemetry import trace
import otel_pg_exporter
tracer = trace.get_tracer("tests.test_fork")
handle = otel_pg_exporter.configure(dsn=os.environ["DSN"], service_name="forks")
"""


def run_script(body: str, dsn: str) -> Any:
    """Run PRELUDE + ``body`` in a fresh interpreter with tracing on; its last line as JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        env=clean_environ(DSN=dsn, ENABLE_DB_TRACING="true"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert 0 == completed.returncode, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_multiprocessing_children_spans_are_stored(migrated_dsn: str) -> None:
    """Three fork-started children that just return (no flush, os._exit) get their spans stored."""
    result = run_script(
        """
        def child(index):
            with tracer.start_as_current_span("child.job",
                                              attributes={"child.index": index,
                                                          "child.pid": os.getpid()}):
                with tracer.start_as_current_span("child.step",
                                                  attributes={"child.index": index}):
                    pass

        with tracer.start_as_current_span("parent.before"):
            pass
        handle.force_flush()
        context = multiprocessing.get_context("fork")
        children = [context.Process(target=child, args=(index,)) for index in range(3)]
        for process in children:
            process.start()
        for process in children:
            process.join(30)
        print(json.dumps({"exit_codes": [process.exitcode for process in children],
                          "pids": sorted(process.pid for process in children)}))
        """,
        migrated_dsn,
    )
    assert [0, 0, 0] == result["exit_codes"]
    rows = query(
        migrated_dsn,
        "SELECT operation, (metadata->>'child.index')::int AS index,"
        " (metadata->>'child.pid')::int AS pid FROM trace_spans"
        " WHERE operation LIKE 'child.%' ORDER BY index, operation",
    )
    expected = [
        (operation, index) for index in range(3) for operation in ("child.job", "child.step")
    ]
    assert expected == [(row["operation"], row["index"]) for row in rows]
    assert result["pids"] == sorted(row["pid"] for row in rows if row["operation"] == "child.job")


def test_os_fork_child_leaves_the_parents_connection_working(migrated_dsn: str) -> None:
    """A child of os.fork() stores its spans; the parent's inherited pool still exports after."""
    result = run_script(
        """
        with tracer.start_as_current_span("parent.before"):
            pass
        handle.force_flush()  # the parent's pool now holds an open connection
        before = handle.stats()
        pid = os.fork()
        if pid == 0:
            for index in range(3):
                with tracer.start_as_current_span("child.work", attributes={"index": index}):
                    pass
            flushed = handle.force_flush()
            stats = handle.stats()
            ok = flushed and stats["export_failures"] == before["export_failures"]
            os._exit(0 if ok and stats["spans_exported"] == before["spans_exported"] + 3 else 1)
        _, status = os.waitpid(pid, 0)
        for index in range(2):
            with tracer.start_as_current_span("parent.after", attributes={"index": index}):
                pass
        handle.force_flush()
        print(json.dumps({"child_exit": os.waitstatus_to_exitcode(status),
                          "stats": handle.stats()}))
        """,
        migrated_dsn,
    )
    assert 0 == result["child_exit"]
    stats = result["stats"]
    assert (3, 0, 0) == (stats["spans_exported"], stats["export_failures"], stats["spans_failed"])
    rows = query(
        migrated_dsn,
        "SELECT operation, count(*) AS n FROM trace_spans GROUP BY operation ORDER BY operation",
    )
    assert [("child.work", 3), ("parent.after", 2), ("parent.before", 1)] == [
        (row["operation"], row["n"]) for row in rows
    ]
