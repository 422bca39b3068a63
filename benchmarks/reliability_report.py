"""Turns the scenario results of ``reliability.py`` into figures, targets and Markdown."""

from __future__ import annotations

from typing import Any

P99_TOLERANCE = 1.05
RSS_GROWTH_LIMIT_MB = 64.0
OUTAGE = "outage_30s"


def derive(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """The figures of one scenario, from the app's report and the table's counts."""
    app = result.get("app", {})
    stats: dict[str, int] = app.get("stats", {})
    table = result.get("table", {})
    produced = int(app.get("produced", 0))
    stored = int(table.get("distinct_seqs", 0))
    dropped = {
        key.removeprefix("spans_dropped_"): int(value)
        for key, value in sorted(stats.items())
        if key.startswith("spans_dropped_") and value
    }
    handed_over = (
        stats.get("spans_exported", 0)
        + stats.get("spans_duplicate", 0)
        + stats.get("spans_failed", 0)
        + dropped.get("rejected", 0)
        + dropped.get("unexpected", 0)
    )
    counted_drops = sum(dropped.values())
    latency = app.get("latency_ms", {})
    base_p99 = float(baseline.get("app", {}).get("latency_ms", {}).get("all", {}).get("p99", 0))
    p99 = float(latency.get("all", {}).get("p99", 0))
    return {
        "produced": produced,
        "stored": stored,
        "lost": produced - stored,
        "duplicates": int(table.get("rows", 0)) - stored,
        "spooled": stats.get("spans_spooled", 0),
        "replayed": stats.get("spans_replayed", 0),
        "dropped": dropped,
        "dropped_total": counted_drops,
        # Spans that never reached export() and were not counted as queue_full either.
        "not_handed_over": produced - handed_over - dropped.get("queue_full", 0),
        # stored + counted drops - produced: 0 when every loss is counted, exactly.
        "accounting_gap": stored + counted_drops - produced,
        "app_errors": int(app.get("app_errors", 0)),
        "p50_ms": float(latency.get("all", {}).get("p50", 0)),
        "p99_ms": p99,
        "p99_by_window_ms": {
            name: float(latency.get(name, {}).get("p99", 0))
            for name in ("before", "fault", "after")
        },
        "baseline_p99_ms": base_p99,
        "p99_ratio": p99 / base_p99 if base_p99 else 0.0,
        "vm_hwm_mb": int(app.get("vm_hwm_kb", 0)) / 1024,
        "rss_growth_mb": (
            int(app.get("rss_peak_after_baseline_kb", 0)) - int(app.get("rss_baseline_kb", 0))
        )
        / 1024,
        "achieved_spans_per_s": float(app.get("achieved_spans_per_s", 0)),
        "export_failures": stats.get("export_failures", 0),
        "export_ms_mean": stats.get("export_time_total_us", 0)
        / max(1, stats.get("export_calls", 0))
        / 1000,
        "export_ms_max": stats.get("export_time_max_us", 0) / 1000,
        "exports_again_after_s": _resumed_after(result, "spans_exported"),
        "replay_started_after_s": _resumed_after(result, "spans_replayed"),
        "cpu": result.get("cpu", {}),
        "duplicates_skipped": stats.get("spans_duplicate", 0),
    }


def _resumed_after(result: dict[str, Any], counter: str) -> float | None:
    """Seconds from the end of the fault to the first 0.5 s sample in which ``counter`` grew
    (None if it never did): how long the exporter took to write to the table again."""
    app = result.get("app", {})
    window = result.get("fault_window")
    columns = app.get("timeline_columns", [])
    if window is None or counter not in columns:
        return None
    index = columns.index(counter)
    fault_end = float(window[1])
    previous: list[float] | None = None
    for sample in app.get("timeline", []):
        if previous is not None and sample[0] > fault_end and sample[index] > previous[index]:
            return max(0.0, float(sample[0]) - fault_end)
        previous = sample
    return None


def summarise(result: dict[str, Any], baseline: dict[str, Any]) -> str:
    """One progress line for the terminal."""
    if "error" in result:
        return f"FAILED: {result['error'].splitlines()[0]}"
    d = derive(result, baseline)
    return (
        f"produced {d['produced']:,}, stored {d['stored']:,}, lost {d['lost']:,}, "
        f"duplicates {d['duplicates']:,}, spooled {d['spooled']:,} -> replayed "
        f"{d['replayed']:,}, dropped {_dropped(d)}, app errors {d['app_errors']}, "
        f"p99 {d['p99_ms']:.2f} ms ({d['p99_ratio']:.2f}x), RSS growth "
        f"{d['rss_growth_mb']:.1f} MB, drained in {result.get('drain_s', '?')} s"
    )


def _dropped(d: dict[str, Any]) -> str:
    parts = [f"{reason} {count:,}" for reason, count in d["dropped"].items()]
    if d["not_handed_over"] > 0:
        parts.append(f"{d['not_handed_over']:,} never exported and uncounted")
    return ", ".join(parts) or "0"


def reference_baseline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The no-fault run that latencies are compared with: of the ``baseline*`` runs, the one
    during which other processes used the least CPU (on a shared machine they inflate p99)."""
    candidates = [
        r for r in results if r.get("scenario", "").startswith("baseline") and "error" not in r
    ]
    if not candidates:
        return results[0] if results else {}
    return min(candidates, key=lambda r: float(r.get("cpu", {}).get("other_cores", 0.0)))


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed with the numbers behind it."""
    if not results:
        return []
    baseline = reference_baseline(results)
    figures = {r["scenario"]: derive(r, baseline) for r in results if "error" not in r}
    failed = [r["scenario"] for r in results if "error" in r]
    checks: list[dict[str, Any]] = []
    errors = {name: d["app_errors"] for name, d in figures.items()}
    checks.append(
        {
            "target": "0 app errors in every scenario",
            "met": not failed and not any(errors.values()),
            "detail": ", ".join(f"{name} {count}" for name, count in errors.items())
            + (f"; scenarios that did not finish: {', '.join(failed)}" if failed else ""),
        }
    )
    outage = figures.get(OUTAGE)
    if outage is not None:
        checks.append(
            {
                "target": "0 lost and 0 duplicated spans through a 30 s outage (spool on)",
                "met": outage["lost"] == 0 and outage["duplicates"] == 0,
                "detail": f"{outage['produced']:,} produced, {outage['stored']:,} stored, "
                f"{outage['lost']:,} lost, {outage['duplicates']:,} duplicated",
            }
        )
        checks.append(
            {
                "target": f"peak RSS growth under {RSS_GROWTH_LIMIT_MB:g} MB through the outage",
                "met": outage["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB,
                "detail": f"{outage['rss_growth_mb']:.1f} MB over the post-warm-up baseline "
                f"(peak RSS {outage['vm_hwm_mb']:.0f} MB)",
            }
        )
    faults = {name: d for name, d in figures.items() if not name.startswith("baseline")}
    if faults:
        worst = max(faults, key=lambda name: faults[name]["p99_ratio"])
        checks.append(
            {
                "target": "app p99 within 5 % of the no-fault run",
                "met": all(d["p99_ratio"] <= P99_TOLERANCE for d in faults.values()),
                "detail": ", ".join(f"{name} {d['p99_ratio']:.2f}x" for name, d in faults.items())
                + f"; worst {worst}"
                + "; the no-fault runs: "
                + ", ".join(
                    f"{name} {d['p99_ms']:.2f} ms with {d['cpu'].get('other_cores', 0):.2f} "
                    "cores used by other processes"
                    for name, d in figures.items()
                    if name.startswith("baseline")
                ),
            }
        )
    spool_full = figures.get("spool_full")
    if spool_full is not None:
        checks.append(
            {
                "target": "spool overflow: dropped counted, stored + dropped == produced",
                "met": spool_full["accounting_gap"] == 0,
                "detail": f"{spool_full['stored']:,} stored + {spool_full['dropped_total']:,} "
                f"dropped = {spool_full['stored'] + spool_full['dropped_total']:,} for "
                f"{spool_full['produced']:,} produced",
            }
        )
    lossy = {name: d for name, d in figures.items() if d["lost"]}
    checks.append(
        {
            "target": "no span lost in any other scenario (the exporter's promise)",
            "met": not [name for name in lossy if name != "spool_full"],
            "detail": "; ".join(
                f"{name} lost {d['lost']:,} (counted: {_dropped(d)})" for name, d in lossy.items()
            )
            or "none lost",
        }
    )
    return checks


def _package(machine: dict[str, Any]) -> str:
    package = machine.get("package", {})
    text = f"from {package.get('path', '?')}"
    if "repository_head" in package:
        text += f", repository at {package['repository_head']}"
        if package.get("uncommitted_package_changes"):
            text += " with uncommitted package changes"
    return text


def _queue_sizes(results: list[dict[str, Any]]) -> str:
    sizes = {r.get("app", {}).get("max_queue_size") for r in results if "app" in r}
    return " / ".join(f"{size:,}" for size in sorted(s for s in sizes if s)) or "?"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def render_markdown(report: dict[str, Any]) -> str:
    results: list[dict[str, Any]] = report["scenarios"]
    machine = report["machine"]
    lines = [
        "## Reliability at load" + (" (--quick)" if report["quick"] else ""),
        "",
        f"{report['spans_per_s']:,} spans/s (1,000 requests/s of 5 spans) for each scenario, "
        f"export timeout {report['export_timeout_s']:g} s, configure()'s batch defaults "
        f"(queue of {_queue_sizes(results)} spans). Machine: "
        f"{machine['cores']} cores, {machine['platform']}, Python {machine['python']}, "
        f"{machine['postgresql']} (fsync on), opentelemetry-sdk {machine['opentelemetry_sdk']}, "
        f"psycopg {machine['psycopg']}, otel_pg_exporter {_package(machine)}. "
        f"Whole run: {report['elapsed_s']:.0f} s. App p99 is "
        f"compared with {reference_baseline(results).get('scenario', '-')}, the no-fault run "
        "during which other processes used the least CPU.",
        "",
        "| scenario | produced | stored | lost | spooled → replayed | dropped | duplicates "
        "| app errors | app p99 ms: run / no-fault | peak RSS MB (growth) |",
        "|---|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    baseline = reference_baseline(results)
    for result in results:
        if "error" in result:
            lines.append(f"| {result['scenario']} | did not finish: see the JSON | | | | | | | | |")
            continue
        d = derive(result, baseline)
        lines.append(
            f"| {result['scenario']} | {d['produced']:,} | {d['stored']:,} | {d['lost']:,} "
            f"| {d['spooled']:,} → {d['replayed']:,} | {_dropped(d)} | {d['duplicates']:,} "
            f"| {d['app_errors']} | {d['p99_ms']:.2f} / {d['baseline_p99_ms']:.2f} "
            f"({d['p99_ratio']:.2f}x) | {d['vm_hwm_mb']:.0f} ({d['rss_growth_mb']:+.1f}) |"
        )
    lines += [
        "",
        "| scenario | fault | p50 ms | p99 ms before / during / after the fault "
        "| export ms mean / max | exports stored again after | replay started after "
        "| spool drained in | CPU cores: app / PostgreSQL / other processes |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for result in results:
        if "error" in result:
            continue
        d = derive(result, baseline)
        window = d["p99_by_window_ms"]
        notes = ", ".join(f"{k} {v}" for k, v in result.get("fault_notes", {}).items())
        drained = f"{result.get('drain_s', '?')} s" + ("" if result.get("drained") else " (NOT)")
        cpu = d["cpu"]
        faulty = not result["scenario"].startswith("baseline")
        lines.append(
            f"| {result['scenario']} | {result['fault']}"
            + (f" ({notes})" if notes else "")
            + f" | {d['p50_ms']:.2f} | {window['before']:.2f} / {window['fault']:.2f} / "
            f"{window['after']:.2f} | {d['export_ms_mean']:.0f} / {d['export_ms_max']:.0f} "
            f"| {_seconds(d['exports_again_after_s']) if faulty else '-'} "
            f"| {_seconds(d['replay_started_after_s']) if d['spooled'] else '-'} | {drained} "
            f"| {cpu.get('app_cores', 0):.2f} / {cpu.get('postgres_cores', 0):.2f} / "
            f"{cpu.get('other_cores', 0):.2f} |"
        )
    lines += ["", "Targets:", ""]
    for check in report["targets"]:
        verdict = "met" if check["met"] else "MISSED"
        lines.append(f"- {verdict}: {check['target']} ({check['detail']})")
    return "\n".join(lines) + "\n"
