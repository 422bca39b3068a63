"""``make reliability``: the fault scenarios at load, one table of what survived them.

Each scenario runs a fresh instrumented app process (``reliability_app.py``: 5,000 spans/s,
every span numbered by a ``seq`` attribute) against its own database of a throwaway
PostgreSQL (fsync on), injects one fault on a schedule, waits for the disk spool to drain,
then counts in ``trace_spans`` which spans arrived, which are missing and which are doubled.

    python benchmarks/reliability.py            # the full run, 7 to 10 minutes
    python benchmarks/reliability.py --quick    # every phase 5x shorter
    python benchmarks/reliability.py --only outage_30s,table_lock

Writes ``benchmarks/results/reliability.{json,md}`` (and one log per scenario of the app's
stderr under ``benchmarks/results/reliability-logs/``) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import psycopg

from otel_pg_exporter.export.writer import APPLICATION_NAME
from otel_pg_exporter.schema.migrations import migrate
from otel_pg_exporter.testing.devdb import DevCluster

REPO = Path(__file__).resolve().parent.parent
# Run as a script, this folder is on sys.path but the repository root is not.
sys.path.insert(0, str(REPO))
from benchmarks.reliability_machine import CpuSnapshot, cpu_use, wait_until_quiet  # noqa: E402
from benchmarks.reliability_process import AppDied, AppProcess  # noqa: E402
from benchmarks.reliability_report import render_markdown, summarise, targets  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SPANS_PER_S = 5_000
EXPORT_TIMEOUT_S = 2.0
KILL_INTERVAL_S = 2.0
QUICK_FACTOR = 5.0
# Busy cores (of the whole machine) under which it counts as quiet before a scenario starts.
QUIET_CORES = 0.3


class Proxy(Protocol):
    """What the scenarios use of ``tests/tcp_proxy.py``'s TcpProxy."""

    @property
    def port(self) -> int: ...

    def stall(self) -> None: ...

    def resume(self) -> None: ...

    def __enter__(self) -> Proxy: ...

    def __exit__(self, *exc_info: object) -> None: ...


def make_proxy(target_port: int) -> Proxy:
    """A TcpProxy from tests/tcp_proxy.py, loaded by path (tests/ is not a package)."""
    path = REPO / "tests" / "tcp_proxy.py"
    spec = importlib.util.spec_from_file_location("reliability_tcp_proxy", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    proxy: Proxy = module.TcpProxy("127.0.0.1", target_port)
    return proxy


@dataclass(frozen=True)
class Phases:
    """Seconds of each phase: warm-up (RSS baseline taken at its end), load before the fault,
    the fault, load after it; then at most ``drain_timeout_s`` for the spool to drain."""

    warmup_s: float
    before_s: float
    fault_s: float
    after_s: float
    drain_timeout_s: float = 240.0

    @property
    def load_s(self) -> float:
        return self.before_s + self.fault_s + self.after_s

    def shortened(self, factor: float) -> Phases:
        return Phases(
            self.warmup_s / factor,
            self.before_s / factor,
            self.fault_s / factor,
            self.after_s / factor,
            self.drain_timeout_s / 2,
        )


@dataclass
class FaultContext:
    """What a fault may act on; ``db_dsn`` is direct (never through the proxy)."""

    cluster: DevCluster
    db_dsn: str
    dbname: str
    proxy: Proxy | None


FaultFn = Callable[[FaultContext, float], dict[str, Any]]


def no_fault(ctx: FaultContext, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {}


def outage(ctx: FaultContext, seconds: float) -> dict[str, Any]:
    """``pg_ctl stop -m immediate``, then start again on the same port after ``seconds``."""
    started = time.monotonic()
    ctx.cluster.stop("immediate")
    stopped = time.monotonic()
    try:
        time.sleep(max(0.0, started + seconds - time.monotonic()))
    finally:
        ctx.cluster.start()
    return {
        "stop_took_s": round(stopped - started, 2),
        "down_s": round(time.monotonic() - stopped, 2),
    }


def backend_kills(ctx: FaultContext, seconds: float) -> dict[str, Any]:
    """``pg_terminate_backend`` of every exporter connection to the database every 2 s."""
    until = time.monotonic() + seconds
    rounds = killed = 0
    with psycopg.connect(ctx.cluster.dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
                (ctx.dbname, APPLICATION_NAME),
            ).fetchone()
            rounds += 1
            killed += int(row[0]) if row else 0
            remaining = until - time.monotonic()
            if remaining <= KILL_INTERVAL_S:
                time.sleep(max(0.0, remaining))
                break
            time.sleep(KILL_INTERVAL_S)
    return {"kill_rounds": rounds, "backends_terminated": killed}


def table_lock(ctx: FaultContext, seconds: float) -> dict[str, Any]:
    """``LOCK TABLE trace_spans IN ACCESS EXCLUSIVE MODE`` held for ``seconds``."""
    started = time.monotonic()
    with psycopg.connect(ctx.db_dsn) as conn:
        conn.execute("LOCK TABLE trace_spans IN ACCESS EXCLUSIVE MODE")
        locked = time.monotonic()
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        conn.rollback()
    return {
        "lock_wait_s": round(locked - started, 2),
        "held_s": round(time.monotonic() - locked, 2),
    }


def stalled_network(ctx: FaultContext, seconds: float) -> dict[str, Any]:
    """The proxy between the exporter and PostgreSQL forwards nothing for ``seconds``."""
    assert ctx.proxy is not None
    ctx.proxy.stall()
    try:
        time.sleep(seconds)
    finally:
        ctx.proxy.resume()
    return {}


@dataclass(frozen=True)
class Scenario:
    """One fault at load; ``what`` is filled with the fault's seconds (``{s:g}``)."""

    name: str
    what: str
    fault: FaultFn
    phases: Phases
    via_proxy: bool = False
    spool_max_mb: int | None = None

    @property
    def description(self) -> str:
        return self.what.format(s=self.phases.fault_s)


def scenarios(quick: bool) -> list[Scenario]:
    full = [
        Scenario("baseline", "no fault", no_fault, Phases(5, 5, 30, 15)),
        Scenario(
            "outage_30s", "server stopped (immediate) for {s:g} s", outage, Phases(5, 5, 30, 15)
        ),
        Scenario(
            "backend_kills",
            "pg_terminate_backend of the exporter's connections every 2 s for {s:g} s",
            backend_kills,
            Phases(5, 5, 20, 10),
        ),
        Scenario(
            "table_lock",
            "LOCK TABLE ... ACCESS EXCLUSIVE held {s:g} s",
            table_lock,
            Phases(5, 5, 10, 10),
        ),
        Scenario(
            "stalled_network",
            "proxy forwards nothing for {s:g} s",
            stalled_network,
            Phases(5, 5, 10, 15),
            via_proxy=True,
        ),
        Scenario(
            "spool_full",
            "server stopped for {s:g} s, spool of 8 MB",
            outage,
            Phases(5, 5, 30, 10),
            spool_max_mb=8,
        ),
        # The same run as the first: how far p99 moves between two runs without any fault.
        Scenario("baseline_repeat", "no fault (noise reference)", no_fault, Phases(5, 5, 30, 15)),
    ]
    if not quick:
        return full
    shortened = [replace(s, phases=s.phases.shortened(QUICK_FACTOR)) for s in full]
    # The quick outage spools a fifth as much: a fifth of the spool still overflows.
    return [
        replace(s, spool_max_mb=2, what="server stopped for {s:g} s, spool of 2 MB")
        if s.spool_max_mb is not None
        else s
        for s in shortened
    ]


def table_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (metadata ->> 'seq')::bigint),"
            " coalesce(min((metadata ->> 'seq')::bigint), -1),"
            " coalesce(max((metadata ->> 'seq')::bigint), -1),"
            " count(*) FILTER (WHERE metadata ->> 'seq' IS NULL)"
            " FROM trace_spans"
        ).fetchone()
    assert row is not None
    rows, distinct, low, high, unnumbered = (int(value) for value in row)
    return {
        "rows": rows,
        "distinct_seqs": distinct,
        "min_seq": low,
        "max_seq": high,
        "rows_without_seq": unnumbered,
    }


def row_count(dsn: str) -> int | None:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM trace_spans").fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


def spool_drained(stats: dict[str, Any]) -> bool:
    """The spool is empty and every spooled span was replayed or counted as dropped."""
    settled = int(stats.get("spans_replayed", 0)) + int(stats.get("spans_dropped_spool_full", 0))
    return (
        int(stats.get("spool_segments", 0)) == 0
        and int(stats.get("spool_rows", 0)) == 0
        and int(stats.get("spans_spooled", 0)) <= settled
    )


def wait_for_drain(app: AppProcess, dsn: str, timeout_s: float) -> dict[str, Any]:
    """Poll the table and the app's counters until the spool is empty and the row count
    stopped growing (two polls a second apart), or ``timeout_s`` passed."""
    started = time.monotonic()
    previous: int | None = None
    while True:
        app.collect(1.0)
        count = row_count(dsn)
        elapsed = time.monotonic() - started
        if count is not None and count == previous and spool_drained(app.last_stats):
            return {"drained": True, "drain_s": round(elapsed, 1)}
        if elapsed > timeout_s:
            return {"drained": False, "drain_s": round(elapsed, 1)}
        previous = count


def app_environ(spool_dir: str, spool_max_mb: int | None) -> dict[str, str]:
    """This process's environment without tracing settings, plus the spool's."""
    prefixes = ("OTEL_", "ENABLE_DB_TRACING", "DATABASE_URL", "SENTRY_", "PG")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    environ["OTEL_EXPORTER_POSTGRES_SPOOL_DIR"] = spool_dir
    if spool_max_mb is not None:
        environ["OTEL_EXPORTER_POSTGRES_SPOOL_MAX_MB"] = str(spool_max_mb)
    return environ


@contextlib.contextmanager
def optional_proxy(cluster: DevCluster, wanted: bool) -> Iterator[Proxy | None]:
    if not wanted:
        yield None
        return
    with make_proxy(cluster.port) as proxy:
        yield proxy


def run_scenario(
    cluster: DevCluster, scenario: Scenario, logs: Path, *, quiet_wait_s: float
) -> dict[str, Any]:
    phases = scenario.phases
    dbname = f"reliability_{scenario.name}"
    cluster.drop_database(dbname)
    db_dsn = cluster.create_database(dbname)
    migrate(db_dsn)
    spool_dir = tempfile.mkdtemp(prefix="otelpg-spool-")
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "fault": scenario.description,
        "phases": asdict(phases),
        "spool_max_mb": scenario.spool_max_mb,
        # Another job on a shared machine skews latency and throughput: start when it is
        # quiet if it gets quiet, and say how busy it was.
        "busy_cores_at_start": round(
            wait_until_quiet(max_busy_cores=QUIET_CORES, timeout_s=quiet_wait_s), 2
        ),
    }
    try:
        with optional_proxy(cluster, scenario.via_proxy) as proxy:
            app_dsn = db_dsn
            if proxy is not None:
                app_dsn = db_dsn.replace(f":{cluster.port}/", f":{proxy.port}/")
            config = {
                "dsn": app_dsn,
                "spans_per_s": SPANS_PER_S,
                "warmup_s": phases.warmup_s,
                "load_s": phases.load_s,
                "timeout_s": EXPORT_TIMEOUT_S,
            }
            environ = app_environ(spool_dir, scenario.spool_max_mb)
            with AppProcess(config, environ, logs / f"{scenario.name}.log", cwd=REPO) as app:
                warm = app.wait_for("warm", phases.warmup_s + 60)
                cpu_start, harness_start = CpuSnapshot.take(cluster.data_dir), _own_cpu_s()
                fault_start = float(warm["t"]) + phases.before_s
                time.sleep(max(0.0, fault_start - time.monotonic()))
                fault_start = time.monotonic()
                ctx = FaultContext(cluster, db_dsn, dbname, proxy)
                result["fault_notes"] = scenario.fault(ctx, phases.fault_s)
                fault_end = time.monotonic()
                done = app.wait_for("load_done", phases.load_s + 60)
                cpu_end, harness_end = CpuSnapshot.take(cluster.data_dir), _own_cpu_s()
                result["load"] = done
                result["fault_window"] = [fault_start, fault_end]
                result.update(wait_for_drain(app, db_dsn, phases.drain_timeout_s))
                windows = {
                    "before": (float(warm["t"]), fault_start),
                    "fault": (fault_start, fault_end),
                    "after": (fault_end, float(done["t"])),
                }
                app.send({"command": "report", "windows": windows})
                result["app"] = app.wait_for("report", 90)
                result["app_exit_code"] = app.finish(60)
                result["cpu"] = cpu_use(cpu_start, cpu_end, result["app"]["load_cpu_s"])
                result["cpu"]["harness_cores"] = round(
                    (harness_end - harness_start) / (cpu_end.at - cpu_start.at), 2
                )
    except AppDied as exc:
        result["error"] = str(exc)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    if not cluster.is_running():
        cluster.start()
    result["table"] = table_counts(db_dsn)
    cluster.drop_database(dbname)
    return result


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version()").fetchone()
    return str(row[0]).split(" on ")[0] if row else "unknown"


def package_source() -> dict[str, Any]:
    """Where otel_pg_exporter was imported from, and the repository's commit: others may
    change the working tree while a long run goes on (run a snapshot via PYTHONPATH then)."""
    import otel_pg_exporter

    source: dict[str, Any] = {"path": str(Path(otel_pg_exporter.__file__).parent)}
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "otel_pg_exporter"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return source
    source["repository_head"] = head
    source["uncommitted_package_changes"] = bool(changed)
    return source


def machine(cluster: DevCluster) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "package": package_source(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": server_version(cluster.dsn),
        "fsync": cluster.fsync,
        "opentelemetry_sdk": version("opentelemetry-sdk"),
        "psycopg": version("psycopg"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="every phase 5x shorter")
    parser.add_argument("--only", help="comma-separated scenario names (baseline is always run)")
    args = parser.parse_args(argv)

    chosen = scenarios(args.quick)
    if args.only:
        wanted = {"baseline", *(name.strip() for name in args.only.split(","))}
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in wanted]

    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "reliability-logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with DevCluster(fsync=True) as cluster:
        about = machine(cluster)
        print(
            f"{about['cores']} cores, {about['platform']}, Python {about['python']}, "
            f"{about['postgresql']} (fsync on); {SPANS_PER_S:,} spans/s per scenario",
            flush=True,
        )
        for scenario in chosen:
            print(f"running {scenario.name}: {scenario.description} ...", flush=True)
            try:
                result = run_scenario(
                    cluster, scenario, logs, quiet_wait_s=12.0 if args.quick else 60.0
                )
            except Exception as exc:  # one broken scenario must not cost the others
                result = {"scenario": scenario.name, "fault": scenario.description}
                result["error"] = f"{type(exc).__name__}: {exc}"
                if not cluster.is_running():
                    cluster.start()
            results.append(result)
            print(f"  {summarise(result, results[0])}", flush=True)

    report = {
        "machine": about,
        "quick": args.quick,
        "spans_per_s": SPANS_PER_S,
        "export_timeout_s": EXPORT_TIMEOUT_S,
        "elapsed_s": round(time.monotonic() - started, 1),
        "scenarios": results,
        "targets": targets(results),
    }
    markdown = render_markdown(report)
    (RESULTS / "reliability.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "reliability.md").write_text(markdown)
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
