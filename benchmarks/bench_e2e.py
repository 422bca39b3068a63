"""Part 4: the example ASGI app under uvicorn (one worker), tracing off, on with the database
up (the exporter's compiled fast path on, and off through ``OTEL_EXPORTER_POSTGRES_FAST_PATH``
=false), on with the database down, and traced by the bare SDK for reference; this process is
the load generator.

The servers run side by side and are loaded one at a time, in a rotating order, so that run i
of each mode sees the same machine. The generator is asyncio with raw HTTP/1.1 on
keep-alive connections (one per concurrent client), which costs a few microseconds per
request. Each run: N requests to ``GET /jobs/{n}`` (a job span and three step spans under the
server span), concurrency C; throughput over the run's wall time, p50/p99 per request, and
the server process's CPU per request. With ``spy`` (a py-spy path), one more run per server
under ``py-spy record --gil`` says which thread holds the GIL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import psycopg

from benchmarks.bench_common import (
    FAST_PATH_ENV,
    ROOT,
    child_env,
    free_port,
    part_main,
    percentile,
)

# off: ENABLE_DB_TRACING unset (configure() sets nothing up); sdk: the bare SDK with a
# do-nothing exporter (what any tracing costs); up / down: configure() with the database up /
# with the DSN on a closed port; up_nofast: up with the compiled fast path switched off.
MODES = ("off", "sdk", "up", "up_nofast", "down")
# The execution examples/asgi_app.py fails on purpose (for the demo): the load skips it, else
# the request that hits it gets a 500 and its connection is dropped, which ends the load.
FAILING_EXECUTION = 404


def _stat_cpu(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (NaN where there is none)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Server:
    """One ``uvicorn`` process serving the example app (one worker)."""

    def __init__(self, mode: str, app: str, env: dict[str, str], log_path: Path) -> None:
        self.mode = mode
        self.port = free_port()
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("wb")
        command = [
            str(Path(sys.executable).parent / "uvicorn"),
            app,
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--workers", "1", "--no-access-log", "--log-level", "critical"),
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self._log
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as answer:  # noqa: S310 - our own loopback server
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"uvicorn ({self.mode}) did not start: {self.log_path.read_text()[-2000:]}"
                )
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process so far (Linux /proc)."""
        return _stat_cpu(Path(f"/proc/{self.process.pid}/stat"))

    def main_thread_cpu_seconds(self) -> float:
        """The same for the event loop's thread alone (its task id is the process id), so
        that the rest is the CPU of the other threads: the SDK's export thread and the
        exporter's sender and replay threads."""
        pid = self.process.pid
        return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn shuts down and the app flushes
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


async def load(port: int, requests: int, concurrency: int, first: int) -> dict[str, Any]:
    """``requests`` GETs over ``concurrency`` keep-alive connections; latencies in seconds."""
    latencies: list[float] = []
    failures = 0
    next_number = first
    end = first + requests

    async def client() -> None:
        nonlocal next_number, failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while next_number < end:
                number = next_number
                next_number += 1
                execution = number + (number >= FAILING_EXECUTION)  # every one but 404
                request = b"GET /jobs/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % execution
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests_per_s": requests / wall,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "failures": failures,
        "wall_s": wall,
    }


def spy_on(spy: str, server: Server, load_run: dict[str, Any], out: Path) -> dict[str, Any]:
    """Sample which thread holds the GIL (py-spy record --gil) during one load run."""
    command = [
        *(spy, "record", "--gil", "--threads", "--function", "--format", "raw", "--rate", "500"),
        *("--pid", str(server.process.pid), "--output", str(out)),
    ]
    with out.with_suffix(".log").open("wb") as log:
        recorder = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attached and sampling
        outcome = asyncio.run(load(server.port, **load_run))
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()
    outcome["gil"] = gil_summary(out)
    if not outcome["gil"]["samples"]:
        outcome["gil"]["error"] = out.with_suffix(".log").read_text(errors="replace")[-500:]
    return outcome


def gil_summary(raw: Path, top: int = 12) -> dict[str, Any]:
    """Share of GIL samples per thread, and the functions each thread holds it in."""
    threads: dict[str, int] = {}
    own: dict[str, dict[str, int]] = {}
    inclusive: dict[str, dict[str, int]] = {}
    total = 0
    try:
        text = raw.read_text(errors="replace")
    except OSError:
        return {"samples": 0, "threads": {}, "own": {}, "inclusive": {}}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if ": " in frames[0] else "unnamed thread"
        total += count
        threads[thread] = threads.get(thread, 0) + count
        leaf = own.setdefault(thread, {})
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + count
        seen = inclusive.setdefault(thread, {})
        for frame in set(frames[1:]):
            seen[frame] = seen.get(frame, 0) + count

    def shares(counts: dict[str, int]) -> dict[str, float]:
        best = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return {name: count / total for name, count in best} if total else {}

    return {
        "samples": total,
        "threads": shares(threads),
        "own": {thread: shares(counts) for thread, counts in own.items()},
        "inclusive": {thread: shares(counts) for thread, counts in inclusive.items()},
    }


def count_spans(dsn: str, service: str) -> int:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT count(*) FROM trace_spans WHERE service = %s", (service,)
        ).fetchone()
        return int(found[0]) if found else 0


def run(config: dict[str, Any]) -> dict[str, Any]:
    tmp = Path(config["tmp"])
    modes = tuple(config.get("modes", MODES))
    servers: dict[str, Server] = {}
    for mode in modes:
        extra = {
            "OTEL_SERVICE_NAME": f"bench-e2e-{mode}",
            "OTEL_EXPORTER_POSTGRES_SPOOL_DIR": str(tmp / f"spool-{mode}"),
        }
        app = "examples.asgi_app:app"
        if mode == "sdk":
            app = "benchmarks.bench_sdk_app:app"
        else:
            extra["EXAMPLE_CONFIGURE"] = "1"
        if mode in ("up", "up_nofast", "down"):
            extra["ENABLE_DB_TRACING"] = "true"
            extra["OTEL_EXPORTER_POSTGRES_DSN"] = (
                config["closed_dsn"] if mode == "down" else config["dsn"]
            )
            extra[FAST_PATH_ENV] = "false" if mode == "up_nofast" else "true"
        servers[mode] = Server(mode, app, child_env(**extra), tmp / f"uvicorn-{mode}.log")
    requests, concurrency = config["requests"], config["concurrency"]
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    spied: dict[str, dict[str, Any]] = {}
    sent = 0
    try:
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():  # imports, pool connection, code paths
            asyncio.run(load(server.port, config["warmup_requests"], concurrency, sent))
            sent += config["warmup_requests"]
        time.sleep(config["pause_s"])
        for run_number in range(config["runs"]):
            shift = run_number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                server = servers[mode]
                cpu_before = server.cpu_seconds()
                main_before = server.main_thread_cpu_seconds()
                outcome = asyncio.run(load(server.port, requests, concurrency, sent))
                outcome["server_cpu_ms_per_request"] = (
                    (server.cpu_seconds() - cpu_before) / requests * 1000
                )
                outcome["main_thread_cpu_ms_per_request"] = (
                    (server.main_thread_cpu_seconds() - main_before) / requests * 1000
                )
                sent += requests
                results[mode].append(outcome)
                time.sleep(config["pause_s"])  # let this server's exporter finish its batch
        for mode in modes if config.get("spy") else ():
            load_run = {"requests": requests, "concurrency": concurrency, "first": sent}
            spied[mode] = spy_on(config["spy"], servers[mode], load_run, tmp / f"spy-{mode}.txt")
            sent += requests
    finally:
        for server in servers.values():
            server.stop()
    logs = {mode: server.log_path.read_text(errors="replace") for mode, server in servers.items()}
    requests_up = config["warmup_requests"] + config["runs"] * requests
    return {
        "requests_per_run": requests,
        "concurrency": concurrency,
        "runs": results,
        "spied": spied,
        "spans_stored_up": count_spans(config["dsn"], "bench-e2e-up"),
        "spans_stored_up_nofast": count_spans(config["dsn"], "bench-e2e-up_nofast"),
        "requests_up": requests_up,
        "queue_full_warnings": {mode: text.count("Queue full") for mode, text in logs.items()},
        "exporter_warnings": {
            mode: text.count("WARNING otel_pg_exporter") for mode, text in logs.items()
        },
    }


if __name__ == "__main__":
    part_main(run)
