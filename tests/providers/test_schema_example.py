from __future__ import annotations

import datetime
import re
import uuid
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest

from leapasgi.providers._schema_example import example_for_schema

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 2},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
    "additionalProperties": False,
}
STRICT = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "limit": {"type": ["integer", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["query", "limit", "tags"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "order": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "placed": {"type": "string", "format": "date-time"},
                "lines": {
                    "type": "array",
                    "minItems": 2,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                            "qty": {"type": "integer", "exclusiveMinimum": 0},
                            "price": {"type": "number", "minimum": 0, "multipleOf": 0.01},
                        },
                        "required": ["sku", "qty", "price"],
                        "additionalProperties": False,
                    },
                },
            },
            "required": ["id", "lines"],
        }
    },
    "required": ["order"],
}
DEFS = {
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "zip"],
            "additionalProperties": False,
        },
        "Person": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "email": {"type": "string", "format": "email"},
                "home": {"$ref": "#/$defs/Address"},
                "work": {"$ref": "#/$defs/Address"},
            },
            "required": ["name", "home"],
        },
    },
    "type": "object",
    "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/Person"}}},
    "required": ["people"],
}
DEFINITIONS = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {"color": {"type": "string", "enum": ["red", "green"]}},
    "type": "object",
    "properties": {"fg": {"$ref": "#/definitions/color"}, "bg": {"$ref": "#/definitions/color"}},
    "required": ["fg"],
}
LINKED_LIST = {
    "$defs": {
        "Node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
            },
            "required": ["value", "next"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/Node",
}
TREE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#"}},
        "parent": {"$ref": "#"},
    },
    "required": ["name", "children"],
}
ALL_OF = {
    "allOf": [
        {"$ref": "#/$defs/Base"},
        {"properties": {"extra": {"type": "boolean"}}, "required": ["extra"]},
    ],
    "$defs": {
        "Base": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 10}},
            "required": ["id"],
        }
    },
}
ONE_OF = {
    "oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}}, "required": ["kind"]},
        {"type": "string"},
    ]
}

SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("weather", WEATHER),
    ("strict", STRICT),
    ("nested", NESTED),
    ("defs", DEFS),
    ("definitions", DEFINITIONS),
    ("linked-list", LINKED_LIST),
    ("tree", TREE),
    ("all-of", ALL_OF),
    ("one-of", ONE_OF),
    ("any-of-with-siblings", {"type": "object", "anyOf": [{"required": ["a"]}]}),
    ("type-list", {"type": ["null", "string"], "minLength": 3}),
    ("const", {"const": {"fixed": [1, 2]}}),
    ("enum", {"enum": [3, "x", None]}),
    ("bool", {"type": "boolean"}),
    ("null", {"type": "null"}),
    ("no-type", {"minimum": 5}),
    ("string-lengths", {"type": "string", "minLength": 12, "maxLength": 12}),
    ("short-string", {"type": "string", "maxLength": 3}),
    ("pattern-alternation", {"type": "string", "pattern": r"^(foo|bar)+\d{2,}[^x]?$"}),
    ("pattern-unanchored", {"type": "string", "pattern": "b+c"}),
    ("date", {"type": "string", "format": "date"}),
    ("int-range", {"type": "integer", "minimum": -10, "maximum": -3}),
    ("int-exclusive", {"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6}),
    ("int-multiple", {"type": "integer", "multipleOf": 7, "minimum": 20}),
    ("int-fraction-multiple", {"type": "integer", "multipleOf": 0.5, "minimum": 2.2}),
    ("number-open", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
    ("number-ceiling", {"type": "number", "exclusiveMaximum": -2}),
    ("number-multiple", {"type": "number", "multipleOf": 0.1, "minimum": 0.25}),
    ("array-bounds", {"type": "array", "items": {"type": "integer"}, "minItems": 4}),
    ("array-empty", {"type": "array", "maxItems": 0}),
    (
        "array-unique",
        {"type": "array", "items": {"type": "string"}, "minItems": 3, "uniqueItems": True},
    ),
    (
        "prefix-items",
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    ),
    ("min-properties", {"type": "object", "minProperties": 2}),
    (
        "max-properties",
        {
            "type": "object",
            "properties": {"a": {}, "b": {}, "c": {}},
            "required": ["c"],
            "maxProperties": 1,
        },
    ),
    (
        "required-not-declared",
        {"type": "object", "required": ["x"], "additionalProperties": {"type": "integer"}},
    ),
    (
        "false-property",
        {"type": "object", "properties": {"never": False, "ok": {"type": "string"}}},
    ),
    ("empty", {}),
]


@pytest.mark.parametrize("schema", [s for _, s in SCHEMAS], ids=[n for n, _ in SCHEMAS])
def test_example_validates(schema: dict[str, Any]) -> None:
    example = example_for_schema(schema)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(example)


@pytest.mark.parametrize("schema", [s for _, s in SCHEMAS], ids=[n for n, _ in SCHEMAS])
def test_example_is_deterministic(schema: dict[str, Any]) -> None:
    assert example_for_schema(schema) == example_for_schema(schema)


def test_missing_schema_gives_an_empty_object() -> None:
    assert example_for_schema(None) == {}
    assert example_for_schema({}) == {}
    assert example_for_schema(True) == {}


def test_objects_carry_every_declared_property_and_nothing_else() -> None:
    example = example_for_schema(WEATHER)

    assert set(example) == {"city", "unit", "days"}
    assert example["unit"] == "celsius"


def test_recursive_refs_stop() -> None:
    assert example_for_schema(LINKED_LIST) == {"value": 1, "next": None}
    assert example_for_schema(TREE) == {"name": "example", "children": []}


def test_defs_are_expanded() -> None:
    person = example_for_schema(DEFS)["people"][0]

    assert person["home"] == {"street": "example", "zip": "example"}
    assert person["work"] == person["home"]


def test_all_of_merges_its_branches() -> None:
    assert example_for_schema(ALL_OF) == {"id": 10, "extra": True}


def test_formats_are_well_formed() -> None:
    def of(fmt: str) -> str:
        value = example_for_schema({"type": "string", "format": fmt})
        assert isinstance(value, str)
        return value

    datetime.date.fromisoformat(of("date"))
    datetime.datetime.fromisoformat(of("date-time"))
    uuid.UUID(of("uuid"))
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", of("email"))
    assert urlparse(of("uri")).scheme == "https"


def test_unique_arrays_have_distinct_items() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 3, "uniqueItems": True}

    assert len(set(example_for_schema(schema))) == 3


def test_unresolvable_ref_gives_something() -> None:
    assert example_for_schema({"$ref": "https://example.com/schema.json"}) == {}
