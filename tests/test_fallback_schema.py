"""Tests for :mod:`airgap_proxy.fallback.jsonschema.instance`: JSON Schema instances, valid or refused.

Every instance is checked by the ``jsonschema`` package (draft 2020-12 with
format checking), never by the fallback's own validator.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from typing import Any, cast

import jsonschema
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from airgap_proxy.errors import InvalidRequest
from airgap_proxy.fallback import EMPTY_CANNED, chat_completion
from airgap_proxy.fallback.jsonschema import formats
from airgap_proxy.fallback.jsonschema.instance import instance_for
from airgap_proxy.fallback.jsonschema.schema import SchemaError
from airgap_proxy.fallback.seed import Seed

D2020 = jsonschema.Draft202012Validator
D7 = jsonschema.Draft7Validator
D4 = jsonschema.Draft4Validator
SEEDS = [Seed.of(b"test", bytes([i])) for i in range(6)]


def assert_valid(schema: Any, instance: Any, validator: type[Any] = D2020) -> None:
    json.dumps(instance, allow_nan=False)  # plain JSON, no NaN or infinities
    errors = list(validator(schema, format_checker=validator.FORMAT_CHECKER).iter_errors(instance))
    assert not errors, f"{instance!r}: {[e.message for e in errors]}"


def case(name: str, schema: Any, validator: type[Any] = D2020) -> Any:
    return pytest.param(schema, validator, id=name)


OBJECT_TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
            "required": ["value", "children"],
            "additionalProperties": False,
        }
    },
    "$ref": "#/$defs/node",
}

FEATURES = [
    # type
    case("type string", {"type": "string"}),
    case("type integer", {"type": "integer"}),
    case("type number", {"type": "number"}),
    case("type boolean", {"type": "boolean"}),
    case("type null", {"type": "null"}),
    case("type object", {"type": "object"}),
    case("type array", {"type": "array"}),
    case("list of types", {"type": ["integer", "boolean", "string"]}),
    case("nullable type list", {"type": ["string", "null"], "minLength": 3}),
    case("nullable via anyOf", {"anyOf": [{"type": "integer", "minimum": 5}, {"type": "null"}]}),
    case("only null allowed by a list", {"type": ["null"]}),
    case("empty schema", {}),
    case("true schema", True),
    case("untyped keywords imply a type", {"minLength": 4, "pattern": "^x"}),
    # objects
    case(
        "required and properties",
        {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    ),
    case("required without properties", {"type": "object", "required": ["x", "y"]}),
    case("optional properties", {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}}}),
    case(
        "additionalProperties false",
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False},
    ),
    case("additionalProperties true", {"type": "object", "additionalProperties": True, "minProperties": 2}),
    case(
        "additionalProperties schema",
        {"type": "object", "additionalProperties": {"type": "integer", "minimum": 100}, "minProperties": 3},
    ),
    case(
        "patternProperties",
        {
            "type": "object",
            "patternProperties": {"^x-[a-z]+$": {"type": "string", "maxLength": 3}},
            "additionalProperties": False,
            "minProperties": 2,
        },
    ),
    case(
        "propertyNames",
        {"type": "object", "propertyNames": {"pattern": "^[A-Z]{2,4}$"}, "minProperties": 2, "maxProperties": 3},
    ),
    case("min and max properties", {"type": "object", "minProperties": 1, "maxProperties": 1}),
    case(
        "dependentRequired",
        {
            "type": "object",
            "properties": {"card": {"type": "string"}, "billing": {"type": "string"}},
            "required": ["card"],
            "dependentRequired": {"card": ["billing"]},
        },
    ),
    case(
        "dependencies (draft 7)",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "dependencies": {"a": ["b"]}},
        D7,
    ),
    case(
        "dependentSchemas",
        {
            "type": "object",
            "properties": {"kind": {"type": "string"}},
            "required": ["kind"],
            "dependentSchemas": {"kind": {"properties": {"size": {"type": "integer"}}, "required": ["size"]}},
        },
    ),
    case(
        "nested objects",
        {
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "address": {
                            "type": "object",
                            "properties": {
                                "city": {"type": "string"},
                                "zip": {"type": "string", "pattern": "^\\d{5}$"},
                            },
                            "required": ["city", "zip"],
                        }
                    },
                    "required": ["address"],
                }
            },
            "required": ["user"],
        },
    ),
    # enum and const
    case("enum of strings", {"enum": ["red", "green", "blue"]}),
    case("enum of mixed types", {"enum": [1, "two", None, [3], {"four": 4}]}),
    case("enum filtered by type", {"type": "integer", "enum": ["a", 1.5, 7, True]}),
    case("enum filtered by bounds", {"type": "number", "enum": [1, 5, 10], "minimum": 4, "maximum": 6}),
    case("const", {"const": "fixed"}),
    case("const object", {"const": {"a": [1, 2, {"b": None}]}}),
    case("const with matching type", {"type": "integer", "const": 3}),
    # numbers
    case("integer bounds", {"type": "integer", "minimum": -5, "maximum": 5}),
    case("number bounds", {"type": "number", "minimum": 0.5, "maximum": 0.75}),
    case("minimum equals maximum", {"type": "integer", "minimum": 42, "maximum": 42}),
    case("only a minimum", {"type": "integer", "minimum": 1_000_000}),
    case("only a maximum", {"type": "number", "maximum": -1_000.5}),
    case("exclusive bounds integer", {"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 3}),
    case("exclusive bounds number", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
    case("tight exclusive interval", {"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 1.000000001}),
    case("exclusive and inclusive together", {"type": "number", "minimum": 2, "exclusiveMinimum": 2, "maximum": 3}),
    case("draft 4 boolean exclusive", {"type": "integer", "minimum": 5, "exclusiveMinimum": True, "maximum": 6}, D4),
    case(
        "draft 4 boolean exclusive number",
        {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": True, "exclusiveMaximum": True},
        D4,
    ),
    case("multipleOf integer", {"type": "integer", "multipleOf": 7, "minimum": 100, "maximum": 150}),
    case("multipleOf float", {"type": "number", "multipleOf": 0.1, "minimum": 1, "maximum": 2}),
    case("multipleOf 0.01 with exclusive bounds", {"type": "number", "multipleOf": 0.01, "exclusiveMinimum": 0.5}),
    case("integer multipleOf a float", {"type": "integer", "multipleOf": 2.5}),
    case("multipleOf in allOf", {"allOf": [{"type": "integer", "multipleOf": 4}, {"multipleOf": 6}], "minimum": 1}),
    case("multipleOf negative range", {"type": "integer", "multipleOf": 3, "minimum": -10, "maximum": -4}),
    case("huge bounds", {"type": "integer", "minimum": 10**30, "maximum": 10**30 + 5}),
    case("number near float limits", {"type": "number", "minimum": 1e300, "maximum": 1.5e300}),
    # strings
    case("minLength and maxLength", {"type": "string", "minLength": 5, "maxLength": 8}),
    case("exact length", {"type": "string", "minLength": 12, "maxLength": 12}),
    case("long minLength", {"type": "string", "minLength": 500}),
    case("maxLength 0", {"type": "string", "maxLength": 0}),
    case("pattern literals and anchors", {"type": "string", "pattern": "^abc-def$"}),
    case("pattern character classes", {"type": "string", "pattern": "^[A-Z][a-z0-9_]{2,5}$"}),
    case("pattern escapes", {"type": "string", "pattern": "^\\d{3}\\s\\w+\\.\\W$"}),
    case("pattern negated class", {"type": "string", "pattern": "^[^aeiou\\s]{4}$"}),
    case("pattern quantifiers", {"type": "string", "pattern": "^a+b*c?d{2}e{1,3}f{2,}$"}),
    case("pattern groups and alternation", {"type": "string", "pattern": "^(cat|dog|bird)s?( and (cat|dog))*$"}),
    case("pattern non-capturing and named groups", {"type": "string", "pattern": "^(?:ab)+(?P<n>[0-9])$"}),
    case("pattern dot", {"type": "string", "pattern": "^x.y$"}),
    case("pattern unanchored", {"type": "string", "pattern": "needle"}),
    case("pattern unanchored with minLength", {"type": "string", "pattern": "^id-", "minLength": 20}),
    case("pattern with length bounds", {"type": "string", "pattern": "^[a-z]+$", "minLength": 7, "maxLength": 9}),
    case("pattern phone number", {"type": "string", "pattern": "^\\+?[1-9]\\d{1,14}$"}),
    case("pattern email-like", {"type": "string", "pattern": "^[\\w.+-]+@[a-z0-9-]+(\\.[a-z]{2,})+$"}),
    case("pattern hex colour", {"type": "string", "pattern": "^#(?:[0-9a-fA-F]{3}){1,2}$"}),
    case("pattern case-insensitive flag", {"type": "string", "pattern": "(?i)^yes|no$"}),
    case("pattern unicode escape", {"type": "string", "pattern": "^\\u00e9+$"}),
    case("two patterns in allOf", {"allOf": [{"type": "string", "pattern": "^a"}, {"pattern": "z$"}]}),
    # formats
    case("format date-time", {"type": "string", "format": "date-time"}),
    case("format date", {"type": "string", "format": "date"}),
    case("format time", {"type": "string", "format": "time"}),
    case("format email", {"type": "string", "format": "email"}),
    case("format uri", {"type": "string", "format": "uri"}),
    case("format uuid", {"type": "string", "format": "uuid"}),
    case("format ipv4", {"type": "string", "format": "ipv4"}),
    case("format ipv6", {"type": "string", "format": "ipv6"}),
    case("format hostname", {"type": "string", "format": "hostname"}),
    case("format uri-reference", {"type": "string", "format": "uri-reference"}),
    case("format json-pointer", {"type": "string", "format": "json-pointer"}),
    case("format regex", {"type": "string", "format": "regex"}),
    case("format email with minLength", {"type": "string", "format": "email", "minLength": 70}),
    case("format hostname with lengths", {"type": "string", "format": "hostname", "minLength": 90, "maxLength": 95}),
    case("format date-time with minLength", {"type": "string", "format": "date-time", "minLength": 26}),
    case("format duration", {"type": "string", "format": "duration"}),
    case("format idn-hostname", {"type": "string", "format": "idn-hostname"}),
    case("format idn-email", {"type": "string", "format": "idn-email"}),
    case("format iri", {"type": "string", "format": "iri"}),
    case("format iri-reference", {"type": "string", "format": "iri-reference"}),
    case("format relative-json-pointer", {"type": "string", "format": "relative-json-pointer"}),
    case("format uri-template", {"type": "string", "format": "uri-template"}),
    case("format ipv4 with maxLength", {"type": "string", "format": "ipv4", "maxLength": 8}),
    case("format ipv6 with maxLength", {"type": "string", "format": "ipv6", "maxLength": 5}),
    case("format hostname short", {"type": "string", "format": "hostname", "maxLength": 5}),
    case("unknown format is an annotation", {"type": "string", "format": "x-custom", "minLength": 2}),
    case("format with enum", {"type": "string", "format": "email", "enum": ["nope", "a@b.example"]}),
    # arrays
    case("minItems and maxItems", {"type": "array", "minItems": 2, "maxItems": 4}),
    case("items schema", {"type": "array", "items": {"type": "integer", "minimum": 3}, "minItems": 3}),
    case(
        "uniqueItems",
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 5}, "minItems": 5, "uniqueItems": True},
    ),
    case(
        "uniqueItems from an enum",
        {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 3, "uniqueItems": True},
    ),
    case(
        "uniqueItems of objects",
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"k": {"type": "boolean"}},
                "required": ["k"],
                "additionalProperties": False,
            },
            "minItems": 2,
            "uniqueItems": True,
        },
    ),
    case(
        "prefixItems closed",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
    ),
    case(
        "prefixItems then items",
        {"type": "array", "prefixItems": [{"const": "head"}], "items": {"type": "number"}, "minItems": 3},
    ),
    case(
        "tuple items (draft 7)",
        {"type": "array", "items": [{"type": "string"}, {"type": "null"}], "additionalItems": False, "minItems": 2},
        D7,
    ),
    case("contains", {"type": "array", "items": {"type": "integer"}, "contains": {"const": 7}}),
    case(
        "minContains",
        {"type": "array", "contains": {"type": "string", "pattern": "^k"}, "minContains": 2, "maxItems": 3},
    ),
    case(
        "maxContains",
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 3},
            "contains": {"const": 0},
            "maxContains": 1,
            "minItems": 3,
        },
    ),
    case(
        "nested arrays",
        {"type": "array", "items": {"type": "array", "items": {"type": "boolean"}, "minItems": 2}, "minItems": 2},
    ),
    case(
        "array of objects",
        {
            "type": "array",
            "items": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]},
            "minItems": 1,
        },
    ),
    case("empty array forced", {"type": "array", "maxItems": 0}),
    # $ref
    case(
        "$ref into $defs",
        {
            "$defs": {"pos": {"type": "integer", "minimum": 1}},
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/pos"}},
            "required": ["n"],
        },
    ),
    case(
        "$ref into definitions",
        {
            "definitions": {"s": {"type": "string", "minLength": 2}},
            "type": "array",
            "items": {"$ref": "#/definitions/s"},
            "minItems": 1,
        },
    ),
    case(
        "$ref with sibling keywords",
        {"$defs": {"n": {"type": "integer"}}, "$ref": "#/$defs/n", "minimum": 10, "maximum": 11},
    ),
    case(
        "$ref chain",
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/c"}, "c": {"const": "end"}}, "$ref": "#/$defs/a"},
    ),
    case(
        "$ref with escaped pointer",
        {
            "$defs": {"a/b": {"const": 1}, "c~d": {"const": 2}},
            "type": "array",
            "prefixItems": [{"$ref": "#/$defs/a~1b"}, {"$ref": "#/$defs/c~0d"}],
            "minItems": 2,
        },
    ),
    case("$ref by $anchor", {"$defs": {"x": {"$anchor": "thing", "type": "boolean"}}, "$ref": "#thing"}),
    case("recursive tree", OBJECT_TREE),
    case(
        "recursive linked list, optional next",
        {
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {"v": {"type": "integer"}, "next": {"$ref": "#/$defs/node"}},
                    "required": ["v"],
                }
            },
            "$ref": "#/$defs/node",
        },
    ),
    case(
        "recursive through anyOf base case",
        {
            "$defs": {
                "expr": {
                    "anyOf": [
                        {
                            "type": "object",
                            "properties": {
                                "op": {"enum": ["+", "*"]},
                                "args": {
                                    "type": "array",
                                    "items": {"$ref": "#/$defs/expr"},
                                    "minItems": 2,
                                    "maxItems": 2,
                                },
                            },
                            "required": ["op", "args"],
                            "additionalProperties": False,
                        },
                        {"type": "integer"},
                    ]
                }
            },
            "$ref": "#/$defs/expr",
        },
    ),
    case(
        "recursive JSON value",
        {
            "$defs": {
                "json": {
                    "anyOf": [
                        {"type": "object", "additionalProperties": {"$ref": "#/$defs/json"}, "minProperties": 1},
                        {"type": "array", "items": {"$ref": "#/$defs/json"}, "minItems": 1},
                        {"type": "string"},
                        {"type": "number"},
                        {"type": "boolean"},
                        {"type": "null"},
                    ]
                }
            },
            "$ref": "#/$defs/json",
        },
    ),
    case(
        "recursion to the root",
        {"type": "object", "properties": {"name": {"type": "string"}, "child": {"$ref": "#"}}, "required": ["name"]},
    ),
    # combinators
    case("anyOf", {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 10}]}),
    case("oneOf integer or number", {"oneOf": [{"type": "integer"}, {"type": "number"}]}),
    case("oneOf number or integer", {"oneOf": [{"type": "number"}, {"type": "integer"}]}),
    case(
        "oneOf overlapping objects",
        {
            "oneOf": [
                {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
                {
                    "type": "object",
                    "properties": {"kind": {"const": "b"}, "x": {"type": "integer"}},
                    "required": ["kind", "x"],
                },
            ]
        },
    ),
    case(
        "oneOf overlapping ranges",
        {"type": "integer", "oneOf": [{"minimum": 0, "maximum": 10}, {"minimum": 5, "maximum": 20}]},
    ),
    case(
        "allOf merges constraints",
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "string"}}, "required": ["b"]},
                {"properties": {"a": {"minimum": 10, "maximum": 12}}},
            ]
        },
    ),
    case(
        "allOf keeps additionalProperties scoped",
        {
            "allOf": [{"properties": {"a": {"type": "integer"}}, "additionalProperties": False}, {"required": ["a"]}],
            "type": "object",
        },
    ),
    case(
        "allOf numeric intersection",
        {"allOf": [{"type": "number", "minimum": 5}, {"maximum": 6}, {"exclusiveMaximum": 5.5}]},
    ),
    case("allOf string lengths", {"allOf": [{"type": "string", "minLength": 3}, {"maxLength": 3}]}),
    case("not type", {"not": {"type": ["string", "object", "array", "null"]}}),
    case("not const with enum", {"enum": ["a", "b", "c"], "not": {"const": "a"}}),
    case("not enum on integers", {"type": "integer", "minimum": 1, "maximum": 3, "not": {"enum": [1, 2]}}),
    case("not with pattern", {"type": "string", "not": {"pattern": "^alpha"}}),
    case(
        "if then else",
        {
            "type": "object",
            "properties": {"country": {"enum": ["US", "CA"]}, "postal": {"type": "string"}},
            "required": ["country", "postal"],
            "if": {"properties": {"country": {"const": "US"}}},
            "then": {"properties": {"postal": {"pattern": "^\\d{5}$"}}},
            "else": {"properties": {"postal": {"pattern": "^[A-Z]\\d[A-Z] \\d[A-Z]\\d$"}}},
        },
    ),
    case(
        "unevaluatedProperties false",
        {
            "type": "object",
            "allOf": [{"properties": {"a": {"type": "integer"}}}],
            "properties": {"b": {"type": "string"}},
            "unevaluatedProperties": False,
        },
    ),
    # realistic
    case(
        "OpenAI strict structured output",
        {
            "type": "object",
            "properties": {
                "steps": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
                        "required": ["explanation", "output"],
                        "additionalProperties": False,
                    },
                },
                "final_answer": {"type": "string"},
                "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "category": {"type": "string", "enum": ["math", "science", "other"]},
                "created": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
            },
            "required": ["steps", "final_answer", "confidence", "category", "created", "id"],
            "additionalProperties": False,
        },
    ),
]


@pytest.mark.parametrize(("schema", "validator"), FEATURES)
def test_feature_schemas_give_valid_instances(schema: Any, validator: type[Any]) -> None:
    for seed in SEEDS:
        instance = instance_for(schema, seed)
        assert_valid(schema, instance, validator)
        assert instance_for(schema, seed) == instance, "deterministic"


def test_values_vary_with_the_seed() -> None:
    schema = FEATURES[-1].values[0]
    assert len({json.dumps(instance_for(schema, s), sort_keys=True) for s in SEEDS}) == len(SEEDS)


def test_oneof_picks_exactly_one_branch() -> None:
    schema = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    values = [instance_for(schema, s) for s in SEEDS]
    assert all(isinstance(v, float) and not v.is_integer() for v in values)


def test_recursion_bottoms_out() -> None:
    instance = instance_for(OBJECT_TREE, SEEDS[0])

    def depth(node: dict[str, Any]) -> int:
        return 1 + max((depth(c) for c in node["children"]), default=0)

    assert 1 <= depth(instance) <= 6


def test_every_format_the_checker_knows_has_a_generator() -> None:
    assert set(D2020.FORMAT_CHECKER.checkers) <= set(formats.GENERATORS)


@pytest.mark.parametrize("name", sorted(formats.GENERATORS))
def test_format_strings_pass_jsonschema_at_every_length(name: str) -> None:
    made = 0
    for lo in range(0, 70, 3):
        for hi in (None, lo, lo + 4):
            for seed in SEEDS[:2]:
                text = formats.generate(name, seed, lo, hi)
                if text is None:
                    continue
                made += 1
                assert lo <= len(text) and (hi is None or len(text) <= hi)
                assert D2020.FORMAT_CHECKER.conforms(text, name), text
                assert formats.conforms(name, text)
    assert made > 10


# --------------------------------------------------------------------------- #
# Unsatisfiable schemas are refused with a reason, never answered wrongly
# --------------------------------------------------------------------------- #

NODE_WITHOUT_BASE = {
    "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}, "required": ["next"]}},
    "$ref": "#/$defs/n",
}

UNSATISFIABLE = [
    pytest.param(
        {"type": "integer", "minimum": 10, "maximum": 5}, "minimum 10 is greater than maximum 5", "#", id="min over max"
    ),
    pytest.param(
        {"type": "number", "exclusiveMinimum": 5, "maximum": 5},
        "exclusiveMinimum 5 leaves no value below maximum 5",
        "#",
        id="exclusive equal",
    ),
    pytest.param(
        {"type": "integer", "minimum": 1.2, "maximum": 1.8},
        "no integer satisfies minimum 1.2, maximum 1.8",
        "#",
        id="no integer in range",
    ),
    pytest.param(
        {"type": "integer", "multipleOf": 10, "minimum": 1, "maximum": 9},
        "no integer satisfies",
        "#",
        id="no multiple in range",
    ),
    pytest.param(
        {"type": "string", "minLength": 5, "maxLength": 2},
        "minLength 5 is greater than maxLength 2",
        "#",
        id="minLength over maxLength",
    ),
    pytest.param(
        {"type": "array", "minItems": 3, "maxItems": 1},
        "minItems 3 is greater than maxItems 1",
        "#",
        id="minItems over maxItems",
    ),
    pytest.param(
        {"type": "array", "prefixItems": [{}], "items": False, "minItems": 2},
        "items: false allows at most 1 items",
        "#",
        id="closed tuple too short",
    ),
    pytest.param(
        {"type": "integer", "enum": ["a", "b"]}, "no value of enum/const", "#", id="enum without a matching type"
    ),
    pytest.param({"type": "string", "const": 3}, "no value of enum/const", "#", id="const of the wrong type"),
    pytest.param(False, "`false`", "#", id="false at the root"),
    pytest.param(
        {"type": "object", "properties": {"a": False}, "required": ["a"]},
        "`false`",
        "#/properties/a",
        id="false property required",
    ),
    pytest.param(
        {"type": "object", "properties": {"a": {}}, "required": ["a", "b"], "additionalProperties": False},
        "required property 'b' is not allowed",
        "#",
        id="required but closed",
    ),
    pytest.param(
        {"allOf": [{"type": "string"}, {"type": "integer"}]},
        "conflicts with the other types",
        "#/allOf/1",
        id="contradictory allOf types",
    ),
    pytest.param(
        {"allOf": [{"type": "integer", "minimum": 5}, {"maximum": 3}]},
        "minimum 5 is greater than maximum 3",
        "#",
        id="contradictory allOf bounds",
    ),
    pytest.param(
        {"type": "array", "items": {"enum": [1, 2]}, "minItems": 3, "uniqueItems": True},
        "uniqueItems: cannot make 3 distinct items",
        "#",
        id="not enough distinct items",
    ),
    pytest.param({"type": "string", "not": {}}, "`not: {}` excludes every value", "#/not", id="not everything"),
    pytest.param({"oneOf": [{"type": "string"}, {"type": "string"}]}, "", "#", id="oneOf twins"),
    pytest.param(
        {"type": "string", "pattern": "^a{3}$", "minLength": 5},
        "cannot make a string matching pattern '^a{3}$' of at least 5 characters",
        "#",
        id="pattern versus length",
    ),
    pytest.param(
        {"type": "string", "format": "uuid", "maxLength": 10},
        "cannot make a 'uuid' string of 0 to 10 characters",
        "#",
        id="format versus length",
    ),
    pytest.param(NODE_WITHOUT_BASE, "nest too deeply", "", id="required recursion without a base case"),
    pytest.param(
        {"type": "string", "pattern": "(unclosed"},
        "pattern '(unclosed': invalid regular expression",
        "#",
        id="invalid regex",
    ),
    pytest.param({"type": "string", "pattern": "(a)?(?(1)b|c)"}, "conditional groups", "#", id="unsupported regex"),
    pytest.param(
        {"type": "string", "pattern": "^(ab|cd)-\\1$"}, "RE2: invalid escape sequence", "#", id="back-reference"
    ),
    pytest.param({"$ref": "https://example.com/schema.json"}, "only local references", "#", id="remote ref"),
    pytest.param({"$ref": "#/$defs/missing"}, "points to nothing", "#", id="dangling ref"),
    pytest.param({"type": "array", "minItems": 10**7}, "over the fallback's limit", "#", id="minItems over the limit"),
    pytest.param(
        {"type": "string", "minLength": 10**9}, "over the fallback's limit", "#", id="minLength over the limit"
    ),
    pytest.param({"type": "decimal"}, "type must be one of", "#", id="unknown type"),
    pytest.param(
        {"type": "array", "items": {"type": "string", "minLength": 90_000}, "minItems": 20},
        "over 1000000 characters of text",
        "#/items",
        id="too much text",
    ),
    pytest.param(
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1000}, "minItems": 1000},
        "too large or too ambiguous",
        "",
        id="too many values",
    ),
    pytest.param(
        {"type": "object", "properties": {"a": {"minimum": "x"}}, "required": ["a"]},
        "minimum must be a number",
        "#/properties/a",
        id="minimum not a number",
    ),
    pytest.param({"type": "integer", "multipleOf": 0}, "multipleOf must be greater than 0", "#", id="multipleOf zero"),
    pytest.param(
        {"type": "object", "minProperties": 2, "maxProperties": 1},
        "minProperties 2 is greater than the 1 properties allowed",
        "#",
        id="minProperties over maxProperties",
    ),
    pytest.param({"enum": []}, "enum must be a non-empty array", "#", id="empty enum"),
    pytest.param(
        {"anyOf": [{"type": "integer", "minimum": 3, "maximum": 1}, False]},
        "minimum 3 is greater than maximum 1",
        "#/anyOf/0",
        id="every anyOf branch fails",
    ),
]


@pytest.mark.parametrize(("schema", "reason", "pointer"), UNSATISFIABLE)
def test_unsatisfiable_schemas_are_refused_with_a_reason(schema: Any, reason: str, pointer: str) -> None:
    started = time.perf_counter()
    with pytest.raises(SchemaError) as info:
        instance_for(schema, SEEDS[0])
    assert time.perf_counter() - started < 5
    assert reason in info.value.reason, info.value.reason
    if pointer:
        assert info.value.pointer == pointer
    assert str(info.value) == f"{info.value.reason} (at {info.value.pointer})"


@pytest.mark.parametrize(("schema", "reason", "pointer"), UNSATISFIABLE[:8])
def test_unsatisfiable_json_schema_is_an_invalid_request(schema: Any, reason: str, pointer: str) -> None:
    data = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    with pytest.raises(InvalidRequest) as info:
        chat_completion(data, "m", EMPTY_CANNED)
    assert info.value.param == "response_format"
    assert info.value.message.startswith(f"response_format.json_schema: {reason}")


def test_ambiguous_schemas_stop_within_the_budget() -> None:
    """Nested oneOf twins could explode combinatorially; the budget stops them fast."""
    twins: Any = {"oneOf": [{"type": "string"}, {"type": "string"}]}
    for _ in range(6):
        twins = {"type": "array", "items": twins, "minItems": 3, "oneOf": [{}, {"minItems": 0}]}
    started = time.perf_counter()
    with pytest.raises(SchemaError):
        instance_for(twins, SEEDS[0])
    assert time.perf_counter() - started < 10


# --------------------------------------------------------------------------- #
# Generated schemas, satisfiable by construction: the generator must always succeed
# --------------------------------------------------------------------------- #

FORMAT_EXAMPLES = {
    "date-time": "2024-02-29T12:30:00Z",
    "date": "2023-12-31",
    "time": "23:59:59+02:00",
    "email": "someone@example.org",
    "uri": "https://example.org/a?b=c",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "192.168.0.1",
    "ipv6": "::1",
    "hostname": "db-1.internal.example",
}
SIMPLE_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    | SIMPLE_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)
TYPE_NAMES = ["null", "boolean", "integer", "number", "string", "array", "object"]


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def rejecting(draw: Any, value: Any) -> dict[str, Any]:
    """A schema that ``value`` does not satisfy."""
    own = type_name(value)
    others = [t for t in TYPE_NAMES if t != own and not (own == "integer" and t == "number")]
    rejected: dict[str, Any] = draw(
        st.sampled_from(others).map(lambda t: {"type": t}) | st.just({"const": ["never", "this", "value"]})
    )
    return rejected


def schema_for(draw: Any, value: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """A random schema that ``value`` satisfies, using many keywords."""
    kind = type_name(value)
    schema: dict[str, Any]
    if draw(st.integers(0, 9)) == 0:
        schema = draw(st.sampled_from([{"const": value}, {"enum": [value, "other", 12345]}]))
    elif kind in ("null", "boolean"):
        schema = {"type": draw(st.sampled_from([kind, [kind, "string"]]))}
    elif kind in ("integer", "number"):
        schema = {"type": "number" if kind == "number" or draw(st.booleans()) else "integer"}
        if draw(st.booleans()):
            schema["minimum"] = value - draw(st.integers(0, 100))
        if draw(st.booleans()):
            schema["maximum"] = value + draw(st.integers(0, 100))
        if draw(st.booleans()):
            schema["exclusiveMinimum"] = value - draw(st.integers(1, 50))
        if draw(st.booleans()):
            schema["exclusiveMaximum"] = value + draw(st.integers(1, 50))
        if kind == "integer" and draw(st.booleans()):
            divisors = [d for d in (2, 3, 4, 5, 7, 10) if int(value) % d == 0]
            if divisors:
                schema["multipleOf"] = draw(st.sampled_from(divisors))
    elif kind == "string":
        schema = {"type": "string"}
        if draw(st.booleans()):
            schema["minLength"] = draw(st.integers(0, len(value)))
        if draw(st.booleans()):
            schema["maxLength"] = len(value) + draw(st.integers(0, 5))
        patterns = ["^" + re.escape(value) + "$", re.escape(value[:2]), f"^.{{{len(value)},}}", "[a-z]|^$|."]
        matching = [p for p in patterns if re.search(p, value)]
        if matching and draw(st.booleans()):
            schema["pattern"] = draw(st.sampled_from(matching))
    elif kind == "array":
        schema = {"type": "array"}
        items = [schema_for(draw, v, defs, depth + 1) for v in value]
        shape = draw(st.sampled_from(["items", "prefix", "prefix closed", "none"]))
        if shape == "items" and items:
            schema["items"] = {"anyOf": items} if len(items) > 1 else items[0]
        elif shape.startswith("prefix"):
            schema["prefixItems"] = items
            if shape == "prefix closed":
                schema["items"] = False
        if draw(st.booleans()):
            schema["minItems"] = draw(st.integers(0, len(value)))
        if draw(st.booleans()):
            schema["maxItems"] = len(value) + draw(st.integers(0, 2))
        if D2020({"uniqueItems": True}).is_valid(value) and draw(st.booleans()):
            schema["uniqueItems"] = True
        if value and draw(st.booleans()):
            schema["contains"] = schema_for(draw, value[0], defs, depth + 1)
    else:
        schema = {"type": "object", "properties": {k: schema_for(draw, v, defs, depth + 1) for k, v in value.items()}}
        keys = sorted(value)
        schema["required"] = draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
        schema["additionalProperties"] = draw(st.sampled_from([False, True, {"type": "integer"}]))
        if draw(st.booleans()):
            schema["minProperties"] = draw(st.integers(0, len(value)))
        if draw(st.booleans()):
            schema["maxProperties"] = len(value) + draw(st.integers(0, 2))
    wrapper = draw(st.sampled_from(["none", "none", "anyOf", "oneOf", "allOf", "not", "ref"])) if depth < 3 else "none"
    if wrapper == "anyOf":
        return {"anyOf": draw(st.permutations([schema, rejecting(draw, value)]))}
    if wrapper == "oneOf":
        return {"oneOf": draw(st.permutations([schema, rejecting(draw, value)]))}
    if wrapper == "allOf":
        return {"allOf": [schema, {"type": [kind, "number"] if kind == "integer" else kind}]}
    if wrapper == "not":
        return {**schema, "not": rejecting(draw, value)}
    if wrapper == "ref":
        name = f"d{len(defs)}"
        defs[name] = schema
        return {"$ref": f"#/$defs/{name}"}
    return schema


@st.composite
def satisfiable_schemas(draw: Any) -> tuple[Any, Any]:
    if draw(st.integers(0, 7)) == 0:
        name = draw(st.sampled_from(sorted(FORMAT_EXAMPLES)))
        value: Any = FORMAT_EXAMPLES[name]
        return {"type": "string", "format": name, "maxLength": len(value) + draw(st.integers(0, 30))}, value
    value = draw(VALUES)
    defs: dict[str, Any] = {}
    schema = schema_for(draw, value, defs)
    if defs:
        schema = {"allOf": [schema], "$defs": defs}
    return schema, value


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(satisfiable_schemas(), st.integers(0, 5))
def test_generated_satisfiable_schemas_always_get_a_valid_instance(pair: tuple[Any, Any], seed: int) -> None:
    schema, witness = pair
    note(json.dumps(schema))
    assert_valid(schema, witness)  # the strategy's own promise
    instance = instance_for(schema, SEEDS[seed])
    assert_valid(schema, instance)


# --------------------------------------------------------------------------- #
# Schemas from a meta-schema (hypothesis-jsonschema): valid output, or refusal only
# when no instance exists that hypothesis-jsonschema can find either
# --------------------------------------------------------------------------- #

PATTERNS = ["^[a-z]+$", "^\\d{2,4}$", "^(yes|no)$", "x", "^[A-F0-9]{8}$", "^a.c$", "^$"]
FORMAT_NAMES = ["date-time", "date", "email", "uuid", "ipv4", "hostname", "uri"]
SMALL = {"type": "integer", "minimum": 0, "maximum": 6}
NUMBER = {"type": "integer", "minimum": -20, "maximum": 20}


def _keywords(kind: str | None, **properties: Any) -> dict[str, Any]:
    """A meta-schema for a schema object with ``type: kind`` (or else all of the keywords) and these keywords."""
    props = dict(properties)
    required = list(props)
    if kind is not None:
        props["type"] = {"const": kind}
        required = ["type"]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


LEAF_META_SCHEMA = {
    "anyOf": [
        _keywords(
            "string", minLength=SMALL, maxLength=SMALL, pattern={"enum": PATTERNS}, format={"enum": FORMAT_NAMES}
        ),
        _keywords(
            "integer", minimum=NUMBER, maximum=NUMBER, exclusiveMinimum=NUMBER, multipleOf={"enum": [1, 2, 3, 5]}
        ),
        _keywords(
            "number", minimum=NUMBER, maximum=NUMBER, exclusiveMaximum=NUMBER, multipleOf={"enum": [0.5, 0.25, 2]}
        ),
        _keywords("boolean"),
        _keywords("null"),
        _keywords(None, enum={"type": "array", "items": {"type": ["integer", "string", "null"]}, "minItems": 1}),
    ]
}
ARRAY_META_SCHEMA = _keywords("array", minItems=SMALL, maxItems=SMALL, uniqueItems={"type": "boolean"})
OBJECT_META_SCHEMA = _keywords(
    "object",
    required={"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True},
    additionalProperties={"type": "boolean"},
    minProperties=SMALL,
    maxProperties=SMALL,
)


def _nested(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Schemas around ``inner`` ones: keywords drawn from meta-schemas, subschemas from ``inner``."""
    branches = st.lists(inner, min_size=1, max_size=3)
    return st.one_of(
        st.builds(lambda kw, items: {**kw, "items": items}, from_schema(ARRAY_META_SCHEMA), inner),
        st.builds(
            lambda kw, props: {**kw, "properties": props},
            from_schema(OBJECT_META_SCHEMA),
            st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
        ),
        branches.map(lambda b: {"anyOf": b}),
        branches.map(lambda b: {"oneOf": b}),
        branches.map(lambda b: {"allOf": b}),
        inner.map(lambda s: {"type": "integer", "not": s}),
    )


META_SCHEMAS = st.recursive(from_schema(cast(dict[str, Any], LEAF_META_SCHEMA)), _nested, max_leaves=6)


def test_meta_schema_generated_schemas() -> None:
    """200+ schemas: keywords drawn by hypothesis-jsonschema from meta-schemas, nested by Hypothesis.

    Many are contradictory on purpose. An instance, when made, must be valid.
    A refusal counts as proven when hypothesis-jsonschema's own canonicaliser
    also finds the schema empty; the rest (``oneOf`` twins, a format that
    cannot meet a length) must stay rare.
    """
    stats: Counter[str] = Counter()

    @settings(
        max_examples=240,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(META_SCHEMAS)
    def check(schema: Any) -> None:
        D2020.check_schema(schema)
        stats["schemas"] += 1
        try:
            instance = instance_for(schema, SEEDS[0])
        except SchemaError:
            stats["refused, proven empty" if from_schema(schema).is_empty else "refused, unproven"] += 1
            return
        assert_valid(schema, instance)
        stats["valid"] += 1

    check()
    assert stats["schemas"] >= 200, stats
    assert stats["valid"] >= stats["schemas"] // 2, stats
    assert stats["refused, unproven"] <= stats["schemas"] * 0.08, stats


def test_floats_stay_finite() -> None:
    instance = instance_for({"type": "number", "minimum": 1.7e308}, SEEDS[0])
    assert math.isfinite(instance) and instance >= 1.7e308


# --------------------------------------------------------------------------- #
# Float limits, deep nesting, and constraints that need many distinct values
# --------------------------------------------------------------------------- #

FLOAT_MAX = 1.7976931348623157e308
FLOAT_EDGES: list[Any] = [
    pytest.param({"type": "number", "multipleOf": 1e-300, "minimum": 1e300}, id="tiny multipleOf, huge minimum"),
    pytest.param({"type": "number", "multipleOf": 1e-300, "maximum": -1e300}, id="tiny multipleOf, huge maximum"),
    pytest.param({"type": "number", "multipleOf": 1e300, "minimum": 1e-300}, id="huge multipleOf"),
    pytest.param({"type": "number", "multipleOf": 5e-324}, id="subnormal multipleOf"),
    pytest.param({"type": "integer", "multipleOf": 1e-300, "minimum": 1e300}, id="integer, tiny multipleOf"),
    pytest.param({"type": "number", "exclusiveMinimum": FLOAT_MAX}, id="exclusiveMinimum at float max"),
    pytest.param({"type": "number", "exclusiveMaximum": -FLOAT_MAX}, id="exclusiveMaximum at -float max"),
    pytest.param({"type": "number", "minimum": FLOAT_MAX}, id="minimum at float max"),
    pytest.param({"type": "number", "minimum": -1e308, "maximum": 1e308}, id="range wider than float max"),
    pytest.param({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5e-324}, id="no float between"),
    pytest.param({"type": "integer", "multipleOf": 0.3, "minimum": 1e300}, id="integer, fractional multipleOf"),
    pytest.param({"type": "number", "minimum": 2, "maximum": 1}, id="minimum over maximum"),
    pytest.param({"type": "number", "multipleOf": 0.7, "minimum": 1e300, "maximum": 1e300}, id="multiple at one point"),
    pytest.param({"type": "integer", "minimum": 10**400}, id="minimum past float range"),
    pytest.param({"type": "number", "maximum": -(10**400)}, id="number maximum past float range"),
    pytest.param({"type": "number", "multipleOf": 10**400}, id="multipleOf past float range"),
    pytest.param({"enum": [10**400, 1.5]}, id="enum with an integer past float range"),
    pytest.param({"type": "number", "multipleOf": 3, "exclusiveMinimum": 1e300}, id="integral multipleOf, huge bound"),
]


@pytest.mark.parametrize("schema", FLOAT_EDGES)
def test_float_edges_give_a_valid_number_or_a_reason(schema: Any) -> None:
    try:
        instance = instance_for(schema, SEEDS[0])
    except SchemaError as exc:
        assert exc.reason and exc.pointer == "#"
        return
    assert_valid(schema, instance)


def test_float_edges_that_are_satisfiable_are_satisfied() -> None:
    refused = []
    for param in FLOAT_EDGES:
        try:
            instance_for(param.values[0], SEEDS[0])
        except SchemaError:
            refused.append(param.id)
    assert refused == ["no float between", "minimum over maximum"]


def ref_chain(length: int, link: str) -> dict[str, Any]:
    """d0 -> d1 -> ... -> dN through ``link`` (``%s`` is the next ``$ref``): flat JSON, deep schema."""
    defs = {f"d{i}": json.loads(link % json.dumps({"$ref": f"#/$defs/d{i + 1}"})) for i in range(length)}
    defs[f"d{length}"] = {"type": "integer"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize(
    "link",
    [
        pytest.param("%s", id="$ref"),
        pytest.param('{"allOf": [%s]}', id="allOf"),
        pytest.param('{"not": {"not": %s}}', id="not"),
        pytest.param('{"anyOf": [%s]}', id="anyOf (validation)"),
        pytest.param('{"oneOf": [%s, false]}', id="oneOf (validation)"),
    ],
)
def test_deep_schema_chains_are_refused_without_recursion_errors(link: str) -> None:
    with pytest.raises(SchemaError, match="nests"):
        instance_for(ref_chain(2_000, link), SEEDS[0])


@pytest.mark.parametrize("link", ["%s", '{"allOf": [%s]}', '{"anyOf": [%s]}'])
def test_moderate_schema_chains_still_work(link: str) -> None:
    schema = ref_chain(30, link)
    assert_valid(schema, instance_for(schema, SEEDS[0]))


def test_many_pending_choices_do_not_recurse() -> None:
    """Choices were folded one recursion level each: 1,000 of them overflowed the stack."""
    schema: Any = {"type": "string"}
    for _ in range(10):
        schema = {"if": schema, "then": schema}
    assert_valid(schema, instance_for(schema, SEEDS[0]))
    many = {"allOf": [{"anyOf": [{"type": "integer"}, {"minimum": i}]} for i in range(1_500)]}
    assert_valid(many, instance_for(many, SEEDS[0]))


def names(n: int) -> list[str]:
    return [f"k{i}" for i in range(n)]


def distinct_values_schemas(n: int) -> list[Any]:
    return [
        pytest.param(
            {"type": "array", "uniqueItems": True, "minItems": n, "items": {"enum": list(range(n))}},
            id=f"uniqueItems over an enum of minItems={n} integers",
        ),
        pytest.param(
            {"type": "array", "uniqueItems": True, "minItems": n, "maxItems": n, "items": {"enum": names(n)}},
            id=f"uniqueItems over an enum of minItems={n} strings",
        ),
        pytest.param(
            {
                "type": "array",
                "uniqueItems": True,
                "minItems": n,
                "items": {"enum": [{"id": i} for i in range(n)]},
            },
            id=f"uniqueItems over an enum of {n} objects",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"enum": names(n)}, "minProperties": n},
            id=f"propertyNames enum + minProperties={n}",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"pattern": "^[a-z]{3}$"}, "minProperties": n},
            id=f"propertyNames pattern + minProperties={n}",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"maxLength": 2}, "minProperties": n},
            id=f"short propertyNames + minProperties={n}",
        ),
        pytest.param(
            {
                "type": "object",
                "patternProperties": {"^x[0-9]+$": {"type": "integer"}},
                "additionalProperties": False,
                "minProperties": n,
            },
            id=f"patternProperties closed + minProperties={n}",
        ),
    ]


@pytest.mark.parametrize("schema", distinct_values_schemas(50) + distinct_values_schemas(1_000))
def test_many_distinct_values_are_made_in_bounded_time(schema: Any) -> None:
    """Were refused from n = 50 on, after quadratic work (3.4 s for 1,000 enum items)."""
    started = time.perf_counter()
    instance = instance_for(schema, SEEDS[0])
    assert time.perf_counter() - started < 2
    assert_valid(schema, instance)


def test_unique_items_over_a_thousand_enum_values_is_fast() -> None:
    schema = {"type": "array", "uniqueItems": True, "minItems": 1_000, "items": {"enum": list(range(1_000))}}
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        instance_for(schema, SEEDS[0])
        best = min(best, time.perf_counter() - started)
    assert best < 0.1, best


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        pytest.param(
            {"type": "array", "uniqueItems": True, "minItems": 1_000, "items": {"enum": list(range(999))}},
            "uniqueItems: cannot make 1000 distinct items",
            id="one enum value short",
        ),
        pytest.param(
            {"type": "object", "propertyNames": {"enum": names(999)}, "minProperties": 1_000},
            "minProperties 1000: cannot name enough allowed properties",
            id="one property name short",
        ),
    ],
)
def test_one_value_short_is_refused_quickly(schema: Any, reason: str) -> None:
    started = time.perf_counter()
    with pytest.raises(SchemaError, match=reason):
        instance_for(schema, SEEDS[0])
    assert time.perf_counter() - started < 2
