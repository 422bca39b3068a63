"""`make bench`: what the exporter costs and how fast it stores spans, against the baselines.

Against a throwaway PostgreSQL (``DevCluster``, fsync on), each part in fresh processes:

1. Hot path: the application thread's CPU per span (start, five attributes, end; a steady
   5,000 spans/s) with the SDK and a do-nothing exporter (the baseline), with ``configure()``
   and the database up, and with ``configure()`` and the database down; for reference, an
   exporter that only maps. Target: <= 1.10x the baseline.
2. Exporter CPU per span in the exporting thread, against the OTLP/HTTP protobuf exporter
   sending the same spans to a local sink. Target: <= 0.5x the OTLP exporter. With it, what
   the scrubbing fast path costs a typical attributes document with nothing to scrub.
3. Throughput of ``export()`` (batches of 512) against the raw limit (psycopg COPY of the same
   rows through the writer's stage + INSERT ON CONFLICT) and one INSERT + commit per span.
   Targets: >= 0.8x the raw limit, >= 10x the per-span INSERT.
4. End to end: the example ASGI app under uvicorn, tracing off / on (database up) / on
   (database up, the compiled fast path off) / on (database down), plus the bare SDK for
   reference. Targets: throughput and p99 within 5 % of tracing off; throughput >= 0.9x the
   bare SDK's with the database up (the exporter's own share), fast path on and off.
5. Growth: export cost per span with 1e4, 1e5 and 1e6 rows in the table. Target: flat
   (1e6 within 1.25x of 1e4).
6. Tight loop: an application thread making 30,000 spans flat out (no sleeps), with the SDK
   and a do-nothing exporter (the baseline), and with ``configure()`` and the database up,
   the compiled fast path on and off: loop wall time and app-thread CPU, then spans
   exported, dropped and stored. Targets: loop time <= 1.30x the baseline, 0 spans dropped.
   With it, in one process per fast-path setting, the exporter's CPU per span (export thread
   + sender thread + any other thread of the exporter) against the SDK's own CPU to make the
   same span. Target: <= 0.25.

Every figure is the median of several runs with min and max; ratios are taken run by run.
Prints one Markdown table and writes it to benchmarks/results/bench.{json,md}. A missed
target adds a profile of the code behind it (cProfile; for part 4, py-spy's GIL sampling when
py-spy is installed). ``--quick`` for a try-out, ``--parts 1,3`` for some parts only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (make bench): make `benchmarks` importable
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchmarks.bench_common import (  # noqa: E402
    FAST_PATH_ENV,
    child_env,
    free_port,
    ratios,
    run_part,
    summary,
)
from otel_pg_exporter.export.sender import MAX_BATCH_ROWS  # noqa: E402
from otel_pg_exporter.schema.migrations import migrate  # noqa: E402
from otel_pg_exporter.testing.devdb import DevCluster  # noqa: E402

RESULTS_DIR = ROOT / "benchmarks" / "results"
HOT_PATH_MODES = ("baseline", "map", "up", "down")
HOT_PATH_LABELS = {
    "baseline": "SDK + BatchSpanProcessor + drop exporter (baseline)",
    "map": "SDK + BatchSpanProcessor + exporter that only maps (reference)",
    "up": "configure(), database up",
    "down": "configure(), database down",
}
E2E_MODES = ("off", "sdk", "up", "up_nofast", "down")
E2E_LABELS = {
    "off": "tracing off (ENABLE_DB_TRACING unset)",
    "sdk": "bare SDK + drop exporter (reference)",
    "up": "configure(), database up",
    "up_nofast": "configure(), database up, fast path off",
    "down": "configure(), database down",
}
E2E_SHORT = {
    "up": "on (db up)",
    "up_nofast": "on (db up, fast path off)",
    "down": "on (db down)",
    "sdk": "bare SDK",
}
TIGHT_MODES = ("baseline", "on", "off")
TIGHT_LABELS = {
    "baseline": "SDK + BatchSpanProcessor (default queue) + drop exporter (baseline)",
    "on": "configure(), database up, fast path on",
    "off": "configure(), database up, fast path off",
}
FLAT_LIMIT = 1.25
# Frames every sample of a worker thread passes through: they say nothing about the cost.
GENERIC_FRAMES = ("Thread.", "BatchProcessor.worker", "BatchProcessor._export")
RATIO = "×"  # noqa: RUF001 - the multiplication sign is the unit the table shows

FULL: dict[str, dict[str, Any]] = {
    "hotpath": {"runs": 5, "spans": 10_000, "rate": 5_000, "warmup_spans": 2_000},
    "cpu": {"runs": 5, "spans": 20_000},
    "throughput": {"runs": 5, "spans": 20_000, "insert_spans": 2_000},
    "e2e": {
        "runs": 3,
        "requests": 2_000,
        "concurrency": 8,
        "warmup_requests": 200,
        "pause_s": 0.5,
    },
    "growth": {"sizes": [10_000, 100_000, 1_000_000], "runs": 5, "batches_per_run": 2},
    "tight": {
        "runs": 3,
        "spans": 30_000,
        "warmup_spans": 1_000,
        "cpu_runs": 5,
        "cpu_spans": 20_480,
    },
    "profile": {"spans": 20_480, "hotpath_spans": 4_000, "spy_requests": 1_000},
}
QUICK: dict[str, dict[str, Any]] = {
    "hotpath": {"runs": 2, "spans": 4_000, "rate": 5_000, "warmup_spans": 1_000},
    "cpu": {"runs": 2, "spans": 4_096},
    "throughput": {"runs": 2, "spans": 5_120, "insert_spans": 300},
    "e2e": {"runs": 2, "requests": 300, "concurrency": 8, "warmup_requests": 100, "pause_s": 0.5},
    "growth": {"sizes": [10_000, 100_000], "runs": 2, "batches_per_run": 2},
    "tight": {"runs": 1, "spans": 30_000, "warmup_spans": 500, "cpu_runs": 2, "cpu_spans": 5_120},
    "profile": {"spans": 5_120, "hotpath_spans": 2_000, "spy_requests": 300},
}


@dataclass
class Line:
    """One row of the table: a measure over several runs, maybe with a target."""

    part: str
    measure: str
    values: Sequence[float]
    unit: str
    target: str = ""
    check: Callable[[float], bool] | None = None
    every_run: bool = False  # the check must hold for each run, not only for the median

    @property
    def verdict(self) -> str:
        if self.check is None:
            return ""
        if self.every_run:
            return "met" if all(self.check(value) for value in self.values) else "MISSED"
        return "met" if self.check(summary(self.values)["median"]) else "MISSED"


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, *lines: Line) -> None:
        self.lines.extend(lines)

    def missed(self, *parts: str) -> bool:
        return any(line.verdict == "MISSED" and line.part in parts for line in self.lines)


def at_most(limit: float) -> Callable[[float], bool]:
    return lambda value: value <= limit


def at_least(limit: float) -> Callable[[float], bool]:
    return lambda value: value >= limit


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the machine --------------------------------------------------------------------------------


def machine_info(dsn: str) -> dict[str, Any]:
    cpu_model = ""
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu_model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    with psycopg.connect(dsn) as conn:
        settings = {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    versions = {}
    for package in ("opentelemetry-sdk", "psycopg", "uvicorn", "otel_pg_exporter"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": settings.pop("server_version"),
        "postgresql_settings": settings,
        "packages": versions,
        "commit": commit,
    }


def machine_line(machine: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in machine["postgresql_settings"].items())
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return (
        f"{machine['cores']} cores ({machine['cpu'] or 'unknown CPU'}), {machine['platform']}, "
        f"Python {machine['python']}, PostgreSQL {machine['postgresql']} ({settings}); "
        f"{packages}; tree {machine['commit']}"
    )


class MachineLoad:
    """CPU the rest of the machine used while a part ran: other processes on these cores
    make every figure noisier, so the notes say how much there was."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self._postmaster_pid = postmaster_pid
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._mark = self._read()

    def _read(self) -> tuple[float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return (time.monotonic(), 0.0, 0.0)
        # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
        busy = sum(int(value) for i, value in enumerate(fields[:8]) if i not in (3, 4))
        own = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        own += sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
        if self._postmaster_pid is not None:
            own += self._server_seconds(self._postmaster_pid)
        return (time.monotonic(), busy / self._ticks, own)

    def _server_seconds(self, pid: int) -> float:
        """CPU of the postmaster, its live children and the children it has reaped."""
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        total = 0.0
        for number, process in enumerate([str(pid), *children]):
            try:
                stat = Path(f"/proc/{process}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            # utime stime, and for the postmaster cutime cstime (backends that have exited)
            total += sum(int(value) for value in fields[11 : 15 if number == 0 else 13])
        return total / self._ticks

    def other_share(self) -> float:
        """Share of all cores busy outside this benchmark since the last call."""
        now = self._read()
        wall = (now[0] - self._mark[0]) * (os.cpu_count() or 1)
        other = (now[1] - self._mark[1]) - (now[2] - self._mark[2])
        self._mark = now
        return max(0.0, other / wall) if wall > 0 else 0.0


def postmaster_pid(cluster: DevCluster) -> int | None:
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# -- the parts ----------------------------------------------------------------------------------


def part_hot_path(report: Report, config: dict[str, Any], dsn: str, closed: str, tmp: Path) -> None:
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in HOT_PATH_MODES}
    for run_number in range(config["runs"]):
        shift = run_number % len(HOT_PATH_MODES)
        for mode in HOT_PATH_MODES[shift:] + HOT_PATH_MODES[:shift]:
            say(f"  1. hot path: run {run_number + 1}/{config['runs']}, {mode}")
            runs[mode].append(run_hot_path(mode, config, dsn, closed, tmp))
    report.raw["hotpath"] = runs
    cpu = {mode: [run["cpu_us_per_span"] for run in runs[mode]] for mode in HOT_PATH_MODES}
    what = f"app-thread CPU per span ({config['rate']:,}/s steady)"
    report.add(
        *(
            Line("1", f"{what}: {HOT_PATH_LABELS[mode]}", cpu[mode], "µs")
            for mode in HOT_PATH_MODES
        ),
        Line(
            "1",
            "configure() up / baseline",
            ratios(cpu["up"], cpu["baseline"]),
            RATIO,
            "≤ 1.10",
            at_most(1.10),
        ),
        Line(
            "1",
            "configure() down / baseline",
            ratios(cpu["down"], cpu["baseline"]),
            RATIO,
            "≤ 1.10",
            at_most(1.10),
        ),
        Line("1", "map-only exporter / baseline", ratios(cpu["map"], cpu["baseline"]), RATIO),
    )
    for mode in HOT_PATH_MODES:
        dropped = sum(
            run["exporter_stats"].get("spans_dropped_queue_full", 0) for run in runs[mode]
        )
        switches = sorted(run["scheduler"].get("nr_involuntary_switches", 0) for run in runs[mode])
        rates = sorted(round(run["achieved_rate"]) for run in runs[mode])
        report.notes.append(
            f"1. {mode}: {dropped} spans pushed out of a full queue over all runs; achieved "
            f"rates {rates}/s; the app thread was preempted {switches} times per run"
        )


def run_hot_path(
    mode: str, config: dict[str, Any], dsn: str, closed: str, tmp: Path, **extra: Any
) -> dict[str, Any]:
    env = child_env(
        OTEL_SERVICE_NAME="bench",
        OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / f"spool-hotpath-{mode}"),
    )
    if mode in ("up", "down"):
        env["ENABLE_DB_TRACING"] = "true"
        env["OTEL_EXPORTER_POSTGRES_DSN"] = dsn if mode == "up" else closed
    part_config = {
        "mode": mode,
        "spans": config["spans"],
        "rate": config["rate"],
        "warmup_spans": config["warmup_spans"],
        **extra,
    }
    return run_part("bench_hotpath", part_config, env=env)


def part_exporter_cpu(report: Report, config: dict[str, Any], dsn: str, tmp: Path) -> None:
    say("  2. exporter CPU per span: PostgresSpanExporter and OTLP/HTTP")
    env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / "spool-cpu"))
    result = run_part("bench_exporter_cpu", {"dsn": dsn, **config}, env=env)
    report.raw["cpu"] = result
    us = result["us_per_span"]
    writing = [
        total - mapping for total, mapping in zip(us["postgres"], us["mapping"], strict=True)
    ]
    what = "exporting-thread CPU per span"
    report.add(
        Line("2", f"{what}: PostgresSpanExporter.export()", us["postgres"], "µs"),
        Line("2", "  of which mapping (SpanMapper.to_row)", us["mapping"], "µs"),
        Line("2", "  of which the rest (COPY, INSERT, commit, bookkeeping)", writing, "µs"),
        Line("2", f"{what}: OTLPSpanExporter (HTTP/protobuf, local sink)", us["otlp"], "µs"),
        Line(
            "2",
            "PostgresSpanExporter / OTLP",
            ratios(us["postgres"], us["otlp"]),
            RATIO,
            "≤ 0.50",
            at_most(0.5),
        ),
    )
    fast_path = result["scrubbing_fast_path_ns"]
    document = f"a {result['scrubbing_document_chars']}-char attributes document, no secret"
    report.add(
        Line(
            "2",
            f"scrubbing fast path on {document}: might_contain_secret",
            fast_path["might_contain_secret"],
            "ns",
        ),
        Line(
            "2",
            "  keys_need_scrubbing + values_might_contain_secret (what the mapping runs)",
            fast_path["keys_and_values"],
            "ns",
        ),
        Line("2", "  for scale: json.dumps of the same document", fast_path["json_dumps"], "ns"),
    )


def part_throughput(report: Report, config: dict[str, Any], dsn: str, tmp: Path) -> None:
    say("  3. throughput: export(), raw COPY, per-span INSERT")
    env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / "spool-throughput"))
    result = run_part("bench_throughput", {"dsn": dsn, **config}, env=env)
    report.raw["throughput"] = result
    rates = result["rows_per_s"]
    report.add(
        Line(
            "3",
            "committed spans/s: export(), 512 per call, sender thread (configure(), CLI)",
            rates["exporter"],
            "/s",
        ),
        Line(
            "3",
            "committed spans/s: export(), 512 per call, direct (SDK BatchSpanProcessor)",
            rates["exporter_direct"],
            "/s",
        ),
        Line(
            "3",
            "committed rows/s: raw limit, psycopg COPY → stage → INSERT ON CONFLICT, 512/tx",
            rates["raw"],
            "/s",
        ),
        Line(
            "3",
            f"committed rows/s: raw limit, the same with {MAX_BATCH_ROWS:,} rows/tx "
            "(the sender's most)",
            rates["raw_joined"],
            "/s",
        ),
        Line("3", "committed rows/s: one INSERT + commit per span", rates["per_span_insert"], "/s"),
        Line(
            "3",
            "exporter (sender) / raw limit, 512/tx",
            ratios(rates["exporter"], rates["raw"]),
            RATIO,
            "≥ 0.80",
            at_least(0.8),
        ),
        Line(
            "3",
            f"exporter (sender) / raw limit, {MAX_BATCH_ROWS:,}/tx",
            ratios(rates["exporter"], rates["raw_joined"]),
            RATIO,
            "≥ 0.80",
            at_least(0.8),
        ),
        Line(
            "3",
            "exporter (direct) / raw limit, 512/tx (reference)",
            ratios(rates["exporter_direct"], rates["raw"]),
            RATIO,
        ),
        Line(
            "3",
            "exporter (sender) / per-span INSERT",
            ratios(rates["exporter"], rates["per_span_insert"]),
            RATIO,
            "≥ 10",
            at_least(10.0),
        ),
    )
    report.notes.append(
        f"3. {result['rows_committed']:,} rows committed in the timed runs, "
        f"{result['rows_expected']:,} expected; {result['spans_per_run']:,} spans per run "
        f"({result['insert_spans_per_run']:,} for the per-span INSERT); the raw and per-span "
        "INSERT paths get rows mapped beforehand, outside the timing"
    )


def part_end_to_end(
    report: Report, config: dict[str, Any], dsn: str, closed: str, tmp: Path
) -> None:
    say(
        f"  4. end to end: {len(E2E_MODES)} uvicorn servers, "
        f"{config['runs']} x {config['requests']} requests each"
    )
    result = run_part(
        "bench_e2e", {"dsn": dsn, "closed_dsn": closed, "tmp": str(tmp), **config}, env=child_env()
    )
    report.raw["e2e"] = result
    runs = result["runs"]

    def series(mode: str, key: str) -> list[float]:
        return [float(run[key]) for run in runs[mode]]

    for mode in E2E_MODES:
        label = E2E_LABELS[mode]
        report.add(
            Line("4", f"{label}: requests/s", series(mode, "requests_per_s"), "/s"),
            Line("4", f"{label}: p50 latency", series(mode, "p50_ms"), "ms"),
            Line("4", f"{label}: p99 latency", series(mode, "p99_ms"), "ms"),
            Line(
                "4",
                f"{label}: server CPU per request",
                series(mode, "server_cpu_ms_per_request"),
                "ms",
            ),
            Line(
                "4",
                f"{label}:   of which the event loop's thread",
                series(mode, "main_thread_cpu_ms_per_request"),
                "ms",
            ),
            Line(
                "4",
                f"{label}:   of which the other threads (export, sender, replay)",
                [
                    total - main
                    for total, main in zip(
                        series(mode, "server_cpu_ms_per_request"),
                        series(mode, "main_thread_cpu_ms_per_request"),
                        strict=True,
                    )
                ],
                "ms",
            ),
        )
    off_rps, off_p99 = series("off", "requests_per_s"), series("off", "p99_ms")
    for mode in ("up", "up_nofast", "down", "sdk"):
        target = mode != "sdk"
        short = E2E_SHORT[mode]
        report.add(
            Line(
                "4",
                f"{short} / off: throughput",
                ratios(series(mode, "requests_per_s"), off_rps),
                RATIO,
                "≥ 0.95" if target else "",
                at_least(0.95) if target else None,
            ),
            Line(
                "4",
                f"{short} / off: p99",
                ratios(series(mode, "p99_ms"), off_p99),
                RATIO,
                "≤ 1.05" if target else "",
                at_most(1.05) if target else None,
            ),
        )
    sdk_rps, sdk_p99 = series("sdk", "requests_per_s"), series("sdk", "p99_ms")
    for mode in ("up", "up_nofast", "down"):
        short = E2E_SHORT[mode]
        target = mode != "down"  # the database down is for reference here
        report.add(
            Line(
                "4",
                f"{short} / bare SDK: throughput (the exporter's own share)",
                ratios(series(mode, "requests_per_s"), sdk_rps),
                RATIO,
                "≥ 0.90" if target else "",
                at_least(0.9) if target else None,
            ),
            Line(
                "4",
                f"{short} / bare SDK: p99 (the exporter's own share)",
                ratios(series(mode, "p99_ms"), sdk_p99),
                RATIO,
            ),
        )
    failures = {mode: sum(run["failures"] for run in runs[mode]) for mode in E2E_MODES}
    report.notes.append(
        f"4. {result['requests_per_run']:,} requests per run, concurrency "
        f"{result['concurrency']}, GET /jobs/N; non-200 answers {failures}; spans stored "
        f"by the db-up servers (fast path on / off) {result['spans_stored_up']:,} / "
        f"{result['spans_stored_up_nofast']:,} for {result['requests_up']:,} requests each "
        f"({FAST_PATH_ENV}=false for the second); SDK queue-full warnings "
        f"{result['queue_full_warnings']}; exporter warnings {result['exporter_warnings']}"
    )


def part_growth(report: Report, config: dict[str, Any], dsn: str, tmp: Path) -> None:
    sizes = ", ".join(f"{size:.0e}" for size in config["sizes"])
    say(f"  5. growth: one table each with {sizes} rows")
    env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / "spool-growth"))
    result = run_part("bench_growth", {"dsn": dsn, **config}, env=env)
    report.raw["growth"] = result
    levels = result["levels"]
    for level in levels:
        rows = f"{level['size']:.0e} rows in the table"
        report.add(
            Line("5", f"export wall time per span, {rows}", level["wall_us_per_span"], "µs"),
            Line("5", f"exporting-thread CPU per span, {rows}", level["cpu_us_per_span"], "µs"),
            Line("5", f"WAL written per span, {rows}", level["wal_bytes_per_span"], "B"),
        )
    first, last = levels[0], levels[-1]
    report.add(
        Line(
            "5",
            f"wall per span, {last['size']:.0e} / {first['size']:.0e} rows",
            ratios(last["wall_us_per_span"], first["wall_us_per_span"]),
            RATIO,
            f"≤ {FLAT_LIMIT} (flat)",
            at_most(FLAT_LIMIT),
        )
    )
    bare = result["without_query_indexes"]
    rows = f"{bare['size']:.0e} rows"
    report.add(
        Line(
            "5",
            f"wall per span with / without the query indexes, {rows}",
            ratios(last["wall_us_per_span"], bare["wall_us_per_span"]),
            RATIO,
        ),
        Line(
            "5",
            f"WAL per span with / without the query indexes, {rows}",
            ratios(last["wal_bytes_per_span"], bare["wal_bytes_per_span"]),
            RATIO,
        ),
    )
    fills = ", ".join(f"{level['size']:.0e}: {level['fill_s']:.1f} s" for level in levels)
    sizes_mib = ", ".join(
        f"{level['size']:.0e}: {level['table_bytes'] / 2**20:,.0f} MiB" for level in levels
    )
    report.notes.append(
        f"5. {result['spans_per_run']:,} spans per table per run, tables exported to in "
        f"rotating order after one CHECKPOINT; fill + VACUUM ANALYZE took {fills}; tables "
        f"with indexes at the end: {sizes_mib}"
    )


def part_tight_loop(report: Report, config: dict[str, Any], dsn: str, tmp: Path) -> None:
    spans = config["spans"]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in TIGHT_MODES}
    for run_number in range(config["runs"]):
        shift = run_number % len(TIGHT_MODES)
        for mode in TIGHT_MODES[shift:] + TIGHT_MODES[:shift]:
            say(f"  6. tight loop: run {run_number + 1}/{config['runs']}, {mode}")
            runs[mode].append(run_tight_loop(mode, run_number, config, dsn, tmp))
    report.raw["tight"] = runs

    def series(mode: str, key: str) -> list[float]:
        return [float(run[key]) for run in runs[mode]]

    what = f"{spans:,} spans flat out"
    for mode in TIGHT_MODES:
        report.add(
            Line("6", f"{what}: loop wall time, {TIGHT_LABELS[mode]}", series(mode, "wall_s"), "s"),
            Line("6", "  app-thread CPU per span", series(mode, "cpu_us_per_span"), "µs"),
        )
    base_wall, base_cpu = series("baseline", "wall_s"), series("baseline", "cpu_us_per_span")
    for mode in ("on", "off"):
        short = f"configure(), fast path {mode}"
        report.add(
            Line(
                "6",
                f"{short} / baseline: loop wall time",
                ratios(series(mode, "wall_s"), base_wall),
                RATIO,
                "≤ 1.30",
                at_most(1.30),
            ),
            Line(
                "6",
                f"{short} / baseline: app-thread CPU",
                ratios(series(mode, "cpu_us_per_span"), base_cpu),
                RATIO,
            ),
        )
    report.add(
        Line(
            "6",
            f"spans dropped: {TIGHT_LABELS['baseline']} (made - exported)",
            series("baseline", "dropped"),
            "spans",
        )
    )
    for mode in ("on", "off"):
        report.add(
            Line(
                "6",
                f"spans dropped (stats()): {TIGHT_LABELS[mode]}",
                series(mode, "dropped"),
                "spans",
                "0 (every run)",
                at_most(0),
                every_run=True,
            ),
            Line(
                "6",
                f"  spans exported + dropped (stats()), of {spans:,} made",
                [run["exported"] + run["dropped"] for run in runs[mode]],
                "spans",
                f"= {spans:,} (every run)",
                lambda value: value == spans,
                every_run=True,
            ),
            Line(
                "6",
                "  spans stored (rows counted in the table)",
                series(mode, "rows_stored"),
                "spans",
            ),
        )
    for mode in TIGHT_MODES:
        detail = [
            f"exported {run['exported']:,}, dropped {run['dropped']:,}"
            + (f" {run['dropped_by_reason']}" if run["dropped_by_reason"] else "")
            + f", spooled {run['spooled']:,}"
            + (
                ""
                if run["rows_stored"] is None
                else f", rows {run['rows_stored']:,}"
                + ("" if run["rows_stored"] == run["exported"] else " (NOT the number exported)")
            )
            + f", shutdown {run['drain_s']:.1f} s"
            for run in runs[mode]
        ]
        how = (
            "exported counted by the drop exporter, dropped = made - exported"
            if mode == "baseline"
            else "from stats(); rows of the loop counted in the table"
        )
        status = "" if mode == "baseline" else f"; {runs[mode][0]['fast_path_status']}"
        report.notes.append(
            f"6. tight loop, {mode} ({how}{status}), run by run: " + " | ".join(detail)
        )
    report.notes.append(
        "6. spans_dropped_queue_full is counted just before the span enters the queue, so "
        "exported + dropped may exceed the spans made by a few (a batch taken at that moment)"
    )
    report.notes.append(
        f"6. tight loop: one process per mode and run, {config['warmup_spans']:,} spans of "
        "warm-up flushed before the timed loop; wall time by perf_counter, CPU by "
        "time.thread_time, both around the loop alone; counts are after handle.shutdown() / "
        f"provider.shutdown(); {FAST_PATH_ENV}=true / false for the fast path on / off"
    )
    part_exporter_vs_sdk(report, config, dsn, tmp)


def run_tight_loop(
    mode: str, run_number: int, config: dict[str, Any], dsn: str, tmp: Path
) -> dict[str, Any]:
    service = f"bench-tight-{mode}-{run_number}"
    env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / f"spool-tight-{mode}"))
    if mode != "baseline":
        env[FAST_PATH_ENV] = "true" if mode == "on" else "false"
    part_config = {
        "kind": "loop",
        "mode": "baseline" if mode == "baseline" else "configure",
        "dsn": dsn,
        "service": service,
        "spans": config["spans"],
        "warmup_spans": config["warmup_spans"],
    }
    return run_part("bench_tight_loop", part_config, env=env)


def part_exporter_vs_sdk(report: Report, config: dict[str, Any], dsn: str, tmp: Path) -> None:
    results: dict[str, dict[str, Any]] = {}
    for mode in ("on", "off"):
        say(f"  6. exporter CPU per span against the SDK's span cost, fast path {mode}")
        env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / f"spool-cpu-ratio-{mode}"))
        env[FAST_PATH_ENV] = "true" if mode == "on" else "false"
        part_config = {
            "kind": "cpu",
            "dsn": dsn,
            "spans": config["cpu_spans"],
            "runs": config["cpu_runs"],
        }
        results[mode] = run_part("bench_tight_loop", part_config, env=env)
    report.raw["exporter_vs_sdk"] = results
    for mode, result in results.items():
        us = result["us_per_span"]
        total = [
            export + others
            for export, others in zip(us["export_thread"], us["other_threads"], strict=True)
        ]
        besides_sender = [
            others - sender
            for others, sender in zip(us["other_threads"], us["sender_thread"], strict=True)
        ]
        label = f"fast path {mode}"
        report.add(
            Line(
                "6", f"SDK's own CPU per span (no-op processor), {label} process", us["sdk"], "µs"
            ),
            Line(
                "6", f"exporter CPU per span, {label}: export() thread", us["export_thread"], "µs"
            ),
            Line("6", "  + the sender thread", us["sender_thread"], "µs"),
            Line("6", "  + every other thread (replay, retention, ...)", besides_sender, "µs"),
            Line("6", "  = all exporter threads", total, "µs"),
            Line(
                "6",
                f"exporter CPU / SDK's own span cost, {label}",
                ratios(total, us["sdk"]),
                RATIO,
                "≤ 0.25",
                at_most(0.25),
            ),
        )
    spans = results["on"]["spans_per_run"]
    report.notes.append(
        "6. exporter / SDK, what the exporter said of its fast path: "
        + "; ".join(f"{mode}: {result['fast_path_status']}" for mode, result in results.items())
    )
    report.notes.append(
        f"6. exporter / SDK: one process per fast-path setting, {config['cpu_runs']} runs of "
        f"{spans:,} spans, SDK and exporter blocks alternating. SDK: time.thread_time over "
        "making the span (start_as_current_span, 5 attributes, end) with a TracerProvider whose "
        "only processor is the do-nothing SpanProcessor. Exporter: PostgresSpanExporter + "
        "use_sender_thread(), copies of SDK spans exported in batches of 512 from one thread "
        "(its thread_time around each export()) plus, from the first export() to force_flush()'s "
        "return, the process CPU clock minus this thread's CPU clock (every other thread); the "
        "sender thread alone from its own clock (pthread_getcpuclockid). PostgreSQL's CPU is "
        "not counted"
    )


def profiles(
    report: Report, settings: dict[str, Any], dsn: str, closed: str, tmp: Path, forced: bool
) -> None:
    """cProfile of the code behind each missed target (all of them with --profile)."""
    config = settings["profile"]
    if forced or report.missed("2", "3", "5"):
        say("  profile: export() with the database up")
        env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / "spool-profile"))
        result = run_part("bench_profile", {"dsn": dsn, "spans": config["spans"]}, env=env)
        report.profiles["export(), database up (exporting thread)"] = profile_header(result)
    down_missed = any(line.verdict == "MISSED" and "down" in line.measure for line in report.lines)
    if forced or down_missed:
        say("  profile: export() with the database down")
        env = child_env(OTEL_EXPORTER_POSTGRES_SPOOL_DIR=str(tmp / "spool-profile-down"))
        result = run_part("bench_profile", {"dsn": closed, "spans": config["spans"]}, env=env)
        report.profiles["export(), database down: the spool path (exporting thread)"] = (
            profile_header(result)
        )
    if forced or report.missed("1"):
        say("  profile: the code configure() adds to the application thread")
        added = run_part("bench_onend", {"blocks": 10}, env=child_env())
        report.raw["onend"] = added
        report.profiles["hot path: code configure() adds to the application thread"] = (
            f"CountingBatchSpanProcessor.on_end {added['us_per_call']['configure']:.2f} µs per "
            f"span against the SDK's BatchSpanProcessor.on_end "
            f"{added['us_per_call']['sdk']:.2f} µs (same span, alternating blocks of 20,000): "
            f"+{added['extra_us_per_span']:.2f} µs per span, median of 10"
        )
        hot = {**settings["hotpath"], "spans": config["hotpath_spans"]}
        own: dict[str, dict[str, float]] = {}
        totals: dict[str, float] = {}
        for mode in HOT_PATH_MODES:
            say(f"  profile: hot path, {mode}")
            result = run_hot_path(mode, hot, dsn, closed, tmp, profile=True)
            own[mode] = result["own_us_per_span"]
            totals[mode] = result["cpu_us_per_span"]
        report.profiles["hot path: own time per span by function (application thread)"] = (
            compare_own_times(own, totals, hot["spans"])
        )


def gil_profiles(
    report: Report, settings: dict[str, Any], dsn: str, closed: str, tmp: Path
) -> None:
    """Which thread holds the GIL in the uvicorn server during a load run (py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).is_file():
        report.notes.append("4. no py-spy found: `pip install py-spy` for part 4's GIL profile")
        return
    say("  profile: py-spy --gil of the uvicorn servers under load")
    config = {
        **settings["e2e"],
        "requests": settings["profile"]["spy_requests"],
        "runs": 0,
        "modes": ["sdk", "up", "down"],
        "spy": spy,
        "dsn": dsn,
        "closed_dsn": closed,
        "tmp": str(tmp / "spy"),
    }
    (tmp / "spy").mkdir(exist_ok=True)
    result = run_part("bench_e2e", config, env=child_env())
    lines = [
        "py-spy record --gil --threads (500 Hz): share of the samples in which each thread "
        "held the GIL, during one run of the load per server"
    ]
    for mode, outcome in result["spied"].items():
        gil = outcome["gil"]
        lines += [
            "",
            f"{E2E_LABELS[mode]}: {outcome['requests_per_s']:.0f} requests/s, p99 "
            f"{outcome['p99_ms']:.1f} ms, {gil['samples']:,} samples {gil.get('error', '')}",
            "  held by: "
            + ", ".join(f"{thread} {share:.0%}" for thread, share in gil["threads"].items()),
        ]
        for thread, held in gil["threads"].items():
            if thread == "MainThread" or held < 0.01:
                continue
            inside = {
                frame: share
                for frame, share in gil["inclusive"][thread].items()
                if not frame.startswith(GENERIC_FRAMES)
            }
            lines.append(f"  {thread}, held inside (inclusive):")
            lines += [f"    {share:6.1%}  {frame}" for frame, share in inside.items()]
            lines.append(f"  {thread}, held in (own time):")
            lines += [f"    {share:6.1%}  {frame}" for frame, share in gil["own"][thread].items()]
    report.profiles["end to end: who holds the GIL in the server (py-spy)"] = "\n".join(lines)


def compare_own_times(
    own: dict[str, dict[str, float]], totals: dict[str, float], spans: int
) -> str:
    """Functions side by side, mode by mode: the code configure() adds to the application
    thread, then the costliest functions, to show whether they merely run slower."""
    modes = list(own)
    base = own[modes[0]]
    names = set().union(*(own[mode] for mode in modes))
    added = sorted(
        (name for name in names if name not in base),
        key=lambda name: -max(own[mode].get(name, 0.0) for mode in modes),
    )
    top = sorted(base, key=lambda name: -base[name])[:15]
    width = max(len(name) for name in [*added, *top, "thread CPU per span, whole loop"])
    header = f"{'function':<{width}} " + " ".join(f"{mode:>9}" for mode in modes)

    def row(name: str) -> str:
        return f"{name:<{width}} " + " ".join(f"{own[m].get(name, 0.0):9.2f}" for m in modes)

    return "\n".join(
        [
            f"cProfile with the thread CPU clock, {spans:,} spans per mode, own time in µs per "
            "span (the profiler's own cost inflates every figure several times; compare "
            "columns, not absolute values)",
            header,
            f"{'thread CPU per span, whole loop':<{width}} "
            + " ".join(f"{totals[mode]:9.1f}" for mode in modes),
            "",
            f"functions that run on the application thread only in some modes ({len(added)}):",
            *(row(name) for name in added),
            "",
            "the baseline's costliest functions:",
            *(row(name) for name in top),
        ]
    )


def profile_header(result: dict[str, Any]) -> str:
    return (
        f"{result['spans']:,} spans; under the profiler {result['cpu_us_per_span_profiled']:.1f}"
        f" µs CPU and {result['wall_us_per_span_profiled']:.1f} µs wall per span\n"
        f"{result['profile']}"
    )


# -- output -------------------------------------------------------------------------------------


def number(value: float, unit: str) -> str:
    if unit == RATIO:
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown(report: Report, elapsed_s: float) -> str:
    out = [
        f"Machine: {machine_line(report.machine)}",
        "",
        f"Settings: {json.dumps(report.settings)}; took {elapsed_s:.0f} s.",
        "",
        "| # | measure | median | min | max | unit | target | result |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for line in report.lines:
        stats = summary(line.values)
        cells = [
            line.part,
            line.measure,
            number(stats["median"], line.unit),
            number(stats["min"], line.unit),
            number(stats["max"], line.unit),
            line.unit,
            line.target,
            line.verdict,
        ]
        out.append("| " + " | ".join(cells) + " |")
    if report.notes:
        out += ["", "Notes:", ""] + [f"- {note}" for note in report.notes]
    for title, text in report.profiles.items():
        out += ["", f"Profile: {title}", "", "```", text.rstrip(), "```"]
    return "\n".join(out) + "\n"


def as_json(report: Report, elapsed_s: float) -> dict[str, Any]:
    return {
        "machine": report.machine,
        "settings": report.settings,
        "elapsed_s": elapsed_s,
        "rows": [
            {
                "part": line.part,
                "measure": line.measure,
                "unit": line.unit,
                **summary(line.values),
                "target": line.target,
                "result": line.verdict,
            }
            for line in report.lines
        ],
        "notes": report.notes,
        "profiles": report.profiles,
        "parts": report.raw,
    }


# -- main ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few, short runs: a try-out")
    parser.add_argument("--profile", action="store_true", help="profile even if all targets met")
    parser.add_argument(
        "--parts", default="1,2,3,4,5,6", help="comma-separated parts to run (default: all)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where to write results")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    settings = QUICK if args.quick else FULL
    started = time.monotonic()
    say(f"make bench{' --quick' if args.quick else ''}: starting a throwaway PostgreSQL")
    with tempfile.TemporaryDirectory(prefix="otelpg-bench-") as tmp_name, DevCluster() as cluster:
        tmp = Path(tmp_name)
        dsn = cluster.create_database("bench")
        migrate(dsn)
        # Nothing listens there: connections are refused at once, as with a stopped server.
        closed = f"postgresql://postgres@127.0.0.1:{free_port()}/bench"
        report = Report(
            machine=machine_info(dsn),
            settings={"quick": args.quick, **{p: settings[p] for p in sorted(settings)}},
        )
        load = MachineLoad(postmaster_pid(cluster))
        other: dict[str, float] = {}
        steps: list[tuple[str, Callable[[], None]]] = [
            ("1", lambda: part_hot_path(report, settings["hotpath"], dsn, closed, tmp)),
            ("2", lambda: part_exporter_cpu(report, settings["cpu"], dsn, tmp)),
            ("3", lambda: part_throughput(report, settings["throughput"], dsn, tmp)),
            ("4", lambda: part_end_to_end(report, settings["e2e"], dsn, closed, tmp)),
            ("5", lambda: part_growth(report, settings["growth"], dsn, tmp)),
            ("6", lambda: part_tight_loop(report, settings["tight"], dsn, tmp)),
        ]
        for part, step in steps:
            if part in parts:
                load.other_share()
                step()
                other[part] = load.other_share()
        profiles(report, settings, dsn, closed, tmp, args.profile)
        if "4" in parts and (args.profile or report.missed("4")):
            gil_profiles(report, settings, dsn, closed, tmp)
        report.notes.append(
            "Other processes on this machine used "
            + ", ".join(f"{share:.0%} during part {part}" for part, share in other.items())
            + " of all cores (beyond this benchmark and its PostgreSQL): figures taken while "
            "this is above a few per cent are noisier"
        )
    elapsed = time.monotonic() - started
    text = markdown(report, elapsed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(text, encoding="utf-8")
    (args.out / "bench.json").write_text(
        json.dumps(as_json(report, elapsed), indent=2) + "\n", encoding="utf-8"
    )
    print(text)
    say(f"Wrote {args.out / 'bench.md'} and {args.out / 'bench.json'} in {elapsed:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
