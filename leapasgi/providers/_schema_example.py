"""Deterministic example values that validate against a JSON Schema, for the mock provider."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, ClassVar

__all__ = ["example_for_schema"]

MAX_DEPTH = 48
"""Nesting beyond this gives up on optional parts; it also stops runaway ``allOf`` refs."""

_FORMATS: Mapping[str, str] = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "iri-reference": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
}
_CATEGORY_CHARS: Mapping[str, str] = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
}
_TIGHTEST_LOW = frozenset({"minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"})
_TIGHTEST_HIGH = frozenset(
    {"maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"}
)
_DEFERRED = frozenset({"$ref", "anyOf", "oneOf"})
_OBJECT_KEYS = ("properties", "required", "additionalProperties", "minProperties")
_ARRAY_KEYS = ("items", "prefixItems", "minItems", "maxItems", "uniqueItems")
_STRING_KEYS = ("minLength", "maxLength", "pattern", "format")
_NUMBER_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")


class _NoExample(Exception):
    """No value fits here: a ``$ref`` cycle, a ``false`` schema, or nesting too deep."""


def example_for_schema(schema: Mapping[str, Any] | bool | None) -> Any:
    """A deterministic value that validates against ``schema``; ``{}`` when there is none."""
    if schema is None or schema is True:
        return {}
    if schema is False:
        return None
    try:
        return _Builder(schema).build(schema, 0)
    except _NoExample:
        return {}


class _Builder:
    """Walks one schema document; ``$ref`` pointers resolve against its root."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root
        self._refs: list[str] = ["#"]  # the root is being expanded too
        self._depth = 0

    def build(self, schema: Any, variant: int) -> Any:
        if schema is True or schema is None:
            return {}
        if not isinstance(schema, Mapping) or self._depth >= MAX_DEPTH:
            raise _NoExample
        self._depth += 1
        try:
            return self._build(schema, variant)
        finally:
            self._depth -= 1

    def _build(self, schema: Mapping[str, Any], variant: int) -> Any:
        if "$ref" in schema:
            return self._ref(schema, variant)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self._first_branch(_without(schema, key), schema[key], variant)
        if "allOf" in schema:
            merged: Mapping[str, Any] = _without(schema, "allOf")
            for branch in schema["allOf"]:
                merged = _merge(merged, branch)
            return self.build(merged, variant)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            if not schema["enum"]:
                raise _NoExample
            return schema["enum"][variant % len(schema["enum"])]
        for kind in _types(schema):
            builder = self._KINDS.get(kind)
            if builder is None:
                continue
            try:
                return builder(self, schema, variant)
            except _NoExample:
                continue
        raise _NoExample

    def _ref(self, schema: Mapping[str, Any], variant: int) -> Any:
        ref = schema["$ref"]
        # A ref already being expanded is a cycle: fail this branch so that an enclosing optional
        # property, empty array or other anyOf branch ends the recursion.
        if not isinstance(ref, str) or ref in self._refs:
            raise _NoExample
        rest = _without(schema, "$ref")
        target = self._resolve(ref)
        self._refs.append(ref)
        try:
            return self.build(_merge(target, rest) if rest else target, variant)
        finally:
            self._refs.pop()

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self._root
        for part in ref[1:].split("/")[1:]:
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, Mapping) and key in node:
                node = node[key]
            else:
                return {}
        return node

    def _first_branch(self, rest: Mapping[str, Any], branches: Any, variant: int) -> Any:
        for branch in branches:
            try:
                return self.build(_merge(rest, branch), variant)
            except _NoExample:
                continue
        raise _NoExample

    def _object(self, schema: Mapping[str, Any], variant: int) -> dict[str, Any]:
        required = list(schema.get("required", ()))
        extra = schema.get("additionalProperties", True)
        extra_schema = extra if isinstance(extra, Mapping) else {}
        out: dict[str, Any] = {}
        for name, sub in (schema.get("properties") or {}).items():
            try:
                out[name] = self.build(sub, variant)
            except _NoExample:
                if name in required:
                    raise
        for name in required:
            if name not in out:
                out[name] = self.build(extra_schema, variant)
        limit = schema.get("maxProperties")
        for name in [n for n in reversed(out) if n not in required]:
            if limit is None or len(out) <= limit:
                break
            del out[name]
        serial = 0
        while len(out) < schema.get("minProperties", 0) and extra is not False:
            out.setdefault(f"key{serial}", self.build(extra_schema, variant + serial))
            serial += 1
        return out

    def _array(self, schema: Mapping[str, Any], variant: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        if isinstance(items, list):  # the tuple form of drafts 4 to 7
            prefix, items = items, schema.get("additionalItems", {})
        low = schema.get("minItems", 0)
        count = max(low, len(prefix), 1)
        if schema.get("maxItems") is not None:
            count = min(count, schema["maxItems"])
        if items is False:
            count = min(count, len(prefix))
        out: list[Any] = []
        for index in range(count):
            sub = prefix[index] if index < len(prefix) else items
            try:
                out.append(self.build(sub, variant + index))
            except _NoExample:
                if index < low:
                    raise
                break
        return out

    def _string(self, schema: Mapping[str, Any], variant: int) -> str:
        text = _FORMATS.get(schema.get("format", ""), f"example{variant or ''}")
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and not _matches(pattern, text):
            text = _from_pattern(pattern) or text
        fitted = _fit_length(text, schema)
        if isinstance(pattern, str) and not _matches(pattern, fitted):
            return text
        return fitted

    def _integer(self, schema: Mapping[str, Any], variant: int) -> int:
        step = Fraction(str(schema.get("multipleOf", 1)))
        # Integer multiples of p/q (in lowest terms) are exactly the multiples of p.
        return int(_on_grid(schema, Fraction(step.numerator), 1, variant))

    def _number(self, schema: Mapping[str, Any], variant: int) -> float:
        if "multipleOf" in schema:
            return float(_on_grid(schema, Fraction(str(schema["multipleOf"])), 1.5, variant))
        return _continuous(schema, 1.5 + variant)

    def _boolean(self, schema: Mapping[str, Any], variant: int) -> bool:
        return variant % 2 == 0

    def _null(self, schema: Mapping[str, Any], variant: int) -> None:
        return None

    _KINDS: ClassVar[Mapping[str, Callable[[_Builder, Mapping[str, Any], int], Any]]] = {
        "object": _object,
        "array": _array,
        "string": _string,
        "integer": _integer,
        "number": _number,
        "boolean": _boolean,
        "null": _null,
    }


def _without(schema: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != key}


def _types(schema: Mapping[str, Any]) -> list[str]:
    declared = schema.get("type")
    if declared is not None:
        return [declared] if isinstance(declared, str) else list(declared)
    for kind, keys in (
        ("object", _OBJECT_KEYS),
        ("array", _ARRAY_KEYS),
        ("string", _STRING_KEYS),
        ("number", _NUMBER_KEYS),
    ):
        if any(key in schema for key in keys):
            return [kind]
    return ["object"]


def _merge(base: Mapping[str, Any], extra: Any) -> Mapping[str, Any]:
    """Both schemas at once (best effort): what ``allOf`` means."""
    if extra is True or extra is None:
        return base
    if not isinstance(extra, Mapping):
        raise _NoExample
    out = dict(base)
    for key, value in extra.items():
        if key not in out:
            out[key] = value
        elif key == "properties":
            out[key] = {**out[key], **{k: _merge_one(out[key], k, v) for k, v in value.items()}}
        elif key == "required":
            out[key] = [*out[key], *(name for name in value if name not in out[key])]
        elif key == "type":
            out[key] = _common_types(out[key], value)
        elif key == "enum":
            out[key] = [item for item in out[key] if item in value]
        elif key == "allOf":
            out[key] = [*out[key], *value]
        elif key in _DEFERRED:
            # Both sides constrain this: keep ours, and apply theirs as an allOf branch later.
            out["allOf"] = [*out.get("allOf", ()), {key: value}]
        elif key in _TIGHTEST_LOW and _is_number(value) and _is_number(out[key]):
            out[key] = max(out[key], value)
        elif key in _TIGHTEST_HIGH and _is_number(value) and _is_number(out[key]):
            out[key] = min(out[key], value)
        elif key == "additionalProperties" and value is False:
            out[key] = False
    return out


def _merge_one(properties: Mapping[str, Any], name: str, schema: Any) -> Any:
    return {"allOf": [properties[name], schema]} if name in properties else schema


def _common_types(first: str | list[str], second: str | list[str]) -> list[str]:
    a = [first] if isinstance(first, str) else first
    b = [second] if isinstance(second, str) else second
    out = [t for t in a if t in b or (t == "integer" and "number" in b)]
    return out + [t for t in b if t == "integer" and "number" in a and t not in out]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounds(schema: Mapping[str, Any], inclusive: str, exclusive: str) -> tuple[Any, bool]:
    """The tightest bound and whether it is strict; draft 4 spells strictness as a boolean."""
    bound, strict = schema.get(inclusive), False
    flag = schema.get(exclusive)
    if isinstance(flag, bool):
        return bound, flag and bound is not None
    if _is_number(flag):
        tighter = max if inclusive == "minimum" else min
        if bound is None or tighter(bound, flag) == flag:
            return flag, True
    return bound, strict


def _continuous(schema: Mapping[str, Any], value: float) -> float:
    low, low_strict = _bounds(schema, "minimum", "exclusiveMinimum")
    high, high_strict = _bounds(schema, "maximum", "exclusiveMaximum")
    if low is not None and (value < low or (low_strict and value == low)):
        value = (low + 1 if high is None else (low + high) / 2) if low_strict else low
    if high is not None and (value > high or (high_strict and value == high)):
        value = (high - 1 if low is None else (low + high) / 2) if high_strict else high
    return float(value)


def _on_grid(schema: Mapping[str, Any], unit: Fraction, target: float, variant: int) -> Fraction:
    """A multiple of ``unit`` inside the bounds, near ``target``."""
    low, low_strict = _bounds(schema, "minimum", "exclusiveMinimum")
    high, high_strict = _bounds(schema, "maximum", "exclusiveMaximum")
    first = last = None
    if low is not None:
        first = math.ceil(Fraction(str(low)) / unit)
        first += 1 if low_strict and first * unit == Fraction(str(low)) else 0
    if high is not None:
        last = math.floor(Fraction(str(high)) / unit)
        last -= 1 if high_strict and last * unit == Fraction(str(high)) else 0
    k = round(Fraction(str(target)) / unit) + variant
    k = max(k, first) if first is not None else k
    k = min(k, last) if last is not None else k
    if first is not None and k < first:
        raise _NoExample
    step = schema.get("multipleOf")
    if not isinstance(step, float):
        return k * unit
    # Validators test a float multipleOf by float division (0.3 / 0.1 is not 3): prefer a value
    # whose quotient comes out whole.
    for candidate in range(k, k + 16 if last is None else min(k + 16, last + 1)):
        quotient = float(candidate * unit) / step
        if quotient == int(quotient):
            return candidate * unit
    return k * unit


def _fit_length(text: str, schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    text += "x" * max(low - len(text), 0)
    return text[:high] if high is not None else text


def _matches(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return True


def _from_pattern(pattern: str) -> str | None:
    """A string that matches ``pattern``, or None; checked, since the walk is approximate."""
    try:
        # The private regex parser has no public equivalent; any surprise falls back to None.
        parsed = importlib.import_module("re._parser").parse(pattern)
        text = _emit(parsed)
        return text if re.search(pattern, text) else None
    except (re.error, ImportError, AttributeError, LookupError, TypeError, ValueError):
        return None


def _emit(items: Any) -> str:
    return "".join(_emit_one(str(op), arg) for op, arg in items)


def _emit_one(op: str, arg: Any) -> str:
    if op == "LITERAL":
        return chr(arg)
    if op == "NOT_LITERAL":
        return "b" if arg == ord("a") else "a"
    if op == "ANY":
        return "a"
    if op == "IN":
        return _emit_class(arg)
    if op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        return _emit(arg[2]) * int(arg[0])
    if op in ("SUBPATTERN", "ATOMIC_GROUP"):
        return _emit(arg[-1])
    if op == "BRANCH":
        return _emit(arg[1][0])
    if op in ("AT", "ASSERT", "ASSERT_NOT"):
        return ""
    raise ValueError(op)


def _emit_class(items: Any) -> str:
    op, arg = str(items[0][0]), items[0][1]
    if op == "NEGATE":
        return "a"
    if op == "LITERAL":
        return chr(arg)
    if op == "RANGE":
        return chr(arg[0])
    return _CATEGORY_CHARS[str(arg)]
