"""A plain job runner: one configure() call, then jobs traced step by step.

    ENABLE_DB_TRACING=true OTEL_EXPORTER_POSTGRES_DSN=postgresql://... python examples/worker.py 3

Every job is a trace; its spans carry ``execution.id``, which lands in the ``execution_id``
column, so ``SELECT * FROM trace_spans WHERE execution_id = 1001`` shows one execution.
"""

from __future__ import annotations

import logging
import random
import sys
import time

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

import otel_pg_exporter

log = logging.getLogger("examples.worker")


def run_job(tracer: trace.Tracer, execution_id: int, *, fail: bool) -> None:
    """One job: load, infer, save; a failing job records its exception and error status."""
    with tracer.start_as_current_span(
        "job.execute", attributes={"execution.id": execution_id, "job.kind": "inference"}
    ) as job:
        for step in ("load_inputs", "infer", "save_outputs"):
            with tracer.start_as_current_span(
                f"job.{step}", attributes={"execution.id": execution_id}
            ) as span:
                time.sleep(random.uniform(0.001, 0.004))  # noqa: S311 - simulated work
                if fail and step == "infer":
                    error = TimeoutError(f"model did not answer for execution {execution_id}")
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                    job.set_status(Status(StatusCode.ERROR, "step infer failed"))
                    log.error("execution %s failed: %s", execution_id, error)
                    return
                log.info("execution %s: %s done", execution_id, step)


def main(argv: list[str]) -> int:
    jobs = int(argv[1]) if len(argv) > 1 else 3
    handle = otel_pg_exporter.configure(service_name="example-worker")
    logging.basicConfig(
        level=logging.INFO,
        format="%(levelname)s trace_id=%(trace_id)s span_id=%(span_id)s %(message)s",
    )
    tracer = trace.get_tracer("examples.worker", "1.0")
    for number in range(jobs):
        run_job(tracer, 1001 + number, fail=number == jobs - 1)
    handle.force_flush()
    print(handle.stats())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
