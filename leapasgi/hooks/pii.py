"""PiiRedactor: personal data taken out of prompts before they leave the gateway."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from .base import Hook, HookContext

__all__ = ["DEFAULT_REPLACEMENT", "PII_KINDS", "PiiRedactor"]

# ``{kind}`` becomes the upper-case name of what was found: "[EMAIL]", "[CREDIT_CARD]".
DEFAULT_REPLACEMENT = "[{kind}]"
# Phone numbers: at least this many digits, fewer with a leading "+" (dates stay).
PHONE_MIN_DIGITS = 10
PHONE_MIN_DIGITS_INTERNATIONAL = 8
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


def _luhn(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _iban(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    least = PHONE_MIN_DIGITS_INTERNATIONAL if text.startswith("+") else PHONE_MIN_DIGITS
    return least <= digits <= 15


# In the order they are applied: the specific before the loose (a card number is not a phone).
_BUILT_IN: dict[str, tuple[str, Callable[[str], bool] | None]] = {
    "email": (r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", None),
    "iban": (r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", _iban),
    "credit_card": (r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)", _luhn),
    "ssn": (r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)", None),
    "ipv4": (rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])", None),
    "phone": (
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)",
        _phone,
    ),
}
PII_KINDS: tuple[str, ...] = tuple(_BUILT_IN)


class PiiRedactor(Hook):
    """Replaces e-mail addresses, phone numbers, credit card numbers (Luhn-checked), IBANs
    (checksum-checked), US SSNs and IPv4 addresses in every text part of a prompt, in any
    protocol, before a provider sees it. ``kinds`` picks the built-in ones (all by default),
    ``patterns`` adds regexes by name, ``replacement`` may use ``{kind}``."""

    name = "pii"

    def __init__(
        self,
        *,
        kinds: Iterable[str] | None = None,
        patterns: Mapping[str, str] | None = None,
        replacement: str = DEFAULT_REPLACEMENT,
    ) -> None:
        chosen = PII_KINDS if kinds is None else tuple(kinds)
        unknown = set(chosen) - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds: {', '.join(sorted(unknown))}")
        self._rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = []
        for kind in chosen:
            pattern, check = _BUILT_IN[kind]
            self._add(kind, pattern, check, replacement)
        for kind, pattern in (patterns or {}).items():
            try:
                self._add(kind, pattern, None, replacement)
            except re.error as exc:
                raise ValueError(f"pattern {kind!r} is not a valid regex: {exc}") from None

    def _add(
        self, kind: str, pattern: str, check: Callable[[str], bool] | None, replacement: str
    ) -> None:
        text = replacement.replace("{kind}", kind.upper())

        def replace(match: re.Match[str]) -> str:
            found = match.group(0)
            return text if check is None or check(found) else found

        self._rules.append((re.compile(pattern), replace))

    def redact(self, text: str) -> str:
        """``text`` with every match replaced."""
        for pattern, replace in self._rules:
            text = pattern.sub(replace, text)
        return text

    def before(self, ctx: HookContext) -> None:
        ctx.rewrite_texts(self.redact)
