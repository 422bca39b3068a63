"""Pure mapping of OpenTelemetry spans to ``trace_spans`` rows; knows nothing of psycopg.

The common span takes the fast path: a handful of attribute lookups and one C-level JSON
encoding per jsonb column. Only when a check on the encoded text shows something PostgreSQL
would reject (NUL, lone surrogates, NaN or infinities, values past the size caps, values JSON
cannot encode) does the span go through ``_Cleaner``, which rewrites just those values, so
bad input is stored sanitised instead of dropping its batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from otel_pg_exporter.export.late_attributes import LateAttributes
from otel_pg_exporter.export.scrubbing import Scrubber
from otel_pg_exporter.schema.table import Row
from otel_pg_exporter.settings import (
    DEFAULT_EXECUTION_ID_ATTRIBUTE,
    DEFAULT_MAX_SPAN_CHARS,
    DEFAULT_MAX_VALUE_CHARS,
)

REPLACEMENT_CHAR = "\ufffd"
UNKNOWN_SERVICE = "unknown_service"
_BIGINT_MIN = -(2**63)
_BIGINT_MAX = 2**63 - 1
# Below Python's 4300-digit limit for int-to-decimal conversion (sys.int_info).
_JSON_INT_MAX_BITS = 14_000
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}

# Keyed by id(): enum members are singletons, and hashing an Enum is a Python-level call.
_KIND_NAMES = {id(kind): kind.name.lower() for kind in SpanKind}
_STATUS_NAMES = {id(code): code.name.lower() for code in StatusCode}


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _make_json_encoder() -> Callable[[Any], str]:
    # json.JSONEncoder.encode builds a new C encoder on every call; building it once halves
    # the cost of encoding a small attribute dict, the largest item on the export path.
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - interpreters without the C accelerator
        return json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
        ).encode
    chunks = c_make_encoder(
        None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(chunks(value, 0))

    return encode


_encode_json = _make_json_encoder()


def truncation_marker(dropped: int) -> str:
    """The visible suffix of a value cut by a size cap."""
    return f"…[truncated {dropped} chars]"


def _strftime_time(time_ns: int) -> str:
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


# "YYYY-MM-DDTHH:MM:" by minute since the epoch: events of one batch share a few minutes.
_MINUTES: dict[int, str] = {}
_MINUTES_CACHED = 1024


def iso_time(time_ns: int) -> str:
    """RFC 3339 UTC time with all nine fractional digits, so event times lose nothing.

    The text up to the minute comes from ``strftime`` once per minute; the seconds and the
    fraction are formatted here, which costs a fifth of a ``datetime`` per event. Anything but
    an int64 (what the SDK makes) takes ``strftime`` as a whole, errors included.
    """
    if type(time_ns) is not int or not _BIGINT_MIN <= time_ns <= _BIGINT_MAX:
        return _strftime_time(time_ns)
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    minute, second = divmod(seconds, 60)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        stamp = datetime.fromtimestamp(minute * 60, timezone.utc)
        prefix = stamp.strftime("%Y-%m-%dT%H:%M:")
        if len(_MINUTES) >= _MINUTES_CACHED:
            _MINUTES.clear()
        _MINUTES[minute] = prefix
    return "%s%02d.%09dZ" % (prefix, second, nanos)  # noqa: UP031


def _is_clean_text(text: str) -> bool:
    """True when PostgreSQL text and jsonb accept ``text`` as it is."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_clean_json(encoded: str, limit: int) -> bool:
    # json escapes NUL as \u0000, which jsonb refuses; a literal backslash followed by
    # "u0000" also matches and merely takes the (correct) slow path.
    return len(encoded) <= limit and "\\u0000" not in encoded and _is_clean_text(encoded)


def clean_text(text: str) -> str:
    """Replace NUL and lone surrogates with U+FFFD; keep valid surrogate pairs as one char."""
    if _is_clean_text(text):
        return text
    text = text.replace("\x00", REPLACEMENT_CHAR)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


class _Cleaner:
    """Rewrites one span's values into what JSON and PostgreSQL accept, within its budget."""

    __slots__ = ("budget", "max_value_chars")

    def __init__(self, max_value_chars: int, budget: int) -> None:
        self.max_value_chars = max_value_chars
        self.budget = budget

    def text(self, value: str) -> str:
        value = clean_text(value)
        allowed = max(0, min(self.max_value_chars, self.budget))
        if len(value) > allowed:
            value = value[:allowed] + truncation_marker(len(value) - allowed)
        self.budget -= len(value)
        return value

    def key(self, key: object) -> str:
        # Keys are cut at the value cap but never spend the span budget: a key is what
        # makes a truncated value findable.
        text = clean_text(key if isinstance(key, str) else repr(key))
        if len(text) > self.max_value_chars:
            cut = len(text) - self.max_value_chars
            text = text[: self.max_value_chars] + truncation_marker(cut)
        return text

    def value(self, value: object) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value.bit_length() > _JSON_INT_MAX_BITS:
                # Python refuses to print integers this long in decimal; hex keeps them.
                return self.text(hex(value))
            return value
        if isinstance(value, float):
            if math.isnan(value):
                return "NaN"
            return _NON_FINITE.get(value, value)
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "backslashreplace"))
        if isinstance(value, Mapping):
            return self.mapping(value)
        if isinstance(value, Sequence):
            return [self.value(item) for item in value]
        if value is None:
            return None
        return self.text(repr(value))

    def mapping(self, attributes: Mapping[Any, Any]) -> dict[str, Any]:
        cleaned: dict[str, Any] = {}
        for key, value in attributes.items():
            name = self.key(key)
            while name in cleaned:  # two keys that sanitise to one must both survive
                name += "'"
            cleaned[name] = self.value(value)
        return cleaned


def _attribute_dict(attributes: object) -> dict[str, Any]:
    """The plain dict behind an attribute mapping, without copying it when possible."""
    if isinstance(attributes, BoundedAttributes):
        inner = getattr(attributes, "_dict", None)
        if isinstance(inner, dict):
            return inner
    if isinstance(attributes, dict):
        return attributes
    if isinstance(attributes, Mapping):
        return dict(attributes)
    return {}


_SCALARS = ("name", "context", "parent", "kind", "status", "start_time", "end_time", "resource")
_COLLECTIONS = ("attributes", "events", "links")
_SPAN_FIELD_NAMES = tuple(
    f"_{name}" for name in (*_SCALARS, "instrumentation_scope", *_COLLECTIONS)
)
_FIELDS = itemgetter(*_SPAN_FIELD_NAMES[:-3])
_COLLECTION_FIELDS = itemgetter(*_SPAN_FIELD_NAMES[-3:])
_PROPERTIES = attrgetter(*_SCALARS, "instrumentation_scope")
_COLLECTION_PROPERTIES = attrgetter(*_COLLECTIONS)


def _span_fields(span: ReadableSpan) -> tuple[Any, ...]:
    """What ``to_row`` reads of a span, from the SDK's fields directly when it can.

    The public properties copy attributes, events and links on every access and cost a call
    each; the fields of an SDK span are read in one dictionary lookup apiece, and its
    attributes, events, links and status through their own fields (``_FAST_SDK_READS``).
    Spans of other implementations go through the public properties. Returns name, context,
    parent, kind, status code, status message, start, end, resource, scope, the attribute
    dict, events, links, and the dropped counts of attributes, events and links.
    """
    fields = getattr(span, "__dict__", None)
    try:
        if fields is None:
            raise KeyError("__dict__")
        (name, context, parent, kind, status, start, end, resource, scope) = _FIELDS(fields)
        raw_attributes, events, links = _COLLECTION_FIELDS(fields)
    except KeyError:
        (name, context, parent, kind, status, start, end, resource, scope) = _PROPERTIES(span)
        raw_attributes, events, links = _COLLECTION_PROPERTIES(span)
    fast = _FAST_SDK_READS
    bounded: Any = raw_attributes
    if fast and type(bounded) is BoundedAttributes:
        attributes = bounded._dict
        dropped_attributes = bounded.dropped if attributes else 0
    else:
        bounded = raw_attributes or {}
        attributes = _attribute_dict(bounded)
        dropped_attributes = _dropped(bounded)
    if fast and type(events) is BoundedList:
        bounded = events
        events = bounded._dq
        dropped_events = bounded.dropped if events else 0
    else:
        dropped_events = _dropped(events) if events else 0
    if fast and type(links) is BoundedList:
        bounded = links
        links = bounded._dq
        dropped_links = bounded.dropped if links else 0
    else:
        dropped_links = _dropped(links) if links else 0
    status_code, status_message = (
        (status._status_code, status._description)
        if fast and type(status) is Status
        else (status.status_code, status.description)
    )
    return (
        *(name, context, parent, kind, status_code, status_message, start, end, resource),
        *(scope, attributes, events, links, dropped_attributes, dropped_events, dropped_links),
    )


def _dropped(collection: object) -> int:
    dropped = getattr(collection, "dropped", 0)
    return dropped if isinstance(dropped, int) else 0


def _sdk_field_problems() -> tuple[str, ...]:
    """The private SDK fields the fast reads rely on that no longer hold what the public API
    returns (an SDK upgrade renamed them); empty when every fast read is sound."""
    problems: list[str] = []
    try:
        event = Event("e", {"a": 1}, timestamp=5)
        events: Any = BoundedList.from_seq(1, [Event("dropped", timestamp=1), event])
        status = Status(StatusCode.ERROR, "d")
        link = Link(SpanContext(1, 2, False), {"b": 2})
        attributes: Any = BoundedAttributes(2, {"c": 3})
    except Exception as exc:  # pragma: no cover - only after an incompatible SDK upgrade
        return (f"constructors: {exc!r}",)
    checks = (
        ("BoundedAttributes._dict", lambda: attributes._dict == {"c": 3}),
        ("BoundedAttributes.dropped", lambda: attributes.dropped == 0),
        ("BoundedList._dq", lambda: list(events._dq) == list(events)),
        ("BoundedList.dropped", lambda: events.dropped == 1),
        ("Event._name", lambda: event._name is event.name),
        ("Event._timestamp", lambda: event._timestamp is event.timestamp),
        ("Event._attributes", lambda: event._attributes is event.attributes),
        ("Status._status_code", lambda: status._status_code is status.status_code),
        ("Status._description", lambda: status._description is status.description),
        ("Link._context", lambda: link._context is link.context),
        ("Link._attributes", lambda: link._attributes is link.attributes),
    )
    for name, check in checks:
        try:
            sound = check()
        except Exception:  # pragma: no cover - only after an incompatible SDK upgrade
            sound = False
        if not sound:  # pragma: no cover - only after an incompatible SDK upgrade
            problems.append(name)
    return tuple(problems)


# Event, Status, Link and BoundedList are read through their fields (one attribute load each
# instead of a property call) when these exact SDK classes still keep them as expected.
_FAST_SDK_READS = not _sdk_field_problems()


def _events_doc(events: Sequence[Event]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    fast = _FAST_SDK_READS
    for event in events:
        if fast and type(event) is Event:
            name, timestamp, attributes = event._name, event._timestamp, event._attributes
        else:
            name, timestamp, attributes = event.name, event.timestamp, event.attributes
        docs.append(
            {"name": name, "time": iso_time(timestamp), "attributes": _attribute_dict(attributes)}
        )
    return docs


def _links_doc(links: Sequence[Link]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    fast = _FAST_SDK_READS
    for link in links:
        if fast and type(link) is Link:
            context, attributes = link._context, link._attributes
        else:
            context, attributes = link.context, link.attributes
        doc: dict[str, Any] = {
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "attributes": _attribute_dict(attributes),
        }
        if context.trace_state:
            doc["trace_state"] = context.trace_state.to_header()
        docs.append(doc)
    return docs


def _scrub_attributes(doc: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    scrubbed = {**doc, "attributes": scrubber.scrub_mapping(doc["attributes"])}
    if "name" in doc:  # an event's name is free text too
        scrubbed["name"] = scrubber.scrub_text(doc["name"])
    return scrubbed


def _docs_unchanged(scrubber: Scrubber, docs: list[dict[str, Any]] | None) -> bool:
    """True proves that ``_scrub_attributes`` leaves each event or link document unchanged:
    no key of its attributes names a credential and no string in their values (or in an
    event's name) can hold a secret; False means: scrub them."""
    for doc in docs or ():
        attributes = doc["attributes"]
        name = doc.get("name", "")
        if type(name) is not str:
            return False
        try:
            if scrubber.keys_need_scrubbing(attributes):
                return False
        except (AttributeError, TypeError):  # a key that is no str: the slow path copes
            return False
        if not scrubber.strings_unchanged(attributes.values(), (name,)):
            return False
    return True


def _clamp_ns(time_ns: int) -> int:
    # The SDK only makes int64 nanoseconds; a hand-built span may not.
    return (
        time_ns
        if _BIGINT_MIN <= time_ns <= _BIGINT_MAX
        else max(_BIGINT_MIN, min(_BIGINT_MAX, time_ns))
    )


def execution_id_of(value: object) -> int | None:
    """An int, or an all-ASCII-digit string, that fits a bigint; anything else is None."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            return None
        value = int(value)
    elif not isinstance(value, int) or isinstance(value, bool):
        return None
    if _BIGINT_MIN <= value <= _BIGINT_MAX:
        return value
    return None


_SAMPLED = 1
_ORIGIN_CACHE_SIZE = 256
_NAME_CACHE_SIZE = 4096


class _Origin(NamedTuple):
    """What spans of one resource, scope, trace flags and parent remoteness share."""

    resource: Resource
    scope: InstrumentationScope | None
    service: str
    resource_json: str
    scope_name: str | None
    otel: dict[str, Any]
    otel_json: str | None


class SpanMapper:
    """Turns ``ReadableSpan`` objects into staging rows; pure, reusable, thread-compatible."""

    def __init__(
        self,
        *,
        execution_id_attribute: str = DEFAULT_EXECUTION_ID_ATTRIBUTE,
        max_value_chars: int = DEFAULT_MAX_VALUE_CHARS,
        max_span_chars: int = DEFAULT_MAX_SPAN_CHARS,
        scrubber: Scrubber | None = None,
        late_attributes: LateAttributes | None = None,
    ) -> None:
        self.execution_id_attribute = execution_id_attribute
        # Attributes that arrived after their span ended, merged into its row when it is
        # still queued (the exporter passes the process-wide LATE_ATTRIBUTES).
        self.late_attributes = late_attributes if late_attributes is not None else LateAttributes()
        self.scrubber = scrubber
        self.max_value_chars = max_value_chars
        self.max_span_chars = max_span_chars
        # Spans of one provider share Resource and scope objects, and nearly all share trace
        # flags and parent remoteness: encode each combination once. Entries keep the objects
        # alive so that their id() cannot be reused while cached.
        self._origin_cache: dict[tuple[int, int, int, bool], _Origin] = {}
        self._scrubbed_names: dict[str, str] = {}

    def _origin(
        self,
        resource: Resource,
        scope: InstrumentationScope | None,
        trace_flags: int,
        parent_is_remote: bool,
    ) -> _Origin:
        key = (id(resource), id(scope), trace_flags, parent_is_remote)
        cached = self._origin_cache.get(key)
        if cached is not None and cached.resource is resource and cached.scope is scope:
            return cached
        cleaner = _Cleaner(self.max_value_chars, self.max_span_chars)
        raw_resource: Mapping[str, Any] = resource.attributes
        if self.scrubber is not None:
            raw_resource = self.scrubber.scrub_mapping(raw_resource)
        resource_attributes = cleaner.mapping(raw_resource)
        service = resource_attributes.get("service.name")
        if not isinstance(service, str) or not service:
            service = UNKNOWN_SERVICE
        otel: dict[str, Any] = {}
        if trace_flags != _SAMPLED:
            otel["trace_flags"] = trace_flags
        if parent_is_remote:
            otel["parent_is_remote"] = True
        if resource.schema_url:
            otel["resource_schema_url"] = cleaner.text(resource.schema_url)
        scope_name = None
        if scope is not None:
            scope_name = cleaner.text(scope.name)
            if scope.version:
                otel["scope_version"] = cleaner.text(scope.version)
            if scope.schema_url:
                otel["scope_schema_url"] = cleaner.text(scope.schema_url)
            if scope.attributes:
                otel["scope_attributes"] = cleaner.mapping(scope.attributes)
        origin = _Origin(
            resource,
            scope,
            service,
            _encode_json(resource_attributes),
            scope_name,
            otel,
            _encode_json(otel) if otel else None,
        )
        if len(self._origin_cache) >= _ORIGIN_CACHE_SIZE:
            self._origin_cache.clear()
        self._origin_cache[key] = origin
        return origin

    def to_row(self, span: ReadableSpan) -> Row:
        """One staging row for ``span``; never raises for any attribute content."""
        (
            name,
            context,
            parent,
            kind,
            status_code,
            status_message,
            start,
            end,
            resource,
            scope,
            attributes,
            raw_events,
            raw_links,
            dropped_attributes,
            dropped_events,
            dropped_links,
        ) = _span_fields(span)
        if context is None:
            raise ValueError("span has no context")
        # SpanContext is a tuple: unpacking it costs one step, its properties five calls.
        trace_id, span_id, _, trace_flags, trace_state, _ = context
        parent_is_remote = parent is not None and parent.is_remote
        origin = self._origin_cache.get((id(resource), id(scope), trace_flags, parent_is_remote))
        if origin is None or origin.resource is not resource or origin.scope is not scope:
            origin = self._origin(resource, scope, trace_flags, parent_is_remote)
        late_attributes = self.late_attributes
        if late_attributes:
            late = late_attributes.pop(trace_id, span_id)
            if late:
                attributes = {**attributes, **late}
        events = _events_doc(raw_events) if raw_events else None
        links = _links_doc(raw_links) if raw_links else None

        otel = None
        if trace_state or dropped_attributes or dropped_events or dropped_links:
            otel = dict(origin.otel)
            if trace_state:
                otel["trace_state"] = trace_state.to_header()
            if dropped_attributes or dropped_events or dropped_links:
                otel["dropped"] = {
                    "attributes": dropped_attributes,
                    "events": dropped_events,
                    "links": dropped_links,
                }

        metadata, events_json, links_json, otel_json = self._encode_documents(
            attributes, events, links, otel
        )
        if self.scrubber is not None:
            name, status_message, metadata, events_json, links_json, otel_json = self._scrub(
                self.scrubber,
                name,
                status_message,
                attributes,
                events,
                links,
                otel,
                (metadata, events_json, links_json, otel_json),
            )
        if not (name.isascii() and "\x00" not in name and len(name) <= self.max_value_chars):
            name = self._label(name)
        if status_message is not None:
            status_message = self._label(status_message)
        start = start or 0
        start = start if _BIGINT_MIN <= start <= _BIGINT_MAX else _clamp_ns(start)
        end = end or start
        end = end if _BIGINT_MIN <= end <= _BIGINT_MAX else _clamp_ns(end)
        execution_id = attributes.get(self.execution_id_attribute)
        if execution_id is not None and not (
            type(execution_id) is int and _BIGINT_MIN <= execution_id <= _BIGINT_MAX
        ):
            execution_id = execution_id_of(execution_id)
        # printf-style formatting takes half the time of an f-string with a format spec.
        return (
            "%032x" % trace_id,  # noqa: UP031
            "%016x" % span_id,  # noqa: UP031
            None if parent is None else "%016x" % parent.span_id,  # noqa: UP031
            origin.service,
            name,
            _KIND_NAMES.get(id(kind)) or str(kind.name).lower(),
            start,
            end,
            _STATUS_NAMES.get(id(status_code)) or str(status_code.name).lower(),
            status_message,
            execution_id,
            metadata,
            events_json,
            links_json,
            origin.resource_json,
            origin.scope_name,
            origin.otel_json if otel is None else otel_json,
        )

    def _scrub(
        self,
        scrubber: Scrubber,
        name: str,
        status_message: str | None,
        attributes: dict[str, Any],
        events: list[dict[str, Any]] | None,
        links: list[dict[str, Any]] | None,
        otel: dict[str, Any] | None,
        documents: tuple[str, str | None, str | None, str | None],
    ) -> tuple[str, str | None, str, str | None, str | None, str | None]:
        """Name, status message and documents with credentials replaced by markers."""
        name = self._scrubbed_name(name, scrubber)
        if status_message and scrubber.might_contain_secret(status_message):
            status_message = scrubber.scrub_text(status_message)
        metadata, events_json, links_json, _ = documents
        # Key verdicts are cached per key; the values take one scan of their document. When
        # that scan fires, the values are scanned again without the keys (a key such as
        # "cache.key" holds a trigger word but is no credential): only a real suspect takes
        # the slow path, which re-encodes every document exactly as before.
        if (
            scrubber.keys_need_scrubbing(attributes)
            or (
                scrubber.values_might_contain_secret(metadata)
                and not scrubber.strings_unchanged(attributes.values())
            )
            or (
                events_json is not None
                and scrubber.might_contain_secret(events_json)
                and not _docs_unchanged(scrubber, events)
            )
            or (
                links_json is not None
                and scrubber.might_contain_secret(links_json)
                and not _docs_unchanged(scrubber, links)
            )
        ):
            attributes = scrubber.scrub_mapping(attributes)
            if events is not None:
                events = [_scrub_attributes(doc, scrubber) for doc in events]
            if links is not None:
                links = [_scrub_attributes(doc, scrubber) for doc in links]
            documents = self._encode_documents(attributes, events, links, otel)
        return (name, status_message, *documents)

    def _scrubbed_name(self, name: str, scrubber: Scrubber) -> str:
        # Span names repeat (routes, job steps): remember each verdict instead of rescanning.
        cache = self._scrubbed_names
        scrubbed = cache.get(name)
        if scrubbed is None:
            scrubbed = scrubber.scrub_text(name)
            if len(cache) >= _NAME_CACHE_SIZE:
                cache.clear()
            cache[name] = scrubbed
        return scrubbed

    def _label(self, text: str) -> str:
        """A span name or status message as PostgreSQL text, within the value cap."""
        if _is_clean_text(text) and len(text) <= self.max_value_chars:
            return text
        return _Cleaner(self.max_value_chars, self.max_value_chars).text(text)

    def _encode_documents(
        self,
        attributes: dict[str, Any],
        events: list[dict[str, Any]] | None,
        links: list[dict[str, Any]] | None,
        otel: dict[str, Any] | None,
    ) -> tuple[str, str | None, str | None, str | None]:
        limit = self.max_value_chars
        if events is None and links is None and otel is None:  # most spans: one document
            try:
                metadata = _encode_json(attributes)
            except (TypeError, ValueError):
                pass  # NaN, infinities or a type JSON cannot encode: clean below
            else:
                if len(metadata) <= self.max_span_chars and _is_clean_json(metadata, limit):
                    return metadata, None, None, None
        try:
            metadata = _encode_json(attributes)
            events_json = None if events is None else _encode_json(events)
            links_json = None if links is None else _encode_json(links)
            otel_json = None if otel is None else _encode_json(otel)
        except (TypeError, ValueError):
            pass  # NaN, infinities or a type JSON cannot encode: clean below
        else:
            # A document shorter than the value cap cannot hold an over-long value.
            clean = _is_clean_json(metadata, limit)
            total = len(metadata)
            for document in (events_json, links_json, otel_json):
                if document is not None:
                    total += len(document)
                    clean = clean and _is_clean_json(document, limit)
            if clean and total <= self.max_span_chars:
                return metadata, events_json, links_json, otel_json

        cleaner = _Cleaner(self.max_value_chars, self.max_span_chars)
        metadata = _encode_json(cleaner.mapping(attributes))
        events_json = None if events is None else _encode_json(cleaner.value(events))
        links_json = None if links is None else _encode_json(cleaner.value(links))
        otel_json = None if otel is None else _encode_json(cleaner.mapping(otel))
        return metadata, events_json, links_json, otel_json
