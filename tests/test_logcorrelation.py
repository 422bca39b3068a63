"""Log correlation in-process: records carry the current span's ids, and install is reversible."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, Tracer

from otel_pg_exporter.integrations import logcorrelation


class KeepRecords(logging.Handler):
    """Collects every record it handles."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tracer() -> Tracer:
    """A tracer of a private SDK provider: the global provider stays untouched."""
    return TracerProvider().get_tracer("tests.test_logcorrelation")


@pytest.fixture
def correlated() -> Iterator[None]:
    """Log correlation installed for one test, then removed again."""
    logcorrelation.install()
    yield
    logcorrelation.uninstall()


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, KeepRecords]]:
    """A private logger at DEBUG with a record-keeping handler."""
    log = logging.getLogger("tests.test_logcorrelation")
    keep = KeepRecords()
    log.addHandler(keep)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, keep
    log.removeHandler(keep)


def fields(record: logging.LogRecord, *names: str) -> tuple[Any, ...]:
    """The values of attributes that log correlation (or ``extra``) added to ``record``."""
    return tuple(record.__dict__[name] for name in names)


def hex_ids(span: Span) -> tuple[str, str]:
    """The span's W3C ids as stored in trace_spans."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@pytest.mark.usefixtures("correlated")
def test_records_inside_a_span_carry_its_ids(
    tracer: Tracer, logger: tuple[logging.Logger, KeepRecords]
) -> None:
    """A record made inside a span holds that span's trace id and span id in hex."""
    log, keep = logger
    with tracer.start_as_current_span("outer"), tracer.start_as_current_span("inner") as inner:
        log.info("inside")
        expected = hex_ids(inner)
    record = keep.records[0]
    assert expected == fields(record, "trace_id", "span_id")


@pytest.mark.usefixtures("correlated")
def test_records_outside_a_span_have_empty_ids(logger: tuple[logging.Logger, KeepRecords]) -> None:
    """Outside any span both fields exist and are empty strings."""
    log, keep = logger
    log.warning("outside")
    record = keep.records[0]
    assert ("", "") == fields(record, "trace_id", "span_id")


@pytest.mark.usefixtures("correlated")
def test_fields_work_in_a_format_string(tracer: Tracer) -> None:
    """``%(trace_id)s %(span_id)s`` formats inside and outside a span without error."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(trace_id)s %(span_id)s %(message)s"))
    log = logging.getLogger("tests.test_logcorrelation.format")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        log.info("before")
        with tracer.start_as_current_span("work") as span:
            log.info("during")
            trace_id, span_id = hex_ids(span)
    finally:
        log.removeHandler(handler)
    assert ["  before", f"{trace_id} {span_id} during"] == stream.getvalue().splitlines()


@pytest.mark.usefixtures("correlated")
def test_explicit_extra_ids_are_kept(
    tracer: Tracer, logger: tuple[logging.Logger, KeepRecords]
) -> None:
    """``extra={"trace_id": ...}`` does not raise and its value wins; the other field stays."""
    log, keep = logger
    log.info("outside", extra={"trace_id": "abc"})
    with tracer.start_as_current_span("work") as span:
        log.info("inside", extra={"trace_id": "abc", "user": "ann"})
        log.info("inside", extra={"span_id": "def"})
        trace_id, span_id = hex_ids(span)
    outside, inside, only_span = keep.records
    assert ("abc", "") == fields(outside, "trace_id", "span_id")
    assert ("abc", span_id, "ann") == fields(inside, "trace_id", "span_id", "user")
    assert (trace_id, "def") == fields(only_span, "trace_id", "span_id")


@pytest.mark.usefixtures("correlated")
def test_other_reserved_extra_keys_still_raise(logger: tuple[logging.Logger, KeepRecords]) -> None:
    """Only our two fields are let through: ``extra={"message": ...}`` still raises KeyError."""
    log, _ = logger
    with pytest.raises(KeyError, match="message"):
        log.info("x", extra={"message": "clash"})  # noqa: G101 - the clash is the point


def test_install_twice_then_uninstall_restores_logging() -> None:
    """install() is idempotent and uninstall() restores the original factory and makeRecord."""
    factory = logging.getLogRecordFactory()
    make_record = logging.Logger.makeRecord
    logcorrelation.install()
    logcorrelation.install()
    assert factory is not logging.getLogRecordFactory()
    logcorrelation.uninstall()
    assert factory is logging.getLogRecordFactory()
    assert make_record is logging.Logger.makeRecord
    logcorrelation.uninstall()
    assert factory is logging.getLogRecordFactory()
    assert make_record is logging.Logger.makeRecord


def test_after_uninstall_records_have_no_ids(logger: tuple[logging.Logger, KeepRecords]) -> None:
    """Once uninstalled, new records no longer get the fields."""
    log, keep = logger
    logcorrelation.install()
    logcorrelation.uninstall()
    log.info("plain")
    assert not hasattr(keep.records[0], "trace_id")


def test_a_factory_installed_earlier_still_runs(
    tracer: Tracer, logger: tuple[logging.Logger, KeepRecords]
) -> None:
    """A record factory set before install() keeps running underneath log correlation."""
    log, keep = logger
    original = logging.getLogRecordFactory()

    def tagging_factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = original(*args, **kwargs)
        record.tagged = True
        return record

    logging.setLogRecordFactory(tagging_factory)
    try:
        logcorrelation.install()
        with tracer.start_as_current_span("work") as span:
            log.info("x")
            trace_id, _ = hex_ids(span)
        logcorrelation.uninstall()
        assert tagging_factory is logging.getLogRecordFactory()
    finally:
        logging.setLogRecordFactory(original)
    record = keep.records[0]
    assert (True, trace_id) == fields(record, "tagged", "trace_id")
