import base64
import binascii
import urllib.parse

import pytest

from leapasgi.redact import REDACTED, Redactor

CANARY = "sk-canary-4f9a/0B+7e=Zq"
PREFIXES = ["", "a", "ab", "abc", "abcd", "abcde"]
SUFFIXES = ["", "x", "xy", "xyz", " and more text after it"]


def decodes_to(text: str, secret: str) -> bool:
    """True when some base64 run in ``text`` decodes to bytes containing ``secret``."""
    needle = secret.encode()
    for piece in text.split(REDACTED):
        for start in range(4):
            run = piece[start:]
            run = run[: len(run) // 4 * 4]
            try:
                if needle in base64.b64decode(run):
                    return True
            except (binascii.Error, ValueError):
                continue
    return False


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_raw_secret_is_removed_anywhere(prefix: str, suffix: str) -> None:
    redact = Redactor([CANARY])

    out = redact(f"upstream said: {prefix}{CANARY}{suffix}")

    assert CANARY not in out
    assert out == f"upstream said: {prefix}{REDACTED}{suffix}"


@pytest.mark.parametrize(
    "encoded", [urllib.parse.quote(CANARY, safe=""), urllib.parse.quote_plus(CANARY)]
)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_url_encoded_secret_is_removed(encoded: str, prefix: str) -> None:
    redact = Redactor([CANARY])

    out = redact(f"GET /v1/models?{prefix}key={encoded}&x=1")

    assert CANARY not in urllib.parse.unquote_plus(out)
    assert out == f"GET /v1/models?{prefix}key={REDACTED}&x=1"


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_base64_secret_is_removed_at_any_alignment(prefix: str, suffix: str) -> None:
    redact = Redactor([CANARY])
    encoded = base64.b64encode(f"{prefix}{CANARY}{suffix}".encode()).decode()
    assert decodes_to(encoded, CANARY)

    out = redact(f"Authorization: Basic {encoded}")

    assert REDACTED in out
    assert not decodes_to(out, CANARY)


def test_base64_of_a_short_secret_is_removed_at_every_alignment() -> None:
    secret = "abcdef"
    redact = Redactor([secret])

    for prefix in PREFIXES:
        for suffix in SUFFIXES:
            encoded = base64.b64encode(f"{prefix}{secret}{suffix}".encode()).decode()
            assert not decodes_to(redact(encoded), secret), (prefix, suffix)


def test_every_secret_is_removed() -> None:
    redact = Redactor(["first-secret-1", "second-secret-2", ""])

    out = redact("keys: first-secret-1, second-secret-2")

    assert out == f"keys: {REDACTED}, {REDACTED}"


@pytest.mark.parametrize("secret", ["a", "key", "12345"])
def test_short_secrets_are_left_alone(secret: str) -> None:
    text = f"a key of 12345 {secret} stays readable"

    assert Redactor([secret])(text) == text


def test_text_without_secrets_is_unchanged() -> None:
    text = "The model `gpt-x` does not exist"

    assert Redactor([CANARY])(text) == text


def test_repr_does_not_show_secrets() -> None:
    text = repr(Redactor([CANARY]))

    assert CANARY not in text
    assert urllib.parse.quote(CANARY, safe="") not in text
    assert "canary" not in text


@pytest.mark.parametrize(
    "encoded", [urllib.parse.quote(CANARY), urllib.parse.quote_plus(CANARY, safe="/")]
)
def test_url_encoded_secret_with_its_slashes_kept_is_removed(encoded: str) -> None:
    # quote() keeps "/" unless told otherwise; so do most URL builders.
    out = Redactor([CANARY])(f"sent as {encoded}.")

    assert out == f"sent as {REDACTED}."
