"""The instrumented app of ``make reliability``, run in a process of its own so that its RSS is
the app's plus the exporter's.

``benchmarks/reliability.py`` starts it as ``python reliability_app.py CONFIG_JSON``; it is not
meant to be run by hand. It speaks JSON lines: events on stdout, commands on stdin.

1. ``configure(enabled=True, dsn=..., timeout=...)`` (the spool folder and its size come from
   ``OTEL_EXPORTER_POSTGRES_SPOOL_DIR`` / ``_SPOOL_MAX_MB``, set by the parent).
2. Produce spans at a paced rate: every 10 ms tick, a fixed number of "requests", each a server
   span with four child spans and about five attributes; every span carries a unique integer
   ``seq`` attribute, so the parent can count what reached the table, span by span.
   Prints ``warm`` once the warm-up is over, ``load_done`` at the end of the load.
3. Flush, then print ``stats`` (the exporter's counters) every 0.5 s until the parent sends
   ``report`` with the time windows it wants latencies for; print ``report`` and exit after a
   clean ``Handle.shutdown()``.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import otel_pg_exporter

TICK_S = 0.01
SPANS_PER_REQUEST = 5  # the server span and its four children
CHILD_STEPS = ("auth.check", "db.query", "template.render", "cache.set")
RSS_SAMPLE_S = 0.5
STATS_INTERVAL_S = 0.5


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout for the parent."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def read_status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), 0 where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


TIMELINE_COUNTERS = (
    "spans_exported",
    "spans_spooled",
    "spans_replayed",
    "spans_dropped_queue_full",
    "spans_dropped_spool_full",
)


class RssSampler:
    """Samples VmRSS and the exporter's counters every 0.5 s; ``mark_baseline`` starts
    counting RSS growth from now."""

    def __init__(self) -> None:
        self.samples: list[list[float]] = []
        self.counters: Callable[[], dict[str, Any]] | None = None
        self.baseline_kb = 0
        self.peak_after_baseline_kb = 0
        self._baseline_set = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def mark_baseline(self) -> None:
        self.baseline_kb = read_status_kb("VmRSS")
        self.peak_after_baseline_kb = self.baseline_kb
        self._baseline_set = True

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            rss = read_status_kb("VmRSS")
            sample = [round(time.monotonic(), 2), rss]
            if self.counters is not None:
                counters = self.counters()
                sample += [int(counters.get(name, 0)) for name in TIMELINE_COUNTERS]
            self.samples.append(sample)
            if self._baseline_set:
                self.peak_after_baseline_kb = max(self.peak_after_baseline_kb, rss)


@dataclass
class Load:
    """The paced loop and what it measured."""

    requests_per_tick: int
    started: array[float]
    durations: array[float]
    count: int = 0
    errors: int = 0
    first_error: str = ""
    max_lag_s: float = 0.0

    @classmethod
    def for_rate(cls, spans_per_s: int, seconds: float) -> Load:
        per_tick = max(1, round(spans_per_s * TICK_S / SPANS_PER_REQUEST))
        capacity = int(per_tick * (seconds / TICK_S + 10))
        # Preallocated, so recording latencies adds nothing to the RSS growth measured.
        return cls(per_tick, array("d", bytes(8 * capacity)), array("d", bytes(8 * capacity)))

    @property
    def spans(self) -> int:
        return self.count * SPANS_PER_REQUEST

    def run(self, tracer: trace.Tracer, until: float) -> None:
        """Requests on a fixed 10 ms schedule until ``until`` (monotonic); a late tick runs
        at once, so the rate holds even when a tick overruns."""
        next_tick = time.monotonic()
        while next_tick < until:
            now = time.monotonic()
            if now < next_tick:
                time.sleep(next_tick - now)
            else:
                self.max_lag_s = max(self.max_lag_s, now - next_tick)
            for _ in range(self.requests_per_tick):
                self._request(tracer)
            next_tick += TICK_S

    def _request(self, tracer: trace.Tracer) -> None:
        index = self.count
        seq = index * SPANS_PER_REQUEST
        started_at = time.monotonic()
        started = time.perf_counter()
        try:
            with tracer.start_as_current_span(
                "GET /orders/{order_id}",
                kind=SpanKind.SERVER,
                attributes={
                    "seq": seq,
                    "http.request.method": "GET",
                    "http.route": "/orders/{order_id}",
                    "http.response.status_code": 200,
                    "order.id": index,
                },
            ):
                for offset, step in enumerate(CHILD_STEPS, start=1):
                    with tracer.start_as_current_span(
                        step,
                        attributes={
                            "seq": seq + offset,
                            "step.index": offset,
                            "step.name": step,
                            "order.id": index,
                            "cache.hit": offset % 2 == 0,
                        },
                    ):
                        pass
        except Exception as exc:  # an app error is what this benchmark counts
            self.errors += 1
            if not self.first_error:
                self.first_error = repr(exc)
        if index < len(self.durations):
            self.started[index] = started_at
            self.durations[index] = time.perf_counter() - started
        self.count += 1

    def latency_ms(self, start: float, end: float) -> dict[str, float | int]:
        """p50, p99 and max of the requests that started in [start, end) (monotonic)."""
        recorded = min(self.count, len(self.durations))
        values = sorted(
            self.durations[i] * 1000 for i in range(recorded) if start <= self.started[i] < end
        )
        if not values:
            return {"requests": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
        return {
            "requests": len(values),
            "p50": _percentile(values, 0.50),
            "p99": _percentile(values, 0.99),
            "max": values[-1],
        }


def _percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _cpu_s() -> float:
    """CPU seconds (user + system) this process used so far, all threads."""
    times = os.times()
    return times.user + times.system


def read_commands() -> queue.Queue[dict[str, Any]]:
    commands: queue.Queue[dict[str, Any]] = queue.Queue()

    def run() -> None:
        for line in sys.stdin:
            if line.strip():
                commands.put(json.loads(line))
        commands.put({"command": "eof"})

    threading.Thread(target=run, name="commands", daemon=True).start()
    return commands


def main(config: dict[str, Any]) -> int:
    warmup_s = float(config["warmup_s"])
    load_s = float(config["load_s"])
    rate = int(config["spans_per_s"])
    load = Load.for_rate(rate, warmup_s + load_s)
    sampler = RssSampler()
    sampler.start()
    commands = read_commands()

    handle = otel_pg_exporter.configure(
        enabled=True,
        dsn=config["dsn"],
        timeout=float(config["timeout_s"]),
        service_name="reliability-app",
        log_correlation=False,
    )
    exporter = handle.exporter
    if exporter is None or handle.provider is None:
        emit("fatal", message="configure() set up no exporter")
        return 1
    tracer = handle.provider.get_tracer("benchmarks.reliability")
    sampler.counters = handle.stats
    # Which queue the numbers were measured with (configure()'s default has changed before).
    queue_size = getattr(getattr(handle.processor, "_queue", None), "maxlen", None)
    emit("configured", exporter=repr(exporter), max_queue_size=queue_size)

    load_started = time.monotonic()
    load.run(tracer, load_started + warmup_s)
    sampler.mark_baseline()
    cpu_at_warm = _cpu_s()
    emit("warm", t=time.monotonic(), produced=load.spans, rss_kb=sampler.baseline_kb)
    load.run(tracer, load_started + warmup_s + load_s)
    load_ended = time.monotonic()
    load_cpu_s = _cpu_s() - cpu_at_warm
    emit(
        "load_done",
        t=load_ended,
        produced=load.spans,
        rate=load.spans / (load_ended - load_started),
        max_lag_s=load.max_lag_s,
    )

    flush_started = time.monotonic()
    flushed = handle.force_flush(timeout=60)
    flush_s = time.monotonic() - flush_started
    while True:
        emit("stats", stats=handle.stats(), t=time.monotonic())
        try:
            command = commands.get(timeout=STATS_INTERVAL_S)
        except queue.Empty:
            continue
        break

    windows = {
        name: load.latency_ms(float(start), float(end))
        for name, (start, end) in command.get("windows", {}).items()
    }
    windows["all"] = load.latency_ms(load_started + warmup_s, load_ended)
    sampler.stop()
    stats = handle.stats()
    shutdown_started = time.monotonic()
    handle.shutdown(timeout=30)
    shutdown_s = time.monotonic() - shutdown_started
    emit(
        "report",
        produced=load.spans,
        requests=load.count,
        app_errors=load.errors,
        first_error=load.first_error,
        achieved_spans_per_s=load.spans / (load_ended - load_started),
        max_lag_s=load.max_lag_s,
        latency_ms=windows,
        rss_baseline_kb=sampler.baseline_kb,
        rss_peak_after_baseline_kb=sampler.peak_after_baseline_kb,
        vm_hwm_kb=read_status_kb("VmHWM"),
        load_cpu_s=load_cpu_s,
        max_queue_size=queue_size,
        timeline_columns=["t", "rss_kb", *TIMELINE_COUNTERS],
        timeline=sampler.samples,
        flushed=flushed,
        flush_s=flush_s,
        shutdown_s=shutdown_s,
        stats=stats,
        stats_after_shutdown=handle.stats(),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(json.loads(sys.argv[1])))
