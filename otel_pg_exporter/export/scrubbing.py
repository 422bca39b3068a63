"""Secret scrubbing: credential-looking keys and values become ``[REDACTED:<rule>]``.

Traces are read by more people than the code that wrote them, and a row in PostgreSQL outlives
the request; a password that reached a span attribute should not reach either. So scrubbing is
on by default and errs towards redacting: a marker naming the rule shows what happened.

Two speeds. ``might_contain_secret`` is a cheap superset test of every rule: when it says False,
nothing in the text would be changed, so the common span pays only for it. It is a handful of
C-level substring tests on a case-folded copy, not one regular expression, because CPython's
``re`` tries an alternation position by position: one pattern covering these rules cost 15-50 µs
on a 170-character attributes document where the substring tests cost about 2 µs.
``keys_need_scrubbing`` (a verdict cached per key) with ``values_might_contain_secret`` (fewer
substrings, as keys are not its concern) cost about 1.4 µs; ``test_print_fast_path_cost`` prints
both on the machine at hand.
``scrub_text``, ``scrub_value`` and ``scrub_mapping`` are the slow path that rewrites.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from otel_pg_exporter import settings
from otel_pg_exporter.errors import SettingsError
from otel_pg_exporter.settings import report_once

REDACTED = "[REDACTED:{rule}]"
"""The marker that replaces a secret; ``{rule}`` is the rule's name, e.g. ``password``."""

"""Separates regexes in one environment variable (newlines work too): rare inside a regex."""


class KeyRule(NamedTuple):
    """A credential word of the key rule, as documented and as matched."""

    rule: str
    pattern: str  # matched as a whole segment of the normalised key
    in_text: bool  # also redacts ``name=value`` / ``name: value`` inside free text


# A key is split into segments at every non-letter ("X-Api-Key" -> x, api, key; "db.password2"
# -> db, password); letters compare ASCII-case-insensitively. Compound spellings are listed
# ("apikey", "sessionid") instead of splitting camelCase, so "PaSsWoRd" still counts.
DEFAULT_KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule("password", r"[a-z]*pass(?:word|wd|phrase)s?|pass|[a-z]*pwd", True),
    KeyRule("secret", r"[a-z]*secrets?", True),
    KeyRule("secret", r"credentials?", False),
    KeyRule("token", r"[a-z]*token", True),
    KeyRule("api-key", r"[a-z]*api_?keys?", True),
    KeyRule("authorization", r"[a-z]*authori[sz]ation|auth", False),
    KeyRule("cookie", r"[a-z]*cookies?", True),
    KeyRule("session", r"(?:j|php)?sess(?:ion)?(?:id)?", False),
    KeyRule("jwt", r"[a-z]*jwts?", True),
    KeyRule("private-key", r"private_?keys?", True),
    KeyRule("credit-card", r"credit_?cards?|card_?num(?:ber)?s?|cvv|cvc", False),
    KeyRule("ssn", r"ssn", False),
)
"""Credential words of the key rule. ``tokens`` (plural) is not one: ``gen_ai.usage.input_tokens``
counts tokens; ``author``, ``tokenizer``, ``sessions_count`` and ``db.connection_string`` are not
credential keys (a connection string's password is caught by the value rules)."""

KEY_METADATA_WORDS: tuple[str, ...] = (
    *("count", "counts", "len", "length", "size", "type", "kind", "limit", "usage"),
    *("ttl", "duration", "timeout", "expiry", "expires", "expiration", "age"),
    *("name", "enabled", "required", "present", "path", "file"),
)
"""A credential word directly followed by one of these describes the secret without holding it:
``token_count``, ``llm.token_count.prompt``, ``password_length`` and ``session.duration`` stay."""

DEFAULT_VALUE_RULES: tuple[tuple[str, str], ...] = (
    (
        "private-key",
        "a PEM block -----BEGIN ... PRIVATE KEY----- through its END line "
        "(to the end of the text when the END line is missing)",
    ),
    ("jwt", "eyJ... with three base64url segments"),
    ("url-password", "the password of scheme://user:PASSWORD@host, the rest of the URL kept"),
    ("token", "the credentials after Bearer, and after Basic when they decode to user:password"),
    (
        "<key rule>",
        'the value of name=value, name: value, "name": "value" (and query '
        "parameters, libpq keywords) whose name is a password, secret, token, api-key, cookie, "
        "jwt or private-key word",
    ),
    ("aws-access-key", "AKIA followed by 16 upper-case letters or digits"),
    (
        "credit-card",
        "13-19 digits passing the Luhn check, maybe split by single spaces or dashes into groups "
        "of three or more digits (the last may be shorter)",
    ),
    ("custom", "each match of an extra pattern"),
)
"""Value rules in the order they run on text; the README table is made from this."""

_MAX_CACHED = 4096

# --- the key rule ----------------------------------------------------------------------------

_NON_LETTERS = re.compile(r"[^A-Za-z]+")
_BOUNDARY_AFTER = r"(?=_|$)(?!_(?:{})(?:_|$))".format("|".join(KEY_METADATA_WORDS))


def _compile_key_rule(rules: Sequence[KeyRule]) -> re.Pattern[str]:
    words = "|".join(f"(?P<r{index}>{rule.pattern})" for index, rule in enumerate(rules))
    return re.compile(rf"(?:^|_)(?:{words}){_BOUNDARY_AFTER}", re.IGNORECASE | re.ASCII)


_KEY_RULE = _compile_key_rule(DEFAULT_KEY_RULES)
_KEY_RULE_NAMES = {f"r{index}": rule.rule for index, rule in enumerate(DEFAULT_KEY_RULES)}
_TEXT_NAME_RULES = tuple(rule for rule in DEFAULT_KEY_RULES if rule.in_text)
_TEXT_NAME_RULE = _compile_key_rule(_TEXT_NAME_RULES)
_TEXT_NAME_RULE_NAMES = {f"r{index}": rule.rule for index, rule in enumerate(_TEXT_NAME_RULES)}


def _word_rule(name: str, pattern: re.Pattern[str], names: Mapping[str, str]) -> str | None:
    match = pattern.search(_NON_LETTERS.sub("_", name))
    if match is None or match.lastgroup is None:
        return None
    return names[match.lastgroup]


# --- the value rules -------------------------------------------------------------------------

_PEM_LABEL = r"-----{}[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
_PRIVATE_KEY = re.compile(
    _PEM_LABEL.format("BEGIN") + r"[\s\S]*?(?:" + _PEM_LABEL.format("END") + r"|\Z)",
    re.IGNORECASE | re.ASCII,
)
# The lookbehinds make each rule start only where a token starts, which keeps every scan
# linear in the length of the text (values can be megabytes).
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Greedy up to the last "@" of the authority: an unescaped "@" in a password is redacted too.
_URL_PASSWORD = re.compile(
    r"(?<![A-Za-z0-9+.-])(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>\\]*:)"
    r"[^\s/?#\"'<>\\]+(?=@)"
)
_BEARER = re.compile(r"(?<![A-Za-z0-9_])(?P<head>bearer\s+)[^\s\"'\\,;]+", re.IGNORECASE | re.ASCII)
_BASIC = re.compile(
    r"(?<![A-Za-z0-9_])(?P<head>basic\s+)(?P<credentials>[A-Za-z0-9+/]+={0,2})(?![A-Za-z0-9+/=])",
    re.IGNORECASE | re.ASCII,
)
_AWS_ACCESS_KEY = re.compile(r"(?<![A-Z0-9])AKIA[A-Z0-9]{16}(?![A-Z0-9])")
# Card numbers stand apart: digits glued to letters are part of an id (a hex event id, a
# UUID) whose digit runs can pass the Luhn check by chance, and must stay intact.
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9](?:[ -]?[0-9]){12,}(?![0-9A-Za-z])")
_GROUP_SEPARATOR = re.compile(r"[ -]")

# name, optional closing quote (also an escaped one, JSON inside JSON), then ":" or "=".
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.-])(?P<name>-*[A-Za-z_][A-Za-z0-9_.-]*)(?:\\?[\"']|\])?[ \t]*[:=][ \t]*"
)
_QUOTED_VALUE = re.compile(
    r"""(?P<open>\\")(?:[^\\]|\\(?!"))*(?P<close>\\")?"""
    r"""|(?P<open2>")(?:[^"\\]|\\[\s\S])*(?P<close2>")?"""
    r"""|(?P<open3>')(?:[^'\\]|\\[\s\S])*(?P<close3>')?"""
)
_PLAIN_VALUE = re.compile(r"[^\s\"']+")
_QUERY_VALUE = re.compile(r"[^&#\s\"']+")
_SEMICOLON_VALUE = re.compile(r"[^;\s\"']+")
_LINE_VALUE = re.compile(r"[^\r\n]+")
_HEADER_RULES = frozenset({"cookie"})  # "Cookie: a=1; b=2" is one value up to the line end


def _marker(rule: str) -> str:
    return REDACTED.format(rule=rule)


_PRIVATE_KEY_MARKER = _marker("private-key")
_JWT_MARKER = _marker("jwt")
_AWS_MARKER = _marker("aws-access-key")
_TOKEN_MARKER = _marker("token")
_URL_PASSWORD_MARKER = _marker("url-password")
_CARD_MARKER = _marker("credit-card")


_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, minus 9 when above 9


def _luhn(digits: str) -> bool:
    kept = sum(map(int, digits[-1::-2]))
    doubled = sum(map(int, digits[-2::-2].translate(_DOUBLED)))
    return (kept + doubled) % 10 == 0


def _longest_card(groups: Sequence[str], start: int) -> int:
    """The end of the longest Luhn-valid window of whole groups from ``start``, or -1. Cards
    are printed in groups of three or more digits (only the last may be shorter)."""
    digits = ""
    found = -1
    for end in range(start, len(groups)):
        if end > start and len(groups[end - 1]) < 3:
            break
        digits += groups[end]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and _luhn(digits):
            found = end + 1
    return found


def _redact_cards(match: re.Match[str]) -> str:
    """Luhn-valid runs of 13-19 digits. Inside a longer run only windows of whole groups are
    tried, so a card next to other numbers is found while arbitrary digit strings rarely are;
    overlapping windows are redacted together, so no group of a card is left behind."""
    run = match.group()
    groups = _GROUP_SEPARATOR.split(run)
    separators = [*_GROUP_SEPARATOR.findall(run), ""]
    ends = [_longest_card(groups, start) for start in range(len(groups))]
    if max(ends) < 0:
        return run
    pieces: list[str] = []
    start = 0
    while start < len(groups):
        end = ends[start]
        if end < 0:
            pieces += (groups[start], separators[start])
            start += 1
            continue
        probe = start + 1
        while probe < end:
            end = max(end, ends[probe])
            probe += 1
        pieces += (_CARD_MARKER, separators[end - 1])
        start = end
    return "".join(pieces)


def _redact_url_password(match: re.Match[str]) -> str:
    return match["head"] + _URL_PASSWORD_MARKER


def _redact_bearer(match: re.Match[str]) -> str:
    return match["head"] + _TOKEN_MARKER


def _redact_basic(match: re.Match[str]) -> str:
    try:
        decoded = base64.b64decode(match["credentials"], validate=True)
    except (binascii.Error, ValueError):
        return match.group()
    if b":" not in decoded:  # RFC 7617 credentials are always user:password
        return match.group()
    return match["head"] + _TOKEN_MARKER


def _redact_assignments(text: str) -> str:
    pieces: list[str] = []
    position = 0
    search = _ASSIGNMENT.search
    while (match := search(text, position)) is not None:
        rule = _word_rule(match["name"], _TEXT_NAME_RULE, _TEXT_NAME_RULE_NAMES)
        value_start = match.end()
        if rule is None:
            pieces.append(text[position:value_start])
            position = value_start  # the value may itself hold "password=..."
            continue
        before = text[match.start() - 1] if match.start() else ""
        quoted = _QUOTED_VALUE.match(text, value_start)
        if quoted is not None:
            opened = quoted["open"] or quoted["open2"] or quoted["open3"] or ""
            closed = quoted["close"] or quoted["close2"] or quoted["close3"] or ""
            replacement, value_end = opened + _marker(rule) + closed, quoted.end()
        else:
            if before and before in "?&":
                value_pattern = _QUERY_VALUE
            elif before == ";":
                value_pattern = _SEMICOLON_VALUE
            elif rule in _HEADER_RULES:
                value_pattern = _LINE_VALUE
            else:
                value_pattern = _PLAIN_VALUE
            plain = value_pattern.match(text, value_start)
            if plain is None:
                pieces.append(text[position:value_start])
                position = value_start
                continue
            replacement, value_end = _marker(rule), plain.end()
        pieces.append(text[position:value_start])
        pieces.append(replacement)
        position = value_end
    if not pieces:
        return text
    pieces.append(text[position:])
    return "".join(pieces)


# --- the superset tests ----------------------------------------------------------------------

# ASCII letters folded to lower case; digits, spaces and dashes to "0", so one substring test
# finds any card number with or without separators. Bytes above 0x7f stay as they are: UTF-8
# never turns a non-ASCII character into an ASCII one, so folding adds no letter or digit.
_FOLD = "".join(
    "0" if char in "0123456789 -" else char.lower() if char.isascii() else char
    for char in map(chr, range(256))
)
_CARD_RUN = "0" * 13
# One of these is in every name the in-text rule redacts (the in_text KeyRules).
_TEXT_NAME_NEEDLES = ("pass", "pwd", "secret", "token", "key", "cookie", "jwt")


_charmap_decode = codecs.charmap_decode


def _fold(text: str) -> str:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: any bytes will do, none is ASCII
        data = text.encode("utf-8", "surrogatepass")
    return codecs.charmap_decode(data, None, _FOLD)[0]


# Each function holds, for its rules, substrings one of which every match contains once
# folded. Substrings of common letters are always searched; the rest only after their rarest
# letter was found at all (one memchr instead of several searches). Written out, not looped
# over a table: the loop's own overhead was a third of the cost.


def _value_needle_in(folded: str) -> bool:
    return (
        ("@" in folded and "://" in folded)  # scheme://user:password@host
        or _CARD_RUN in folded
        or "pass" in folded  # password=..., passwd: ..., pwd via "w" below
        or "secret" in folded
        or (
            "k" in folded
            and ("token" in folded or "key" in folded or "cookie" in folded or "akia" in folded)
        )  # api key, private key, PEM, AWS
        or ("w" in folded and ("pwd" in folded or "jwt" in folded))
        or ("j" in folded and "eyj" in folded)
        or ("b" in folded and ("bearer" in folded or "basic" in folded))
    )


# The same tests as data, for compiled code (the fast path's gate): a folded text passes
# _value_needle_in exactly when it contains every substring of one group of VALUE_NEEDLES,
# and _key_only_needle_in when it contains one of KEY_ONLY_NEEDLES (tests hold them equal).
VALUE_NEEDLES: tuple[tuple[str, ...], ...] = (
    ("@", "://"),
    (_CARD_RUN,),
    ("pass",),
    ("secret",),
    ("token",),
    ("key",),
    ("cookie",),
    ("akia",),
    ("pwd",),
    ("jwt",),
    ("eyj",),
    ("bearer",),
    ("basic",),
)
KEY_ONLY_NEEDLES: tuple[str, ...] = ("auth", "sess", "card", "ssn", "cred", "cvv", "cvc")
FOLD_TABLE = _FOLD  # byte -> folded character, for compiled code


def _key_only_needle_in(folded: str) -> bool:
    return (
        "auth" in folded
        or "sess" in folded
        or "card" in folded
        or "ssn" in folded
        or "cred" in folded
        or ("v" in folded and ("cvv" in folded or "cvc" in folded))
    )


# Anchors and negative lookarounds can hold at the edge of a value yet fail once the value sits
# inside a JSON document; a pattern with them makes the superset test always answer True.
_EDGE_SENSITIVE = re.compile(r"(?<!\\)(?<!\[)\^|(?<!\\)\$|\\[AZz]|\(\?<?!")


def _compile_extra(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"extra_patterns: invalid regular expression {pattern!r}: {exc}") from None
    if compiled.fullmatch("") is not None:
        raise ValueError(
            f"extra_patterns: {pattern!r} matches the empty string, so it would mark every position"
        )
    return compiled


def _strings(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ValueError(f"{name} must be a sequence of str, got {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{name} must hold only str, got {type(item).__name__}")
    return items


class Scrubber:
    """Finds and redacts credentials in attribute keys and values; thread-safe, reusable."""

    def __init__(
        self, *, extra_patterns: Sequence[str] = (), allowed_keys: Sequence[str] = ()
    ) -> None:
        self.extra_patterns = _strings("extra_patterns", extra_patterns)
        self.allowed_keys = _strings("allowed_keys", allowed_keys)
        self._extras = tuple(_compile_extra(pattern) for pattern in self.extra_patterns)
        self._extras_edge_sensitive = any(
            _EDGE_SENSITIVE.search(pattern) for pattern in self.extra_patterns
        )
        self._allowed = frozenset(key.casefold() for key in self.allowed_keys)
        self._key_rules: dict[str, str | None] = {}
        # Keys with no rule: a C-level superset check proves a whole attribute dict clean.
        self._clean_keys: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"Scrubber(extra_patterns={list(self.extra_patterns)!r}, "
            f"allowed_keys={list(self.allowed_keys)!r})"
        )

    # --- cheap tests ---

    def might_contain_secret(self, text: str) -> bool:
        """False proves that no rule (key or value, of any key or value in ``text``, raw or
        JSON-encoded) would change anything; True means: take the slow path."""
        folded = _fold(text)
        return (
            _value_needle_in(folded)
            or _key_only_needle_in(folded)
            or self._extras_might_match(text)
        )

    def values_might_contain_secret(self, text: str) -> bool:
        """Like ``might_contain_secret`` for the value rules only: pair it with
        ``keys_need_scrubbing`` for the keys (of every nesting level) of the same document."""
        # _fold inlined: this runs once or more for every span.
        try:
            data = text.encode()
        except UnicodeEncodeError:
            data = text.encode("utf-8", "surrogatepass")
        return _value_needle_in(_charmap_decode(data, None, _FOLD)[0]) or (
            bool(self._extras) and self._extras_might_match(text)
        )

    def strings_unchanged(self, values: Iterable[object], texts: Sequence[str] = ()) -> bool:
        """True proves that scrubbing leaves each of ``values`` (as ``_scrub_any`` would under
        an ordinary key) and each of ``texts`` unchanged, by one value superset test over all
        their strings at once; False means: scrub them.

        It is for documents whose keys alone set off the document-wide test (``cache.key``,
        ``messaging.kafka.message.key``): their values are tested without the keys. A value
        whose scrubbing this cannot vouch for (a mapping, a subclass of str, list or tuple)
        answers False. The strings are joined with newlines: no substring a rule or superset
        test looks for contains one, and an extra pattern sees each string's edge as it would
        alone (a newline is no word character; anchors and negative lookarounds are already
        sent to the slow path), so a match inside any string is a match inside the join."""
        strings = [*texts]
        for value in values:
            kind = type(value)
            if kind is str:
                strings.append(value)  # type: ignore[arg-type]
            elif kind is int or kind is float or kind is bool or value is None:
                continue
            elif kind is tuple or kind is list:
                if not _collect_strings(value, strings):  # type: ignore[arg-type]
                    return False
            elif isinstance(value, _REWRITTEN):
                return False
        return not self.values_might_contain_secret("\n".join(strings))

    def keys_need_scrubbing(self, keys: Collection[str]) -> bool:
        """Whether any of ``keys`` names a credential (or matches an extra pattern); the
        verdict for each key is remembered, so an attribute dict of known keys costs a set
        operation."""
        clean = self._clean_keys
        if clean.issuperset(keys):
            return False
        needs = False
        for key in keys:
            if key in clean:
                continue
            if self.rule_for_key(key) is not None:
                needs = True
            else:
                if len(clean) >= _MAX_CACHED:
                    clean.clear()
                clean.add(key)
        return needs

    def rule_for_key(self, key: str) -> str | None:
        """The rule a credential key falls under (``"custom"`` for an extra pattern), or None
        for an ordinary or allowed key."""
        cache = self._key_rules
        if key in cache:
            return cache[key]
        rule: str | None = None
        if key.casefold() not in self._allowed:
            rule = _word_rule(key, _KEY_RULE, _KEY_RULE_NAMES)
            if rule is None and any(_non_empty_match(extra, key) for extra in self._extras):
                rule = "custom"
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        cache[key] = rule
        return rule

    def _extras_might_match(self, text: str) -> bool:
        if not self._extras:
            return False
        # Without a backslash a JSON document holds every string verbatim, so a pattern that
        # matches inside a key or value matches the document too.
        if self._extras_edge_sensitive or "\\" in text:
            return True
        return any(extra.search(text) is not None for extra in self._extras)

    # --- rewriting ---

    def scrub_text(self, text: str) -> str:
        """``text`` with the value rules applied: each secret inside it replaced by a marker."""
        if not self.values_might_contain_secret(text):
            return text
        for extra in self._extras:
            text = extra.sub(_custom_marker, text)
        # Only the rules whose substring occurs run: a false alarm costs one rule, not eight.
        folded = self._folded_for_rules(text)
        if "key" in folded:
            text = _PRIVATE_KEY.sub(_PRIVATE_KEY_MARKER, text)
        if "eyj" in folded:
            text = _JWT.sub(_JWT_MARKER, text)
        if "@" in folded and "://" in folded:
            text = _URL_PASSWORD.sub(_redact_url_password, text)
        if "bearer" in folded:
            text = _BEARER.sub(_redact_bearer, text)
        if "basic" in folded:
            text = _BASIC.sub(_redact_basic, text)
        if any(name in folded for name in _TEXT_NAME_NEEDLES):
            text = _redact_assignments(text)
        if "akia" in folded:
            text = _AWS_ACCESS_KEY.sub(_AWS_MARKER, text)
        if _CARD_RUN in folded:
            text = _DIGIT_RUN.sub(_redact_cards, text)
        return text

    def _folded_for_rules(self, text: str) -> str:
        # The substrings of this text decide which rules scrub_text runs; a test overrides it
        # to run them all and so check that no rule is ever skipped wrongly.
        return _fold(text)

    def scrub_value(self, key: str, value: Any) -> Any:
        """``value`` of attribute ``key``: wholly a marker when the key names a credential (None
        stays None), else with the value rules applied to its strings, at any depth."""
        if key.casefold() in self._allowed:
            return value
        rule = self.rule_for_key(key)
        if rule is None:
            return self._scrub_any(value)
        if value is None:
            return None
        if isinstance(value, Mapping):  # keep the shape Sentry expects of e.g. "cookies"
            return {name: _marker(rule) for name in value}
        return _marker(rule)

    def scrub_mapping(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``mapping`` with the same keys and every value scrubbed, nested mappings
        and lists included (Sentry events are nested dicts)."""
        return {
            key: self.scrub_value(key if isinstance(key, str) else repr(key), value)
            for key, value in mapping.items()
        }

    def _scrub_any(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, Mapping):
            return self.scrub_mapping(value)
        if isinstance(value, list | tuple):
            return type(value)(self._scrub_any(item) for item in value)
        return value


_REWRITTEN = (str, Mapping, list, tuple)  # the types _scrub_any does not return as they are


def _collect_strings(items: Sequence[object], strings: list[str]) -> bool:
    """Append the strings of a list or tuple (at any depth) to ``strings``; False when an item
    is one ``Scrubber.strings_unchanged`` cannot vouch for."""
    for item in items:
        kind = type(item)
        if kind is str:
            strings.append(item)  # type: ignore[arg-type]
        elif kind is tuple or kind is list:
            if not _collect_strings(item, strings):  # type: ignore[arg-type]
                return False
        elif isinstance(item, _REWRITTEN):
            return False
    return True


def _non_empty_match(pattern: re.Pattern[str], text: str) -> bool:
    return any(match.end() > match.start() for match in pattern.finditer(text))


def _custom_marker(match: re.Match[str]) -> str:
    return _marker("custom") if match.end() > match.start() else ""


def resolve_scrubber(
    scrub: bool | None,
    patterns: Sequence[str] | None,
    allow: Sequence[str] | None,
    environ: Mapping[str, str],
) -> Scrubber | None:
    """The credential scrubber from its three settings, on unless turned off; None when off.

    A bad explicit pattern raises ``SettingsError`` naming ``scrub_patterns``; a bad pattern
    in the environment variable is reported once and skipped, keeping the others."""
    if not settings.resolve("scrub", scrub, environ):
        return None
    chosen: tuple[str, ...] = ()
    for pattern in settings.resolve("scrub_patterns", patterns, environ):
        try:
            _compile_extra(pattern)
        except ValueError as exc:
            if patterns is not None:
                raise SettingsError(f"scrub_patterns: {exc}") from None
            report_once(settings.setting("scrub_patterns").variables[0], pattern, f"{exc}; skipped")
        else:
            chosen += (pattern,)
    allowed: tuple[str, ...] = settings.resolve("scrub_allow", allow, environ)
    return Scrubber(extra_patterns=chosen, allowed_keys=allowed)
