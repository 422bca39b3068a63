"""A local stand-in for Sentry's ingest API on 127.0.0.1, for the real sentry-sdk to talk to.

It accepts envelopes (error events) and OTLP/HTTP trace exports, as Sentry does at
``/api/<project>/envelope/`` and ``/api/<project>/integration/otlp/v1/traces/``, and keeps
what arrived. Nothing leaves the machine.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from support import wait_until


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # type: ignore[import-not-found]  # only when sentry-sdk picks brotli

        data: bytes = brotli.decompress(body)
        return data
    return body


def parse_envelope(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The items of a Sentry envelope: (item header, payload) pairs."""
    cursor = data.index(b"\n") + 1 if b"\n" in data else len(data)  # skip the envelope header
    items: list[tuple[dict[str, Any], bytes]] = []
    while cursor < len(data):
        end = data.find(b"\n", cursor)
        end = len(data) if end < 0 else end
        line = data[cursor:end]
        cursor = end + 1
        if not line.strip():
            continue
        header = json.loads(line)
        length = header.get("length")
        if length is None:
            end = data.find(b"\n", cursor)
            end = len(data) if end < 0 else end
            payload, cursor = data[cursor:end], end + 1
        else:
            payload, cursor = data[cursor : cursor + length], cursor + length + 1
        items.append((header, payload))
    return items


class SentryReceiver:
    """Collects error events, transactions and OTLP spans sent by sentry-sdk and its OTLP
    exporter."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.transactions: list[dict[str, Any]] = []
        self.spans: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []  # every request body as received, decompressed
        self.requests = 0
        self._lock = threading.Lock()
        self._refuse = refuse
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = _decompress(
                    self.rfile.read(length), self.headers.get("Content-Encoding", "")
                )
                receiver._record(self.path, body)
                if receiver._refuse:
                    self.send_response(503)
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def _record(self, path: str, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            if path.rstrip("/").endswith("/envelope"):
                for header, payload in parse_envelope(body):
                    if header.get("type") == "event":
                        self.events.append(json.loads(payload))
                    elif header.get("type") == "transaction":
                        self.transactions.append(json.loads(payload))
            elif "otlp/v1/traces" in path:
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            self.spans.append(
                                {
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "name": span.name,
                                    "attributes": {
                                        a.key: a.value.string_value for a in span.attributes
                                    },
                                }
                            )

    def wait_for(
        self, predicate: Callable[[SentryReceiver], object], timeout_s: float = 10.0
    ) -> bool:
        """Poll until ``predicate(self)`` holds; False if it still does not after ``timeout_s``.

        A bool, not a failure, on purpose: callers assert it with the traced process's output
        as the message, or (the example app's fixture, waiting for a report that may come only
        at shutdown) wait again later and let the test's own asserts on what arrived tell.
        """

        def holds() -> bool:
            with self._lock:
                return bool(predicate(self))

        try:
            wait_until(holds, timeout_s)
        except AssertionError:
            return False
        return True

    def __enter__(self) -> SentryReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
