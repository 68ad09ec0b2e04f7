"""What of a Messages client's headers a native upstream receives: the allow-list, and only
printable values of a sane length."""

from __future__ import annotations

from leapasgi.asgi.messages import MAX_FORWARDED_VALUE, forwarded


def scope(*headers: tuple[bytes, bytes]) -> dict[str, object]:
    return {"type": "http", "headers": list(headers)}


def test_only_the_allow_listed_headers_pass() -> None:
    got = forwarded(
        scope(
            (b"anthropic-version", b"2023-06-01"),
            (b"anthropic-beta", b"prompt-caching-2024-07-31,unknown-beta-2099"),
            (b"authorization", b"Bearer client-key"),
            (b"x-api-key", b"client-key"),
            (b"cookie", b"session=1"),
            (b"x-claude-code-session-id", b"abc"),
        )
    )
    assert got == {
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "prompt-caching-2024-07-31,unknown-beta-2099",
    }


def test_control_characters_non_ascii_and_huge_values_are_dropped_not_mangled() -> None:
    got = forwarded(
        scope(
            (b"anthropic-beta", b"a\r\nx-injected: 1"),
            (b"anthropic-version", "2023-06-01\u00e9".encode("latin-1")),
        )
    )
    assert got == {}
    huge = forwarded(scope((b"anthropic-beta", b"b" * (MAX_FORWARDED_VALUE + 1))))
    assert huge == {}
