"""Secret scrubbing: each rule with positive and negative examples, the superset tests proved
sound by property tests, extra patterns and the allow-list. What the fast path costs is
measured by ``make bench`` (benchmarks/bench_exporter_cpu.py), not here."""

from __future__ import annotations

import base64
import json
import string
import time
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from otel_pg_exporter.export.scrubbing import (
    DEFAULT_KEY_RULES,
    DEFAULT_VALUE_RULES,
    REDACTED,
    Scrubber,
)
from otel_pg_exporter.settings import parse_keys, parse_patterns

SCRUBBER = Scrubber()
RULE_NAMES = (
    {rule.rule for rule in DEFAULT_KEY_RULES}
    | {
        "url-password",
        "aws-access-key",
        "custom",
    }
    | {name for name, _ in DEFAULT_VALUE_RULES if not name.startswith("<")}
)
ALL_MARKERS = " ".join(REDACTED.format(rule=rule) for rule in sorted(RULE_NAMES))

# What the exporter writes: compact, non-ASCII kept (mapping.py's encoder).
TYPICAL_ATTRIBUTES: dict[str, Any] = {
    "http.method": "GET",
    "http.url": "https://api.example.com/v1/orders/12345?expand=items",
    "http.status_code": 200,
    "net.peer.ip": "10.0.0.12",
    "user_agent.original": "curl/8.4.0",
}
TYPICAL_DOCUMENTS = (
    TYPICAL_ATTRIBUTES,
    {
        "db.system": "postgresql",
        "db.name": "shop",
        "db.statement": "SELECT id, total FROM orders WHERE customer_id = $1",
        "db.user": "app",
        "net.peer.name": "db.internal",
    },
    {
        "http.request.method": "POST",
        "url.full": "https://service.internal/v2/checkout",
        "server.address": "service.internal",
        "server.port": 8443,
        "http.response.status_code": 201,
    },
)


def marker(rule: str) -> str:
    """The marker a secret of ``rule`` becomes."""
    return REDACTED.format(rule=rule)


def encoded(document: Any) -> str:
    """``document`` as the exporter encodes a jsonb column."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


class UngatedScrubber(Scrubber):
    """Applies every rule to every string, to check that the superset tests never skip one."""

    def values_might_contain_secret(self, text: str) -> bool:
        """Always take the slow path."""
        return True

    def _folded_for_rules(self, text: str) -> str:
        """Open every rule's gate."""
        return "@ :// 0000000000000 pass pwd secret token key cookie jwt eyj bearer basic akia"


UNGATED = UngatedScrubber()


# --- the key rule ------------------------------------------------------------------------------

CREDENTIAL_KEYS = {
    "password": "password",
    "passwd": "password",
    "pwd": "password",
    "pass": "password",
    "db.pass": "password",
    "DB_PASSWORD": "password",
    "sslpassword": "password",
    "user.password2": "password",
    "secret": "secret",
    "client_secret": "secret",
    "aws.secret_access_key": "secret",
    "credentials": "secret",
    "token": "token",
    "access_token": "token",
    "refresh_token": "token",
    "id_token": "token",
    "accessToken": "token",
    "csrftoken": "token",
    "api_key": "api-key",
    "apikey": "api-key",
    "x-api-key": "api-key",
    "apiKey": "api-key",
    "authorization": "authorization",
    "proxy-authorization": "authorization",
    "auth": "authorization",
    "auth_token": "authorization",
    "cookie": "cookie",
    "set-cookie": "cookie",
    "http.request.header.cookie": "cookie",
    "http.response.header.set-cookie": "cookie",
    "session": "session",
    "session_id": "session",
    "sessionid": "session",
    "session.id": "session",
    "JSESSIONID": "session",
    "PHPSESSID": "session",
    "jwt": "jwt",
    "private_key": "private-key",
    "privatekey": "private-key",
    "credit_card": "credit-card",
    "card_number": "credit-card",
    "cardnumber": "credit-card",
    "cvv": "credit-card",
    "cvc": "credit-card",
    "ssn": "ssn",
    "http.request.header.authorization": "authorization",
    "http.request.header.x-api-key": "api-key",
    "PaSsWoRd": "password",
}

ORDINARY_KEYS = (
    "author",
    "authority",
    "http.request.header.:authority",
    "tokenizer.vocab_size",
    "gen_ai.usage.input_tokens",
    "token_count",
    "llm.token_count.prompt",
    "sessions_count",
    "session.duration",
    "password_length",
    "secret_name",
    "ssh.private_key_path",
    "db.connection_string",
    "bypass",
    "compass",
    "passenger",
    "cache.key",
    "api.version",
    "secretary",
    "http.url",
    "enduser.id",
)


@pytest.mark.parametrize(("key", "rule"), sorted(CREDENTIAL_KEYS.items()))
def test_credential_keys_name_their_rule(key: str, rule: str) -> None:
    """Every credential spelling, OTel header attribute and compound maps to its rule."""
    assert rule == SCRUBBER.rule_for_key(key)


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys_are_not_credentials(key: str) -> None:
    """Look-alikes, plurals (token counts) and words describing a secret stay readable."""
    assert None is SCRUBBER.rule_for_key(key)


@pytest.mark.parametrize(
    "value", ["hunter2", 1234, 12.5, True, ["a", "b"], ("a",), b"raw", {"nested": "x"}]
)
def test_a_credential_key_hides_its_whole_value(value: Any) -> None:
    """Whatever the type, nothing of a credential key's value survives."""
    scrubbed = SCRUBBER.scrub_value("db.password", value)
    expected: Any = (
        {"nested": marker("password")} if isinstance(value, dict) else marker("password")
    )
    assert expected == scrubbed


def test_a_credential_key_keeps_none() -> None:
    """None says the attribute was absent; there is nothing to hide."""
    assert None is SCRUBBER.scrub_value("password", None)


def test_connection_string_key_redacts_only_the_password() -> None:
    """db.connection_string is no credential key: its value rules keep the rest of the DSN."""
    value = "postgresql://app:hunter2@db:5432/shop"
    expected = f"postgresql://app:{marker('url-password')}@db:5432/shop"
    assert expected == SCRUBBER.scrub_value("db.connection_string", value)


def test_sequences_have_their_strings_scrubbed_and_keep_their_type() -> None:
    """Strings in a sequence go through the value rules; numbers and the tuple type stay."""
    value = ("Bearer abc123", 42, "plain")
    expected = (f"Bearer {marker('token')}", 42, "plain")
    assert expected == SCRUBBER.scrub_value("http.headers", value)


def test_nested_event_is_scrubbed_at_every_depth() -> None:
    """A Sentry-like event: nested dicts and lists, keys kept, secrets gone."""
    event = {
        "request": {
            "url": "https://u:pw123456@example.com/x?token=abcdef&page=2",
            "headers": {"Authorization": "Basic dXNlcjpwYXNz", "Accept": "*/*"},
            "cookies": {"sessionid": "s3ss10n", "theme": "dark"},
        },
        "breadcrumbs": {"values": [{"message": "login password=hunter2 ok", "level": "info"}]},
        "extra": {"attempts": 3, "note": None},
    }
    expected = {
        "request": {
            "url": (
                f"https://u:{marker('url-password')}@example.com/x?token={marker('token')}&page=2"
            ),
            "headers": {"Authorization": marker("authorization"), "Accept": "*/*"},
            "cookies": {"sessionid": marker("cookie"), "theme": marker("cookie")},
        },
        "breadcrumbs": {
            "values": [{"message": f"login password={marker('password')} ok", "level": "info"}]
        },
        "extra": {"attempts": 3, "note": None},
    }
    assert expected == SCRUBBER.scrub_mapping(event)


# --- the value rules -----------------------------------------------------------------------------

REDACTED_TEXTS = [
    # URL passwords, the rest of the URL kept
    (
        "postgresql://app:s3cr@t:x@db.example.com:5432/shop?sslmode=require",
        f"postgresql://app:{marker('url-password')}@db.example.com:5432/shop?sslmode=require",
    ),
    ("redis://:hunter2@cache:6379/0", f"redis://:{marker('url-password')}@cache:6379/0"),
    ("jdbc:mysql://root:pw@h/db", f"jdbc:mysql://root:{marker('url-password')}@h/db"),
    # libpq keywords, quoted or not
    ("host=db password=hunter2 dbname=x", f"host=db password={marker('password')} dbname=x"),
    ("host=db password = 'a b\\'c' port=5", f"host=db password = '{marker('password')}' port=5"),
    ("sslpassword=abc", f"sslpassword={marker('password')}"),
    # query strings: only the value
    (
        "https://x/cb?pwd=1&secret=2&token=3&api_key=4&access_token=5&page=2#top",
        "https://x/cb?pwd={}&secret={}&token={}&api_key={}&access_token={}&page=2#top".format(
            marker("password"),
            marker("secret"),
            marker("token"),
            marker("api-key"),
            marker("token"),
        ),
    ),
    ("/login?password=p%40ss", f"/login?password={marker('password')}"),
    # header schemes
    ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {marker('token')}"),
    ("bearer xyz", f"bearer {marker('token')}"),
    ("Basic dXNlcjpwYXNz", f"Basic {marker('token')}"),
    # JWTs, PEM keys, AWS ids
    ("id eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln_-x end", f"id {marker('jwt')} end"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY----- ok",
        f"{marker('private-key')} ok",
    ),
    ("key: -----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn", f"key: {marker('private-key')}"),
    ("id AKIAIOSFODNN7EXAMPLE.", f"id {marker('aws-access-key')}."),
    # credit cards, Luhn-valid, with or without separators
    ("card 4111 1111 1111 1111, thanks", f"card {marker('credit-card')}, thanks"),
    ("4111-1111-1111-1111", marker("credit-card")),
    ("amex 378282246310005!", f"amex {marker('credit-card')}!"),
    ("qty 12 4111 1111 1111 1111", f"qty 12 {marker('credit-card')}"),
    # names inside free text: log lines, JSON, Python reprs, command lines, cookies
    ("login password: hunter2 ok", f"login password: {marker('password')} ok"),
    (
        '{"user": "bob", "password": "x\\"y"}',
        f'{{"user": "bob", "password": "{marker("password")}"}}',
    ),
    ("{'api_key': 'k-123'}", f"{{'api_key': '{marker('api-key')}'}}"),
    ("run --password=abc --user=x", f"run --password={marker('password')} --user=x"),
    ("config: password=abc", f"config: password={marker('password')}"),
    ("Cookie: a=1; b=2\nnext", f"Cookie: {marker('cookie')}\nnext"),
    (
        "Server=x;User Id=u;Password=p;Encrypt=true",
        f"Server=x;User Id=u;Password={marker('password')};Encrypt=true",
    ),
]


@pytest.mark.parametrize(("text", "expected"), REDACTED_TEXTS)
def test_value_rules_redact_only_the_secret(text: str, expected: str) -> None:
    """Each value rule replaces the secret and keeps the text around it."""
    assert expected == SCRUBBER.scrub_text(text)


UNTOUCHED_TEXTS = (
    "https://api.example.com/v1/orders/12345?expand=items",
    "https://user@example.com/x",
    "mailto:someone@example.com",
    "ssh git@github.com:org/repo.git",
    "order 1234567890123456 shipped",  # 16 digits failing the Luhn check
    "id 12345678901234567890123",  # too long for a card
    "2024-01-15 10:30:00",
    "uses basic authentication",
    "Basic YWJjZGVmZ2g=",  # base64 without the user:password colon
    "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
    "eyJhbGciOiJIUzI1NiJ9 alone",
    "token_count=5 input_tokens: 3",
    "the password is required",
    "SELECT password_hash FROM users",
    "AKIA too short",
)


@pytest.mark.parametrize("text", UNTOUCHED_TEXTS)
def test_look_alikes_are_left_alone(text: str) -> None:
    """Text that only resembles a secret comes back unchanged."""
    assert text == SCRUBBER.scrub_text(text)
    assert text == UNGATED.scrub_text(text)


def test_http_url_with_userinfo_is_scrubbed_as_an_attribute() -> None:
    """An http.url attribute keeps its URL but not its password."""
    attributes = {"http.url": "https://alice:wonder1and@api.example.com/x", "http.method": "GET"}
    expected = {
        "http.url": f"https://alice:{marker('url-password')}@api.example.com/x",
        "http.method": "GET",
    }
    assert expected == SCRUBBER.scrub_mapping(attributes)


def test_scrubbing_is_linear_on_adversarial_values() -> None:
    """Long runs built to make a backtracking rule quadratic are scrubbed in well under a second
    each (a quadratic rule would take minutes)."""
    size = 100_000
    for unit in ("a-", "eyJ", "1 ", "x://", "password=", "-----BEGIN PRIVATE KEY-----", "a:"):
        text = unit * (size // len(unit))
        started = time.perf_counter()
        SCRUBBER.scrub_text(text)
        UNGATED.scrub_text(text)
        assert time.perf_counter() - started < 5.0, unit


# --- the superset tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("document", TYPICAL_DOCUMENTS)
def test_typical_documents_take_the_fast_path(document: dict[str, Any]) -> None:
    """Ordinary HTTP and database attributes prove clean without the slow path."""
    assert (False, False, False) == (
        SCRUBBER.might_contain_secret(encoded(document)),
        SCRUBBER.values_might_contain_secret(encoded(document)),
        SCRUBBER.keys_need_scrubbing(document),
    )


SECRET_ALPHABET = string.ascii_letters + string.digits + "@:/?&=-._~+!$%*()[]{}^|,;<>#'\"\\ é€"


def secrets_without(excluded: str) -> st.SearchStrategy[str]:
    """Random 8-40 character secrets from the wide alphabet minus what the form forbids."""
    alphabet = "".join(char for char in SECRET_ALPHABET if char not in excluded)
    return st.text(alphabet=alphabet, min_size=8, max_size=40)


def random_case(draw: st.DrawFn, word: str) -> str:
    """``word`` with each letter's case chosen at random."""
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(word, flips, strict=True))


KEY_WORDS = sorted(
    {key.lower() for key in CREDENTIAL_KEYS if "." not in key and ":" not in key}
    | {"http_request_header_authorization", "http_request_header_cookie", "x_api_key"}
)


@st.composite
def credential_keys(draw: st.DrawFn) -> str:
    """A credential key: random case, random separators, optional prefix and suffix segments."""
    word = random_case(draw, draw(st.sampled_from(KEY_WORDS)))
    separator = draw(st.sampled_from(["_", "-", ".", " ", "::", "/"]))
    word = word.replace("_", separator)
    prefix = draw(st.sampled_from(["", "app.", "http.request.header.", "X-", "db::"]))
    suffix = draw(st.sampled_from(["", ".value", "_hash", "[0]", "-raw"]))
    return prefix + word + suffix


@st.composite
def credential_pairs(draw: st.DrawFn) -> tuple[str, Any, str]:
    """A credential key, its value (a string, a number, a list of strings) and the secret."""
    secret = draw(secrets_without(""))
    shape = draw(st.sampled_from(["str", "int", "list"]))
    value: Any = secret
    if shape == "int":
        number = draw(st.integers(min_value=10_000_000, max_value=10**30))
        value, secret = number, str(number)
    elif shape == "list":
        value = ["x", secret]
    return draw(credential_keys()), value, secret


def luhn_digit(digits: str) -> str:
    """The check digit making ``digits`` + it pass the Luhn check."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2 == 0:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """A Luhn-valid 13-19 digit number, maybe in groups of four split by spaces or dashes."""
    body = draw(st.text(alphabet=string.digits, min_size=12, max_size=18))
    number = body + luhn_digit(body)
    separator = draw(st.sampled_from(["", " ", "-"]))
    return separator.join(number[index : index + 4] for index in range(0, len(number), 4))


def b64url(data: bytes) -> str:
    """Unpadded base64url, as in JWTs."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


SECRET_NAMES = ("password", "pwd", "passwd", "secret", "token", "api_key", "access_token")


@st.composite
def names(draw: st.DrawFn) -> str:
    """A name whose value is redacted inside free text, in random case."""
    return random_case(draw, draw(st.sampled_from(SECRET_NAMES)))


@st.composite
def url_form(draw: st.DrawFn) -> tuple[str, str]:
    """scheme://user:SECRET@host, the secret holding anything a URL's userinfo can."""
    secret = draw(secrets_without("/?#\"'<>\\ \t\n"))
    user = draw(st.text(alphabet=string.ascii_lowercase, max_size=8))
    scheme = draw(st.sampled_from(["postgresql", "https", "redis", "amqp+ssl"]))
    return f"{scheme}://{user}:{secret}@db.example.com:5432/shop?x=1", secret


@st.composite
def dsn_form(draw: st.DrawFn) -> tuple[str, str]:
    """A libpq keyword DSN, the password unquoted or single-quoted with escapes."""
    if draw(st.booleans()):
        secret = draw(secrets_without("\"'\\ é€"))
        return f"host=db {draw(names())}={secret} dbname=shop", secret
    secret = draw(secrets_without("")).replace("\\", "\\\\").replace("'", "\\'")
    return f"host=db {draw(names())} = '{secret}' dbname=shop", secret


@st.composite
def query_form(draw: st.DrawFn) -> tuple[str, str]:
    """A query-string parameter between others."""
    secret = draw(secrets_without("&#\"' "))
    return f"https://api.example.com/cb?page=2&{draw(names())}={secret}&lang=en", secret


@st.composite
def header_form(draw: st.DrawFn) -> tuple[str, str]:
    """An Authorization header with Bearer credentials, or Basic ones encoding user:password."""
    if draw(st.booleans()):
        secret = draw(secrets_without("\"'\\,; "))
        return f"Authorization: Bearer {secret}", secret
    user = draw(st.text(alphabet=string.ascii_letters, max_size=8))
    password = draw(secrets_without(""))
    secret = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Authorization: Basic {secret}", secret


@st.composite
def jwt_form(draw: st.DrawFn) -> tuple[str, str]:
    """A signed JWT with random claims."""
    claims = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3))
    signature = draw(st.binary(min_size=16, max_size=32))
    parts = (b'{"alg":"HS256"}', json.dumps(claims).encode(), signature)
    secret = ".".join(b64url(part) for part in parts)
    return f"token {secret}", secret


@st.composite
def pem_form(draw: st.DrawFn) -> tuple[str, str]:
    """A PEM private key, whole or cut before its END line."""
    label = draw(st.sampled_from(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "]))
    secret = base64.b64encode(draw(st.binary(min_size=12, max_size=60))).decode()
    text = f"-----BEGIN {label}PRIVATE KEY-----\n{secret}\n"
    if draw(st.booleans()):
        text += f"-----END {label}PRIVATE KEY-----"
    return text, secret


@st.composite
def number_form(draw: st.DrawFn) -> tuple[str, str]:
    """A Luhn-valid card number or an AWS access key id in a sentence."""
    if draw(st.booleans()):
        secret = draw(card_numbers())
        return f"paid with {secret} today", secret
    alphabet = string.ascii_uppercase + string.digits
    secret = "AKIA" + draw(st.text(alphabet=alphabet, min_size=16, max_size=16))
    return f"key id {secret} used", secret


@st.composite
def named_form(draw: st.DrawFn) -> tuple[str, str]:
    """name: value in a log line, "name": "value" in JSON text, 'name': 'value' in a repr."""
    name = draw(names())
    shape = draw(st.sampled_from(["log", "json", "python"]))
    if shape == "log":
        secret = draw(secrets_without("\"' \t\n"))
        return f"user=bob {name}: {secret} ok", secret
    if shape == "json":
        raw = draw(secrets_without(""))
        return json.dumps({"user": "bob", name: raw}), json.dumps(raw)[1:-1]
    raw = draw(secrets_without("'\\"))
    return repr({name: raw, "user": "bob"}), raw


@st.composite
def embedded_secrets(draw: st.DrawFn) -> tuple[str, str]:
    """Free text holding one secret in one of the value-rule forms, and that secret as it
    appears in the text."""
    forms = (url_form, dsn_form, query_form, header_form, jwt_form, pem_form, number_form)
    text, secret = draw(st.one_of(*(form() for form in (*forms, named_form))))
    words = st.text(alphabet=string.ascii_letters + " .,:!", max_size=12)
    return f"{draw(words)} {text} {draw(words)}", secret


def assume_findable(text: str, secret: str) -> None:
    """Skip examples where the secret also occurs by accident outside its place (or inside a
    marker), which no scrubber could be blamed for."""
    assume(text.count(secret) == 1)
    assume(secret not in ALL_MARKERS)


@settings(max_examples=400)
@given(credential_pairs())
def test_no_secret_survives_under_a_credential_key(pair: tuple[str, Any, str]) -> None:
    """Under any credential key, the superset tests fire and the secret is gone."""
    key, value, secret = pair
    attributes = {key: value, "http.method": "GET"}
    for document in (json.dumps(attributes), encoded(attributes)):
        assert SCRUBBER.might_contain_secret(document)
    assert SCRUBBER.keys_need_scrubbing(attributes)
    assert secret not in json.dumps(SCRUBBER.scrub_mapping(attributes), ensure_ascii=False)


@st.composite
def rule_words(draw: st.DrawFn) -> tuple[str, str, bool]:
    """Any spelling a key rule's pattern allows, in random case, with its rule and whether it
    also counts as a name inside free text."""
    rule = draw(st.sampled_from(DEFAULT_KEY_RULES))
    word = draw(st.from_regex(f"(?i:{rule.pattern})", fullmatch=True).filter(str.isascii))
    return random_case(draw, word), rule.rule, rule.in_text


@settings(max_examples=400)
@given(rule_words(), st.sampled_from(["", "app.", "x-"]), st.sampled_from(["", ".raw", "_2"]))
def test_every_spelling_of_a_key_rule_is_caught(
    word: tuple[str, str, bool], prefix: str, suffix: str
) -> None:
    """Whatever a key rule's pattern matches is found by the superset tests and redacted, as a
    key and, for in-text names, as name=value inside free text."""
    spelling, rule, in_text = word
    key = prefix + spelling + suffix
    attributes = {key: "s3cr3tv4lue"}
    assert rule == SCRUBBER.rule_for_key(key)
    assert SCRUBBER.might_contain_secret(encoded(attributes))
    assert SCRUBBER.keys_need_scrubbing(attributes)
    if in_text:
        text = f"before {key}=s3cr3tv4lue\nafter"  # a cookie's value runs to the line end
        assert SCRUBBER.values_might_contain_secret(text)
        assert f"before {key}={marker(rule)}\nafter" == SCRUBBER.scrub_text(text)


@settings(max_examples=600)
@given(embedded_secrets())
def test_no_secret_survives_in_free_text(case: tuple[str, str]) -> None:
    """Every value-rule form, anywhere in a value, fires the superset tests and is redacted."""
    text, secret = case
    assume_findable(text, secret)
    attributes = {"message": text}
    for document in (json.dumps(attributes), encoded(attributes), text):
        assert SCRUBBER.might_contain_secret(document)
        assert SCRUBBER.values_might_contain_secret(document)
    scrubbed = SCRUBBER.scrub_mapping(attributes)
    assert secret not in json.dumps(scrubbed, ensure_ascii=False)
    assert secret not in SCRUBBER.scrub_text(text)


FRAGMENTS = [
    *("password", "pwd", "secret", "token", "api_key", "cookie", "jwt", "private_key", "Bearer"),
    *("Basic dXNlcjpwYXNz", "eyJ", "eyJhbGciOiJIUzI1NiJ9.", "x.", "-----BEGIN PRIVATE KEY-----"),
    *("://", "u:p@h", "@", ":", "=", "?", "&", ";", " ", "\n", '"', "'", "\\", "--"),
    *("4111", "1111", "-", "AKIA", "IOSFODNN7EXAMPLE", "0", "7", "[REDACTED:token]"),
]
fragment_texts = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=12
).map("".join)


@settings(max_examples=1000)
@given(fragment_texts)
def test_value_superset_false_means_nothing_to_change(text: str) -> None:
    """Whenever the value superset test says False, applying every value rule changes nothing."""
    if not SCRUBBER.values_might_contain_secret(text):
        assert text == UNGATED.scrub_text(text)


@settings(max_examples=500)
@given(st.dictionaries(fragment_texts, st.one_of(fragment_texts, st.integers()), max_size=4))
def test_document_superset_false_means_nothing_to_change(attributes: dict[str, Any]) -> None:
    """Whenever the document superset test says False, no key or value rule changes anything."""
    if not SCRUBBER.might_contain_secret(encoded(attributes)):
        assert attributes == UNGATED.scrub_mapping(attributes)
    if not SCRUBBER.keys_need_scrubbing(attributes) and not SCRUBBER.values_might_contain_secret(
        encoded(attributes)
    ):
        assert attributes == UNGATED.scrub_mapping(attributes)


@settings(max_examples=1000)
@given(
    st.lists(
        st.one_of(
            fragment_texts,
            st.integers(),
            st.lists(fragment_texts, max_size=3),
            st.lists(fragment_texts, max_size=3).map(tuple),
        ),
        max_size=4,
    ),
    st.lists(fragment_texts, max_size=2),
)
def test_strings_superset_true_means_nothing_to_change(values: list[Any], texts: list[str]) -> None:
    """Whenever the strings-only test vouches for some values and texts, applying every value
    rule to them under ordinary keys changes nothing."""
    if SCRUBBER.strings_unchanged(values, texts):
        attributes = {f"v{index}": value for index, value in enumerate(values)}
        assert (attributes, texts) == (
            UNGATED.scrub_mapping(attributes),
            [UNGATED.scrub_text(text) for text in texts],
        )


class Text(str):
    """A str subclass, which scrubbing may return as a plain str."""


@pytest.mark.parametrize(
    "value", [{"note": "ok"}, Text("ok"), ["ok", {"a": 1}], ("ok", Text("x"))], ids=repr
)
def test_strings_superset_does_not_vouch_for_what_scrubbing_rebuilds(value: Any) -> None:
    """Mappings and subclasses of str, list or tuple, at any depth, are left to the slow
    path."""
    assert (True, False) == (
        SCRUBBER.strings_unchanged(["ok", 1, 2.5, None, b"x", ("a", ["b"])]),
        SCRUBBER.strings_unchanged(["ok", value]),
    )


def test_strings_superset_ignores_keys_but_not_values() -> None:
    """A document that fires only for its keys (``cache.key``) is vouched for by its values;
    a secret-looking value is not."""
    harmless = {"cache.key": "user:1", "messaging.kafka.message.key": "order-17"}
    assert (True, True, False) == (
        SCRUBBER.values_might_contain_secret(encoded(harmless)),
        SCRUBBER.strings_unchanged(harmless.values()),
        SCRUBBER.strings_unchanged(["user:1", "Bearer abc"]),
    )


# --- extra patterns and the allow-list ----------------------------------------------------------


def test_extra_patterns_match_keys_and_inside_values_case_insensitively() -> None:
    """A user pattern redacts a matching key's value and each match inside other values."""
    scrubber = Scrubber(extra_patterns=[r"sk-[a-z0-9]{8,}", "internal_note"])
    attributes = {"Internal_Note": "anything", "msg": "key SK-ABCD1234ef used", "ok": "fine"}
    expected = {
        "Internal_Note": marker("custom"),
        "msg": f"key {marker('custom')} used",
        "ok": "fine",
    }
    assert expected == scrubber.scrub_mapping(attributes)
    assert scrubber.might_contain_secret(encoded({"msg": "key SK-ABCD1234ef used"}))
    assert not scrubber.might_contain_secret(encoded(TYPICAL_ATTRIBUTES))


@settings(max_examples=200)
@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=20), st.text())
def test_extra_pattern_superset_holds_in_json(token: str, noise: str) -> None:
    """A value an extra pattern matches makes the document superset test fire, escaped or not."""
    scrubber = Scrubber(extra_patterns=[r"\bsk-[A-Za-z0-9]{8,}\b"])
    attributes = {"note": f"{noise} sk-{token}"}
    assume(scrubber.scrub_mapping(attributes) != attributes)
    for document in (json.dumps(attributes), encoded(attributes)):
        assert scrubber.might_contain_secret(document)
        assert scrubber.values_might_contain_secret(document)


def test_anchored_extra_patterns_always_take_the_slow_path() -> None:
    """An anchored pattern cannot be searched in a document, so every document is suspect."""
    scrubber = Scrubber(extra_patterns=["^internal-[0-9]+$"])
    assert scrubber.might_contain_secret(encoded(TYPICAL_ATTRIBUTES))
    assert {"id": marker("custom")} == scrubber.scrub_mapping({"id": "internal-42"})


@pytest.mark.parametrize("pattern", ["(unclosed", "a{2,1}", "*x"])
def test_an_invalid_extra_pattern_is_refused_by_name(pattern: str) -> None:
    """An invalid regular expression raises ValueError quoting it."""
    with pytest.raises(ValueError, match="extra_patterns") as raised:
        Scrubber(extra_patterns=[pattern])
    assert repr(pattern) in str(raised.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"extra_patterns": ["x*"]}, "matches the empty string"),
        ({"extra_patterns": "sk-.*"}, "extra_patterns must be a sequence of str"),
        ({"extra_patterns": [3]}, "extra_patterns must hold only str"),
        ({"allowed_keys": "session.id"}, "allowed_keys must be a sequence of str"),
        ({"allowed_keys": [None]}, "allowed_keys must hold only str"),
    ],
)
def test_bad_arguments_are_refused_by_name(arguments: dict[str, Any], message: str) -> None:
    """A pattern matching nothing but emptiness, a bare string or a non-string raises."""
    with pytest.raises(ValueError, match=message):
        Scrubber(**arguments)


def test_allowed_keys_are_left_untouched_entirely() -> None:
    """The user vouches for an allowed key: neither the key rule nor the value rules apply."""
    scrubber = Scrubber(allowed_keys=["Session.Id", "debug.dsn"])
    attributes = {
        "session.id": "abc123",
        "DEBUG.DSN": "postgresql://u:hunter2@h/db",
        "session.token": "abc123",
    }
    expected = {
        "session.id": "abc123",
        "DEBUG.DSN": "postgresql://u:hunter2@h/db",
        "session.token": marker("session"),
    }
    assert expected == scrubber.scrub_mapping(attributes)
    assert (None, False) == (
        scrubber.rule_for_key("session.id"),
        scrubber.keys_need_scrubbing(["session.id", "DEBUG.DSN"]),
    )


def test_key_verdicts_are_remembered_within_a_bound() -> None:
    """Many distinct keys never grow the caches past their bound, and verdicts stay right."""
    scrubber = Scrubber()
    keys = [f"attribute.{index}" for index in range(10_000)]
    assert (False, True) == (
        scrubber.keys_need_scrubbing(keys),
        scrubber.keys_need_scrubbing([*keys[:3], "x.password"]),
    )
    assert len(scrubber._clean_keys) <= 4096 and len(scrubber._key_rules) <= 4096


# --- environment strings -----------------------------------------------------------------------


def test_parse_patterns_splits_on_double_semicolons_and_newlines() -> None:
    """``;;`` and newlines separate patterns; blanks and surrounding spaces are dropped."""
    expected = ("sk-[a-z]+", "a;b", "ghp_[0-9]{4}", "x")
    assert expected == parse_patterns(" sk-[a-z]+ ;;a;b;;\nghp_[0-9]{4}\n\n;; ;;x")


@given(
    st.lists(
        st.text(min_size=1).filter(
            lambda p: (
                ";;" not in p
                and "\n" not in p
                and p == p.strip()
                and not p.endswith(";")
                and not p.startswith(";")
            )
        ),
        max_size=5,
    )
)
def test_parse_patterns_round_trips(patterns: list[str]) -> None:
    """Patterns joined with the separator come back as they were."""
    assert tuple(patterns) == parse_patterns(";;".join(patterns))


def test_parse_keys_splits_on_commas() -> None:
    """Comma-separated keys, blanks and surrounding spaces dropped."""
    assert ("session.id", "x-request-id") == parse_keys(" session.id ,, x-request-id,")


# --- ids that look like card numbers -----------------------------------------------------------


def test_ids_whose_digit_runs_pass_luhn_are_kept() -> None:
    """A hex event id or UUID holding a Luhn-valid run of digits is an id, not a card."""
    scrubber = Scrubber()
    event_id = "8e4111111111111111ddaf56b838e0c30"
    uuid_like = "a4111111-1111-1111-1111-111111111111"
    assert {"sentry.event_id": event_id, "request.id": uuid_like} == scrubber.scrub_mapping(
        {"sentry.event_id": event_id, "request.id": uuid_like}
    )


_NEEDLE_ALPHABET = st.sampled_from(list("0123456789 -@:/aAbBcCdDeEiIjJkKnNoOpPrRsStTuUvVwWyYéü\n"))


_NEEDLE_EXAMPLES = (
    "a://b@c",
    "a@b://",
    "4111 1111 1111 1111",
    "411111111111",
    "PASSWORD",
    "Secret",
    "x-api-key",
    "AKIA",
    "pwd",
    "JWT",
    "eyJ",
    "Bearer",
    "BASIC",
    "AUTH",
    "session",
    "card",
    "ssn",
    "cred",
    "cvv",
    "cvc",
    "token",
    "cookie",
    "tok en",
    "ke y",
    "",
)


@settings(max_examples=2000)
@given(st.one_of(st.sampled_from(_NEEDLE_EXAMPLES), st.text(_NEEDLE_ALPHABET, max_size=40)))
def test_the_needle_tables_say_what_the_needle_functions_say(text: str) -> None:
    """VALUE_NEEDLES and KEY_ONLY_NEEDLES (which the compiled fast path searches) answer as
    _value_needle_in and _key_only_needle_in do, on any folded text."""
    from otel_pg_exporter.export import scrubbing

    folded = scrubbing._fold(text)
    by_table = (
        any(all(needle in folded for needle in group) for group in scrubbing.VALUE_NEEDLES),
        any(needle in folded for needle in scrubbing.KEY_ONLY_NEEDLES),
    )

    assert (scrubbing._value_needle_in(folded), scrubbing._key_only_needle_in(folded)) == by_table
