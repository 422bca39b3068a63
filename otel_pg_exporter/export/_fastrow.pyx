# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=False
"""Compiled twin of ``SpanMapper.to_row`` for the common SDK span.

``FastRow(mapper)(span)`` returns exactly the row ``mapper.to_row(span)`` returns. It handles
the span nearly every application makes (SDK span, attributes of str, bool, int64, finite
float or flat sequences of those, events, no links, no trace state, nothing dropped, nothing
to clean, truncate or scrub) and hands anything else to ``mapper.to_row``: the reference
stays the only place that sanitises, truncates and scrubs. JSON is written by hand into one
UTF-8 buffer, byte for byte what ``json`` (compact separators, ``ensure_ascii=False``) gives.

The mapper's settings are read when the ``FastRow`` is made; make a new one after changing
them.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Next
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_AsUTF8String, PyUnicode_DecodeUTF8
from libc.math cimport isfinite
from libc.string cimport memcpy

from types import MappingProxyType

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, SpanContext
from opentelemetry.trace.status import Status

from otel_pg_exporter.export.late_attributes import LateAttributes
from otel_pg_exporter.export import mapping
from otel_pg_exporter.export.mapping import execution_id_of
from otel_pg_exporter.export.scrubbing import (
    FOLD_TABLE,
    KEY_ONLY_NEEDLES,
    VALUE_NEEDLES,
    Scrubber,
)

try:
    from opentelemetry.sdk.trace import _Span
except ImportError:  # pragma: no cover - an SDK without the private class
    _Span = ReadableSpan

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLongMask(object o) except? <unsigned long long>-1
    double PyFloat_AS_DOUBLE(object o)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL
    int Py_DTSF_ADD_DOT_0
    Py_ssize_t PyTuple_GET_SIZE(object o)
    PyObject* PyTuple_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    int PySequence_Contains(object seq, object item) except -1

cdef extern from "string.h":
    size_t strlen(const char* s)
    void* memmem(const void* haystack, size_t haystack_size, const void* needle,
                 size_t needle_size)

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL
    bytes PyBytes_FromStringAndSize(const char* v, Py_ssize_t size)
    int PySet_Contains(object anyset, object key) except -1

# Why a span took the reference path; counted per FastRow.
REASONS = (
    "span_type",  # not an SDK ReadableSpan/_Span with the usual fields
    "context",  # no SpanContext, or ids out of range
    "parent",
    "trace_state",
    "late_attributes",
    "attributes_type",  # attributes not a dict or BoundedAttributes
    "dropped",
    "links",
    "events_type",
    "value",  # a key or value the fast writer does not take (type, NUL, surrogate, NaN, ...)
    "size",  # a document or label past a size cap
    "name",
    "status",
    "times",
    "kind",
    "scrub",  # the scrubber's gate says a rewrite might be needed
    "error",  # an unexpected exception: the reference decides
)
cdef enum:
    R_SPAN_TYPE = 0
    R_CONTEXT
    R_PARENT
    R_TRACE_STATE
    R_LATE
    R_ATTRIBUTES_TYPE
    R_DROPPED
    R_LINKS
    R_EVENTS_TYPE
    R_VALUE
    R_SIZE
    R_NAME
    R_STATUS
    R_TIMES
    R_KIND
    R_SCRUB
    R_ERROR
    N_REASONS

# Keyed by id(): the members are singletons (as in mapping.py).
cdef dict _KIND_NAMES = mapping._KIND_NAMES  # the reference's own tables, not copies
cdef dict _STATUS_NAMES = mapping._STATUS_NAMES
cdef object _DEFAULT_TRACE_STATE = DEFAULT_TRACE_STATE
cdef object _SPAN_CONTEXT = SpanContext
cdef object _READABLE_SPAN = ReadableSpan
cdef object _SDK_SPAN = _Span
cdef object _EVENT = Event
cdef object _STATUS = Status
cdef object _BOUNDED_ATTRIBUTES = BoundedAttributes
cdef object _BOUNDED_LIST = BoundedList
cdef object _LATE_ATTRIBUTES = LateAttributes
cdef object _MAPPING_PROXY = MappingProxyType
cdef object _SCRUBBER = Scrubber
cdef object _execution_id_of = execution_id_of

cdef const char* _HEXC = b"0123456789abcdef"
cdef long long _NS = 1000000000
cdef Py_ssize_t _ORIGIN_SLOTS = 8

# --- the output buffer ------------------------------------------------------------------------

cdef enum:
    STACK_BYTES = 4096

cdef struct Buf:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity
    bint heap


cdef int _grow(Buf* buf, Py_ssize_t need) except -1:
    cdef Py_ssize_t capacity = buf.capacity * 2
    cdef char* data
    while capacity < buf.length + need:
        capacity *= 2
    if buf.heap:
        data = <char*>PyMem_Realloc(buf.data, capacity)
    else:
        data = <char*>PyMem_Malloc(capacity)
        if data != NULL:
            memcpy(data, buf.data, buf.length)
    if data == NULL:
        raise MemoryError()
    buf.data = data
    buf.capacity = capacity
    buf.heap = True
    return 0


cdef inline int _reserve(Buf* buf, Py_ssize_t need) except -1:
    if buf.length + need > buf.capacity:
        _grow(buf, need)
    return 0


cdef inline int _put(Buf* buf, const char* text, Py_ssize_t size) except -1:
    _reserve(buf, size)
    memcpy(buf.data + buf.length, text, size)
    buf.length += size
    return 0


cdef inline int _put_char(Buf* buf, char c) except -1:
    _reserve(buf, 1)
    buf.data[buf.length] = c
    buf.length += 1
    return 0


cdef int _put_escaped(Buf* buf, const unsigned char* text, Py_ssize_t size) except -1:
    """A JSON string as json.encoder.encode_basestring writes it, from UTF-8 bytes.

    Returns 1 for what the reference would clean: NUL, or a backslash followed by "u0000"
    (the reference's check on the encoded document cannot tell that from an escaped NUL)."""
    cdef Py_ssize_t index = 0
    cdef Py_ssize_t run = 0
    cdef unsigned char c
    _reserve(buf, size + 2)
    buf.data[buf.length] = c'"'
    buf.length += 1
    while index < size:
        c = text[index]
        if c >= 0x20 and c != c'"' and c != c'\\':
            index += 1
            continue
        if index > run:
            _put(buf, <const char*>text + run, index - run)
        if c == 0:
            return 1
        if c == c'\\':
            if (
                index + 5 < size
                and text[index + 1] == c'u'
                and text[index + 2] == c'0'
                and text[index + 3] == c'0'
                and text[index + 4] == c'0'
                and text[index + 5] == c'0'
            ):
                return 1
            _put(buf, b"\\\\", 2)
        elif c == c'"':
            _put(buf, b'\\"', 2)
        elif c == b'\n':
            _put(buf, b"\\n", 2)
        elif c == b'\r':
            _put(buf, b"\\r", 2)
        elif c == b'\t':
            _put(buf, b"\\t", 2)
        elif c == 0x08:
            _put(buf, b"\\b", 2)
        elif c == 0x0C:
            _put(buf, b"\\f", 2)
        else:
            _reserve(buf, 6)
            memcpy(buf.data + buf.length, b"\\u00", 4)
            buf.data[buf.length + 4] = _HEXC[c >> 4]
            buf.data[buf.length + 5] = _HEXC[c & 15]
            buf.length += 6
        index += 1
        run = index
    if index > run:
        _put(buf, <const char*>text + run, index - run)
    _put_char(buf, c'"')
    return 0


cdef int _put_str(Buf* buf, object text) except -1:
    """An exact str as a JSON string; 1 when the reference would clean it."""
    cdef bytes encoded
    if PyUnicode_IS_ASCII(text):
        return _put_escaped(
            buf, <const unsigned char*>PyUnicode_DATA(text), PyUnicode_GET_LENGTH(text)
        )
    try:
        encoded = PyUnicode_AsUTF8String(text)
    except UnicodeEncodeError:  # a lone surrogate
        return 1
    return _put_escaped(
        buf, <const unsigned char*>PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded)
    )


cdef int _put_int(Buf* buf, long long value) except -1:
    cdef char digits[24]
    cdef int position = 24
    cdef unsigned long long magnitude
    if value < 0:
        magnitude = <unsigned long long>(-(value + 1)) + 1
    else:
        magnitude = <unsigned long long>value
    while True:
        position -= 1
        digits[position] = <char>(c'0' + magnitude % 10)
        magnitude //= 10
        if magnitude == 0:
            break
    if value < 0:
        position -= 1
        digits[position] = c'-'
    return _put(buf, digits + position, 24 - position)


cdef int _put_scalar(Buf* buf, object value) except -1:
    """str, bool, int64 or finite float as JSON; 1 for anything else."""
    cdef type kind = type(value)
    cdef int overflow = 0
    cdef long long number
    cdef double real
    cdef char* repr_text
    if kind is str:
        return _put_str(buf, value)
    if kind is bool:
        if value is True:
            return _put(buf, b"true", 4)
        return _put(buf, b"false", 5)
    if kind is int:
        number = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return 1
        return _put_int(buf, number)
    if kind is float:
        real = PyFloat_AS_DOUBLE(value)
        if not isfinite(real):
            return 1
        # What float.__repr__ (and so json) prints.
        repr_text = PyOS_double_to_string(real, c'r', 0, Py_DTSF_ADD_DOT_0, NULL)
        try:
            _put(buf, repr_text, <Py_ssize_t>strlen(repr_text))
        finally:
            PyMem_Free(repr_text)
        return 0
    return 1


cdef int _put_value(Buf* buf, object value) except -1:
    cdef type kind = type(value)
    cdef Py_ssize_t index, size
    if kind is tuple:
        size = PyTuple_GET_SIZE(value)
        _put_char(buf, c'[')
        for index in range(size):
            if index:
                _put_char(buf, c',')
            if _put_scalar(buf, <object>PyTuple_GET_ITEM(value, index)):
                return 1
        return _put_char(buf, c']')
    if kind is list:
        size = PyList_GET_SIZE(value)
        _put_char(buf, c'[')
        for index in range(size):
            if index:
                _put_char(buf, c',')
            if _put_scalar(buf, <object>PyList_GET_ITEM(value, index)):
                return 1
        return _put_char(buf, c']')
    return _put_scalar(buf, value)


cdef int _put_attributes(Buf* buf, object attributes) except -1:
    """A dict of str keys as a JSON object, in iteration order; 1 when not fast-path data."""
    cdef Py_ssize_t position = 0
    cdef PyObject* key = NULL
    cdef PyObject* value = NULL
    cdef bint first = True
    _put_char(buf, c'{')
    if type(attributes) is dict:
        # No Python code runs inside this loop, so the dict cannot change under it.
        while PyDict_Next(attributes, &position, &key, &value):
            if not first:
                _put_char(buf, c',')
            first = False
            if type(<object>key) is not str or _put_str(buf, <object>key):
                return 1
            _put_char(buf, c':')
            if _put_value(buf, <object>value):
                return 1
    else:  # a dict subclass (OrderedDict in older SDKs): json encodes its items()
        for item_key, item_value in list(attributes.items()):
            if not first:
                _put_char(buf, c',')
            first = False
            if type(item_key) is not str or _put_str(buf, item_key):
                return 1
            _put_char(buf, c':')
            if _put_value(buf, item_value):
                return 1
    return _put_char(buf, c'}')


cdef int _put_time(Buf* buf, long long time_ns) except -1:
    """RFC 3339 UTC with nine fractional digits, as mapping.iso_time; 1 outside 1000-9999."""
    cdef long long seconds = time_ns // _NS
    cdef long long nanos = time_ns - seconds * _NS
    cdef long long days, second_of_day, era, year
    cdef unsigned int doe, yoe, doy, mp, month, day
    cdef char out[32]
    cdef int index
    if nanos < 0:  # floor division, as divmod
        seconds -= 1
        nanos += _NS
    days = seconds // 86400
    second_of_day = seconds - days * 86400
    if second_of_day < 0:
        days -= 1
        second_of_day += 86400
    # Howard Hinnant's civil_from_days.
    days += 719468
    era = (days if days >= 0 else days - 146096) // 146097
    doe = <unsigned int>(days - era * 146097)
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    year = <long long>yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    if month <= 2:
        year += 1
    if year < 1000 or year > 9999:
        return 1
    out[0] = c'"'
    out[1] = <char>(c'0' + year // 1000)
    out[2] = <char>(c'0' + (year // 100) % 10)
    out[3] = <char>(c'0' + (year // 10) % 10)
    out[4] = <char>(c'0' + year % 10)
    out[5] = c'-'
    out[6] = <char>(c'0' + month // 10)
    out[7] = <char>(c'0' + month % 10)
    out[8] = c'-'
    out[9] = <char>(c'0' + day // 10)
    out[10] = <char>(c'0' + day % 10)
    out[11] = c'T'
    out[12] = <char>(c'0' + (second_of_day // 3600) // 10)
    out[13] = <char>(c'0' + (second_of_day // 3600) % 10)
    out[14] = c':'
    out[15] = <char>(c'0' + ((second_of_day // 60) % 60) // 10)
    out[16] = <char>(c'0' + ((second_of_day // 60) % 60) % 10)
    out[17] = c':'
    out[18] = <char>(c'0' + (second_of_day % 60) // 10)
    out[19] = <char>(c'0' + (second_of_day % 60) % 10)
    out[20] = c'.'
    for index in range(29, 20, -1):
        out[index] = <char>(c'0' + nanos % 10)
        nanos //= 10
    out[30] = c'Z'
    _put(buf, out, 31)
    return _put_char(buf, c'"')


cdef str _hex_id(object value, int digits):
    """``"%0{digits}x" % value`` for 0 <= value < 16**digits; None otherwise."""
    cdef unsigned long long low, high = 0
    cdef char out[32]
    cdef int index
    if type(value) is not int or value < 0:
        return None
    if digits == 32:
        try:
            high = value >> 64
        except OverflowError:
            return None
        low = PyLong_AsUnsignedLongLongMask(value)
    else:
        try:
            low = value
        except OverflowError:
            return None
    for index in range(digits - 1, -1, -1):
        if index >= digits - 16:
            out[index] = _HEXC[low & 15]
            low >>= 4
        else:
            out[index] = _HEXC[high & 15]
            high >>= 4
    return PyUnicode_DecodeUTF8(out, digits, NULL)


cdef inline bint _clean_label(object text, Py_ssize_t limit):
    """What SpanMapper._label keeps as it is: str without NUL or lone surrogate, <= limit."""
    if type(text) is not str or PyUnicode_GET_LENGTH(text) > limit:
        return False
    if PyUnicode_IS_ASCII(text):
        return PySequence_Contains(text, "\x00") == 0
    if PySequence_Contains(text, "\x00"):
        return False
    try:
        PyUnicode_AsUTF8String(text)
    except UnicodeEncodeError:
        return False
    return True


# --- the scrubber's cheap tests, compiled --------------------------------------------------------
# Scrubber.values_might_contain_secret and might_contain_secret (without extra patterns) fold
# the text's UTF-8 bytes through FOLD_TABLE and look for the needles of scrubbing.py; the
# same bytes, table and needles here give the same answer without a Python call.

cdef unsigned char _FOLD_C[256]
for _byte in range(256):
    _FOLD_C[_byte] = ord(FOLD_TABLE[_byte])
cdef tuple _VALUE_GROUPS = tuple(
    tuple(needle.encode() for needle in group) for group in VALUE_NEEDLES
)
cdef tuple _KEY_ONLY = tuple(needle.encode() for needle in KEY_ONLY_NEEDLES)


cdef int _might_hold_secret(object text, bint key_only_needles) except -1:
    """1 when the scrubber's test would say "might" for ``text``: a group of value needles
    (or, with ``key_only_needles``, a key-only needle too) in its folded UTF-8 bytes."""
    cdef Py_ssize_t size, index
    cdef const char* data
    cdef unsigned char small[2048]
    cdef unsigned char* folded = small
    cdef bytes needle
    cdef bint found
    try:
        data = PyUnicode_AsUTF8AndSize(text, &size)
    except UnicodeEncodeError:
        return 1  # lone surrogates: let the Python test decide
    if size > 2048:
        folded = <unsigned char*>PyMem_Malloc(size)
        if folded == NULL:
            raise MemoryError()
    try:
        for index in range(size):
            folded[index] = _FOLD_C[<unsigned char>data[index]]
        for group in _VALUE_GROUPS:
            found = True
            for needle in group:
                if memmem(folded, size, <const char*>needle, len(needle)) == NULL:
                    found = False
                    break
            if found:
                return 1
        if key_only_needles:
            for needle in _KEY_ONLY:
                if memmem(folded, size, <const char*>needle, len(needle)) != NULL:
                    return 1
        return 0
    finally:
        if folded != small:
            PyMem_Free(folded)


cdef class FastRow:
    """``mapper.to_row`` for the common SDK span; anything else is handed to ``mapper.to_row``."""

    cdef object mapper
    cdef object to_row
    cdef object scrubber
    cdef object scrubbed_name
    cdef dict name_cache
    cdef object keys_need_scrubbing
    cdef object values_might_contain_secret
    cdef object might_contain_secret
    cdef bint exact_scrubber
    cdef bint compiled_gate  # the Scrubber class itself, without extra patterns
    cdef object clean_keys
    cdef object late_attributes
    cdef bint late_is_known_type
    cdef object origin
    cdef object execution_id_attribute
    cdef Py_ssize_t max_value_chars
    cdef Py_ssize_t max_span_chars
    cdef list origins
    cdef public unsigned long long fast
    cdef public unsigned long long fallbacks
    cdef unsigned long long reasons[N_REASONS]
    cdef public str last_fallback
    cdef public str last_error

    def __init__(self, mapper):
        self.mapper = mapper
        self.to_row = mapper.to_row
        self.origin = mapper._origin
        self.max_value_chars = mapper.max_value_chars
        self.max_span_chars = mapper.max_span_chars
        self.execution_id_attribute = mapper.execution_id_attribute
        self.late_attributes = mapper.late_attributes
        self.late_is_known_type = type(self.late_attributes) is _LATE_ATTRIBUTES
        self.scrubber = mapper.scrubber
        if self.scrubber is not None:
            self.scrubbed_name = mapper._scrubbed_name
            cache = getattr(mapper, "_scrubbed_names", None)
            self.name_cache = cache if type(cache) is dict else {}
            self.keys_need_scrubbing = self.scrubber.keys_need_scrubbing
            self.values_might_contain_secret = self.scrubber.values_might_contain_secret
            self.might_contain_secret = self.scrubber.might_contain_secret
            self.exact_scrubber = type(self.scrubber) is _SCRUBBER
            extras = getattr(self.scrubber, "_extras", None)
            clean_keys = getattr(self.scrubber, "_clean_keys", None)
            self.compiled_gate = (
                self.exact_scrubber and extras == () and type(clean_keys) is set
            )
            self.clean_keys = clean_keys
        self.origins = []
        self.fast = 0
        self.fallbacks = 0
        self.last_fallback = None
        self.last_error = None
        for index in range(N_REASONS):
            self.reasons[index] = 0

    def fallback_counts(self):
        """Spans handed to the reference, by reason (only reasons seen)."""
        return {REASONS[i]: self.reasons[i] for i in range(N_REASONS) if self.reasons[i]}

    def __call__(self, span):
        cdef Buf buf
        cdef char stack[STACK_BYTES]
        cdef int reason = -1
        buf.data = stack
        buf.length = 0
        buf.capacity = STACK_BYTES
        buf.heap = False
        try:
            row = self._row(span, &buf, &reason)
        except Exception as exc:  # the reference path decides what this span means
            row = None
            reason = R_ERROR
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            if buf.heap:
                PyMem_Free(buf.data)
        if row is not None:
            self.fast += 1
            return row
        self.fallbacks += 1
        self.reasons[reason] += 1
        self.last_fallback = REASONS[reason]
        return self.to_row(span)

    cdef bint _keys_known_clean(self, attributes) except -1:
        """Every key of the dict is in the scrubber's set of keys known to have no rule."""
        cdef Py_ssize_t position = 0
        cdef PyObject* key
        cdef PyObject* value
        if type(attributes) is not dict:
            return False
        clean_keys = self.clean_keys
        while PyDict_Next(attributes, &position, &key, &value):
            if not PySet_Contains(clean_keys, <object>key):
                return False
        return True

    cdef bint _values_might_contain_secret(self, text) except -1:
        if self.compiled_gate:
            return _might_hold_secret(text, False)
        return self.values_might_contain_secret(text)

    cdef bint _might_contain_secret(self, text) except -1:
        if self.compiled_gate:
            return _might_hold_secret(text, True)
        return self.might_contain_secret(text)

    cdef bint _strings_clean(self, attributes) except -1:
        """No str value (or str in a sequence value) might hold a secret."""
        check = self.values_might_contain_secret
        for value in attributes.values():
            if type(value) is str:
                if check(value):
                    return False
            elif type(value) is tuple or type(value) is list:
                for item in value:
                    if type(item) is str and check(item):
                        return False
        return True

    cdef bint _scrub_is_identity(self, attributes, events) except -1:
        """Whether SpanMapper._scrub's rewrite of these attributes and events changes nothing
        (their keys, names and values were checked for fast-path types already)."""
        if not self._strings_clean(attributes):
            return False
        if events is None:
            return True
        for event in events:
            fields = event.__dict__
            if self.values_might_contain_secret(fields["_name"]):
                return False
            event_attributes = fields["_attributes"]
            if event_attributes is None:
                continue
            if type(event_attributes) is _BOUNDED_ATTRIBUTES:
                event_attributes = event_attributes._dict
            if self.keys_need_scrubbing(event_attributes):
                return False
            if not self._strings_clean(event_attributes):
                return False
        return True

    cdef _lookup_origin(self, resource, scope, trace_flags, bint remote):
        cdef long flags = trace_flags
        cdef tuple entry
        for entry in self.origins:
            if (
                entry[0] is resource
                and entry[1] is scope
                and <long>entry[2] == flags
                and <bint>entry[3] == remote
            ):
                return entry
        origin = self.origin(resource, scope, trace_flags, remote)
        entry = (
            resource,
            scope,
            flags,
            remote,
            origin.service,
            origin.resource_json,
            origin.scope_name,
            origin.otel_json,
        )
        if len(self.origins) >= _ORIGIN_SLOTS:
            self.origins.clear()
        self.origins.append(entry)
        return entry

    cdef object _row(self, span, Buf* buf, int* reason):
        cdef PyObject* item
        cdef dict fields
        cdef object attributes
        cdef Py_ssize_t metadata_end
        cdef long long event_ns
        cdef int overflow = 0
        cdef bint remote

        span_type = type(span)
        if span_type is not _READABLE_SPAN and span_type is not _SDK_SPAN:
            reason[0] = R_SPAN_TYPE
            return None
        fields = span.__dict__
        item = PyDict_GetItem(fields, "_context")
        if item == NULL:
            reason[0] = R_SPAN_TYPE
            return None
        context = <object>item
        if type(context) is not _SPAN_CONTEXT:
            reason[0] = R_CONTEXT
            return None
        trace_id, span_id, _, trace_flags, trace_state, _ = context
        if trace_state is not _DEFAULT_TRACE_STATE and trace_state:
            reason[0] = R_TRACE_STATE
            return None
        trace_hex = _hex_id(trace_id, 32)
        span_hex = _hex_id(span_id, 16)
        if trace_hex is None or span_hex is None:
            reason[0] = R_CONTEXT
            return None
        late = self.late_attributes
        if (late._items if self.late_is_known_type else late):
            reason[0] = R_LATE
            return None

        item = PyDict_GetItem(fields, "_parent")
        if item == NULL:
            reason[0] = R_SPAN_TYPE
            return None
        parent = <object>item
        if parent is None:
            parent_hex = None
            remote = False
        elif type(parent) is _SPAN_CONTEXT:
            parent_hex = _hex_id((<tuple>parent)[1], 16)
            if parent_hex is None:
                reason[0] = R_PARENT
                return None
            remote = bool((<tuple>parent)[2])
        else:
            reason[0] = R_PARENT
            return None

        # Attributes: what _attribute_dict gives, and what _dropped counts.
        item = PyDict_GetItem(fields, "_attributes")
        if item == NULL:
            reason[0] = R_SPAN_TYPE
            return None
        raw = <object>item
        if raw is None:
            attributes = {}
        elif type(raw) is dict:
            attributes = raw
        elif type(raw) is _MAPPING_PROXY:  # ReadableSpan(attributes=other.attributes)
            attributes = dict(raw)
        elif type(raw) is _BOUNDED_ATTRIBUTES:
            attributes = raw._dict
            if not isinstance(attributes, dict):
                reason[0] = R_ATTRIBUTES_TYPE
                return None
            if attributes and raw.dropped:  # an empty one reads as {} in the reference
                reason[0] = R_DROPPED
                return None
        else:
            reason[0] = R_ATTRIBUTES_TYPE
            return None

        item = PyDict_GetItem(fields, "_links")
        if item == NULL:
            reason[0] = R_SPAN_TYPE
            return None
        raw = <object>item
        if raw is not None:
            if type(raw) is _BOUNDED_LIST:
                if raw._dq:
                    reason[0] = R_LINKS
                    return None
            elif type(raw) is tuple or type(raw) is list:
                if raw:
                    reason[0] = R_LINKS
                    return None
            else:
                reason[0] = R_LINKS
                return None

        item = PyDict_GetItem(fields, "_events")
        if item == NULL:
            reason[0] = R_SPAN_TYPE
            return None
        raw = <object>item
        events = None
        if raw is not None:
            if type(raw) is _BOUNDED_LIST:
                events = raw._dq
                if events and raw.dropped:
                    reason[0] = R_DROPPED
                    return None
            elif type(raw) is tuple or type(raw) is list:
                events = raw
            else:
                reason[0] = R_EVENTS_TYPE
                return None
            if not events:
                events = None

        # The documents, into one buffer: metadata, then events.
        if _put_attributes(buf, attributes):
            reason[0] = R_VALUE
            return None
        metadata_end = buf.length
        if events is not None:
            _put_char(buf, c'[')
            first = True
            for event in events:
                if type(event) is not _EVENT:
                    reason[0] = R_EVENTS_TYPE
                    return None
                event_fields = event.__dict__
                if not first:
                    _put_char(buf, c',')
                first = False
                _put(buf, b'{"name":', 8)
                event_name = event_fields["_name"]
                if type(event_name) is not str or _put_str(buf, event_name):
                    reason[0] = R_VALUE
                    return None
                _put(buf, b',"time":', 8)
                event_time = event_fields["_timestamp"]
                if type(event_time) is not int:
                    reason[0] = R_TIMES
                    return None
                event_ns = PyLong_AsLongLongAndOverflow(event_time, &overflow)
                if overflow or _put_time(buf, event_ns):
                    reason[0] = R_TIMES
                    return None
                _put(buf, b',"attributes":', 14)
                event_attributes = event_fields["_attributes"]
                if event_attributes is None:
                    event_attributes = {}
                elif type(event_attributes) is _BOUNDED_ATTRIBUTES:
                    event_attributes = event_attributes._dict
                    if not isinstance(event_attributes, dict):
                        reason[0] = R_ATTRIBUTES_TYPE
                        return None
                elif type(event_attributes) is not dict:
                    reason[0] = R_ATTRIBUTES_TYPE
                    return None
                if _put_attributes(buf, event_attributes):
                    reason[0] = R_VALUE
                    return None
                _put_char(buf, c'}')
            _put_char(buf, c']')

        metadata = PyUnicode_DecodeUTF8(buf.data, metadata_end, NULL)
        if events is None:
            events_json = None
            total = PyUnicode_GET_LENGTH(metadata)
            if total > self.max_value_chars:
                reason[0] = R_SIZE
                return None
        else:
            events_json = PyUnicode_DecodeUTF8(
                buf.data + metadata_end, buf.length - metadata_end, NULL
            )
            total = PyUnicode_GET_LENGTH(metadata) + PyUnicode_GET_LENGTH(events_json)
            if (
                PyUnicode_GET_LENGTH(metadata) > self.max_value_chars
                or PyUnicode_GET_LENGTH(events_json) > self.max_value_chars
            ):
                reason[0] = R_SIZE
                return None
        if total > self.max_span_chars:
            reason[0] = R_SIZE
            return None

        # Name, status, kind, times.
        name = fields["_name"]
        if not _clean_label(name, self.max_value_chars):
            reason[0] = R_NAME
            return None
        status = fields["_status"]
        if type(status) is not _STATUS:
            reason[0] = R_STATUS
            return None
        status_fields = status.__dict__
        status_message = status_fields["_description"]
        if status_message is not None and not _clean_label(status_message, self.max_value_chars):
            reason[0] = R_STATUS
            return None
        status_name = _STATUS_NAMES.get(id(status_fields["_status_code"]))
        kind_name = _KIND_NAMES.get(id(fields["_kind"]))
        if status_name is None or kind_name is None:
            reason[0] = R_KIND
            return None
        start = fields["_start_time"]
        end = fields["_end_time"]
        if type(start) is not int or type(end) is not int or not start or not end:
            reason[0] = R_TIMES
            return None
        PyLong_AsLongLongAndOverflow(start, &overflow)  # the reference clamps to int64
        if overflow:
            reason[0] = R_TIMES
            return None
        PyLong_AsLongLongAndOverflow(end, &overflow)
        if overflow:
            reason[0] = R_TIMES
            return None

        # The scrubber's gate, as SpanMapper._scrub applies it.
        scrubber = self.scrubber
        if scrubber is not None:
            scrubbed = self.name_cache.get(name)
            if scrubbed is None:
                scrubbed = self.scrubbed_name(name, scrubber)
            if scrubbed is not name and scrubbed != name:
                reason[0] = R_SCRUB
                return None
            if not (self.compiled_gate and self._keys_known_clean(attributes)):
                if self.keys_need_scrubbing(attributes):
                    reason[0] = R_SCRUB
                    return None
            if status_message and self._might_contain_secret(status_message):
                if not self.exact_scrubber or self._values_might_contain_secret(status_message):
                    reason[0] = R_SCRUB
                    return None
            if self._values_might_contain_secret(metadata) or (
                events_json is not None and self._might_contain_secret(events_json)
            ):
                # A document-wide hit is often a key ("cache.key") or a word split across
                # values. Scrubber.scrub_mapping changes nothing when no key has a rule and
                # scrub_text would return each string as it is (it does when
                # values_might_contain_secret says False): then the reference's rewrite is
                # the identity and its row is this one. Only for the Scrubber class itself.
                if not self.exact_scrubber or not self._scrub_is_identity(attributes, events):
                    reason[0] = R_SCRUB
                    return None

        origin = self._lookup_origin(
            fields["_resource"], fields["_instrumentation_scope"], trace_flags, remote
        )
        execution_id = None
        item = PyDict_GetItem(attributes, self.execution_id_attribute)
        if item != NULL and <object>item is not None:
            value = <object>item
            if type(value) is int:
                PyLong_AsLongLongAndOverflow(value, &overflow)
                execution_id = None if overflow else value
            else:
                execution_id = _execution_id_of(value)

        return (
            trace_hex,
            span_hex,
            parent_hex,
            origin[4],
            name,
            kind_name,
            start,
            end,
            status_name,
            status_message,
            execution_id,
            metadata,
            events_json,
            None,
            origin[5],
            origin[6],
            origin[7],
        )


# --- binary COPY rows (the sender) ---------------------------------------------------------------

# The binary COPY header (signature, flags, header extension length) and trailer.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
COPY_TRAILER = b"\xff\xff"


cdef inline int _put_be32(Buf* buf, int value) except -1:
    cdef unsigned int u = <unsigned int>value
    _reserve(buf, 4)
    buf.data[buf.length] = <char>((u >> 24) & 0xFF)
    buf.data[buf.length + 1] = <char>((u >> 16) & 0xFF)
    buf.data[buf.length + 2] = <char>((u >> 8) & 0xFF)
    buf.data[buf.length + 3] = <char>(u & 0xFF)
    buf.length += 4
    return 0


cdef inline int _put_be64(Buf* buf, long long value) except -1:
    cdef unsigned long long u = <unsigned long long>value
    cdef int shift
    _reserve(buf, 8)
    for shift in range(8):
        buf.data[buf.length + shift] = <char>((u >> (56 - 8 * shift)) & 0xFF)
    buf.length += 8
    return 0


def encode_copy_rows(list rows, tuple text_columns):
    """The binary COPY stream (signature, rows, trailer) of ``rows``, each a tuple whose
    columns are text (``text_columns[i]`` true) or int8: byte for byte what psycopg's
    ``Copy.write_row`` sends for them, raising what it raises (UnicodeEncodeError for a lone
    surrogate, OverflowError for an int past int8). None when a row holds anything else
    (another length, a str or int subclass, another type): write those rows with psycopg."""
    cdef Py_ssize_t fields = PyTuple_GET_SIZE(text_columns)
    cdef Py_ssize_t index, size
    cdef int overflow = 0
    cdef long long number
    cdef const char* data
    cdef object row, value
    cdef bint* is_text = <bint*>PyMem_Malloc(sizeof(bint) * (fields + 1))
    cdef Buf buf
    if is_text == NULL:
        raise MemoryError()
    buf.capacity = 64 + 512 * len(rows)
    buf.data = <char*>PyMem_Malloc(buf.capacity)
    buf.length = 0
    buf.heap = True
    if buf.data == NULL:
        PyMem_Free(is_text)
        raise MemoryError()
    try:
        for index in range(fields):
            is_text[index] = bool(<object>PyTuple_GET_ITEM(text_columns, index))
        _put(&buf, COPY_SIGNATURE, 19)
        for row in rows:
            if type(row) is not tuple or PyTuple_GET_SIZE(row) != fields:
                return None
            _reserve(&buf, 2)
            buf.data[buf.length] = <char>((fields >> 8) & 0xFF)
            buf.data[buf.length + 1] = <char>(fields & 0xFF)
            buf.length += 2
            for index in range(fields):
                value = <object>PyTuple_GET_ITEM(row, index)
                if value is None:
                    _put_be32(&buf, -1)
                elif is_text[index]:
                    if type(value) is not str:
                        return None
                    if PyUnicode_IS_ASCII(value):
                        data = <const char*>PyUnicode_DATA(value)
                        size = PyUnicode_GET_LENGTH(value)
                    else:
                        data = PyUnicode_AsUTF8AndSize(value, &size)
                    if size > 0x7FFFFFFF:
                        return None
                    _put_be32(&buf, <int>size)
                    _put(&buf, data, size)
                else:
                    if type(value) is not int:
                        return None
                    number = PyLong_AsLongLongAndOverflow(value, &overflow)
                    if overflow:
                        raise OverflowError("int too big to convert")
                    _put_be32(&buf, 8)
                    _put_be64(&buf, number)
        _put(&buf, COPY_TRAILER, 2)
        return PyBytes_FromStringAndSize(buf.data, buf.length)
    finally:
        PyMem_Free(buf.data)
        PyMem_Free(is_text)
