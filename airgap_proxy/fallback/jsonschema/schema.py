"""A small JSON Schema validator: the generator's last word (pure).

The fallback promises output that is valid against the client's schema, so
every generated instance is checked here before it is returned. This is not
a general validator: it covers the keywords the generator honours, with the
semantics of draft 2020-12 (and the draft 4-7 forms still common in the wild:
boolean ``exclusiveMinimum``, array ``items`` with ``additionalItems``,
``dependencies``, ``definitions``), and it matches the ``jsonschema``
package's number handling (``multipleOf`` with floats, ``1 == 1.0``, booleans
are not numbers). Only local references (``#...``) are resolved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable
from fractions import Fraction
from typing import Any, TypeGuard

from airgap_proxy.fallback.jsonschema import formats, pattern
from airgap_proxy.fallback.limits import spend

TYPES = ("null", "boolean", "object", "array", "number", "string", "integer")
MAX_NESTING = 128  # subschemas validated within one another ($ref, applicators, items, properties)


class SchemaError(ValueError):
    """The schema cannot be satisfied, or uses something the fallback cannot honour.

    ``pointer`` is the JSON pointer of the keyword's schema within the root
    schema (``#/properties/age``); ``str()`` reads ``<reason> (at <pointer>)``.
    """

    def __init__(self, reason: str, pointer: str):
        super().__init__(f"{reason} (at {pointer})")
        self.reason = reason
        self.pointer = pointer


class NestingError(SchemaError):
    """Validation went more than ``MAX_NESTING`` subschemas deep."""


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def type_matches(value: object, name: str) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "number":
        return is_number(value)
    if name == "integer":
        return is_integer(value)
    if name == "string":
        return isinstance(value, str)
    return False


def is_multiple(value: int | float, divisor: int | float) -> bool:
    """``multipleOf`` as the ``jsonschema`` package decides it, exactly where its floats overflow."""
    try:
        if isinstance(divisor, float):
            quotient = value / divisor
            return int(quotient) == quotient
        return value % divisor == 0
    except OverflowError:
        return (Fraction(value) / Fraction(divisor)).denominator == 1
    except ValueError:  # NaN
        return False


def canon(value: Any) -> Hashable:
    """A hashable key under which JSON-equal values (``1`` and ``1.0``) coincide."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)  # equal numbers hash alike across int, float and Fraction
    if isinstance(value, float):
        return ("n", value) if math.isfinite(value) else ("f", repr(value))
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("z",)
    if isinstance(value, list):
        return ("l", tuple(canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, canon(v)) for k, v in value.items()))
    return ("?", repr(value))


def json_equal(a: Any, b: Any) -> bool:
    return canon(a) == canon(b)


_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")


def pointer_unescape(token: str) -> str:
    """A JSON pointer token in a URI fragment: percent-decoded, then ``~1`` and ``~0``."""
    if "%" in token:
        raw = _PERCENT.sub(lambda m: bytes([int(m.group(1), 16)]), token.encode("utf-8", "surrogatepass"))
        token = raw.decode("utf-8", "replace")
    return token.replace("~1", "/").replace("~0", "~")


def pointer_escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class Schema:
    """A root schema: resolves local ``$ref`` and validates instances."""

    def __init__(self, root: object):
        self.root = root
        self._anchors: dict[str, object] | None = None
        self._active: set[tuple[int, int]] = set()
        self._depth = 0
        self._enums: dict[int, tuple[list[Any], frozenset[Hashable]]] = {}

    # ------------------------------------------------------------------ refs

    def resolve(self, ref: object, at: str) -> tuple[object, str]:
        """The schema ``ref`` points to and its pointer; :class:`SchemaError` if it cannot."""
        if not isinstance(ref, str):
            raise SchemaError("$ref must be a string", at)
        if not ref.startswith("#"):
            raise SchemaError(f"only local references ('#...') are supported, not {ref!r}", at)
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            target = self.anchors().get(fragment)
            if target is None:
                raise SchemaError(f"$ref {ref!r}: no $anchor named {fragment!r}", at)
            return target, ref
        node = self.root
        for raw_token in fragment.split("/")[1:]:
            token = pointer_unescape(raw_token)
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise SchemaError(f"$ref {ref!r} points to nothing", at)
        return node, ref

    def anchors(self) -> dict[str, object]:
        if self._anchors is None:
            found: dict[str, object] = {}
            stack = [self.root]
            seen = 0
            while stack and seen < 100_000:
                node = stack.pop()
                seen += 1
                if isinstance(node, dict):
                    anchor = node.get("$anchor")
                    if isinstance(anchor, str):
                        found.setdefault(anchor, node)
                    stack.extend(v for k, v in node.items() if k not in ("enum", "const", "default", "examples"))
                elif isinstance(node, list):
                    stack.extend(node)
            self._anchors = found
        return self._anchors

    # ------------------------------------------------------------ validation

    def valid(self, schema: object, value: Any) -> bool:
        """Whether ``value`` is valid against ``schema`` (a part of this root).

        Raises :class:`NestingError` past ``MAX_NESTING`` nested subschemas.
        """
        spend()
        if schema is True:
            return True
        if schema is False or not isinstance(schema, dict):
            return False
        key = (id(schema), id(value))
        if key in self._active:  # a reference cycle that consumed nothing: vacuous
            return True
        if self._depth >= MAX_NESTING:
            raise NestingError(f"validation nests more than {MAX_NESTING} schemas deep", "#")
        self._active.add(key)
        self._depth += 1
        try:
            return self._valid(schema, value)
        finally:
            self._active.discard(key)
            self._depth -= 1

    def _valid(self, s: dict[str, Any], v: Any) -> bool:
        if "$ref" in s:
            try:
                target, _ = self.resolve(s["$ref"], "#")
            except SchemaError:
                return False
            if not self.valid(target, v):
                return False
        t = s.get("type")
        if t is not None:
            names = [t] if isinstance(t, str) else t
            if not any(type_matches(v, n) for n in names if isinstance(n, str)):
                return False
        if "const" in s and not json_equal(s["const"], v):
            return False
        if "enum" in s and not self._listed(s["enum"], v):
            return False
        if is_number(v) and not self._valid_number(s, v):
            return False
        if isinstance(v, str) and not self._valid_string(s, v):
            return False
        if isinstance(v, list) and not self._valid_array(s, v):
            return False
        if isinstance(v, dict) and not self._valid_object(s, v):
            return False
        return self._valid_applicators(s, v)

    def _listed(self, values: object, v: Any) -> bool:
        if isinstance(values, list):
            return canon(v) in self.enum_keys(values)
        return isinstance(values, (dict, str)) and any(json_equal(e, v) for e in values)

    def enum_keys(self, values: list[Any]) -> frozenset[Hashable]:
        """The :func:`canon` keys of an ``enum`` list, computed once per list."""
        cached = self._enums.get(id(values))
        if cached is None or cached[0] is not values:
            cached = self._enums[id(values)] = (values, frozenset(canon(e) for e in values))
        return cached[1]

    def _valid_number(self, s: dict[str, Any], v: int | float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        minimum, maximum = s.get("minimum"), s.get("maximum")
        ex_min, ex_max = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        if is_number(minimum) and (v < minimum or (ex_min is True and v == minimum)):
            return False
        if is_number(maximum) and (v > maximum or (ex_max is True and v == maximum)):
            return False
        if is_number(ex_min) and v <= ex_min:
            return False
        if is_number(ex_max) and v >= ex_max:
            return False
        m = s.get("multipleOf")
        return not (is_number(m) and m > 0 and not is_multiple(v, m))

    def _valid_string(self, s: dict[str, Any], v: str) -> bool:
        if is_integer(s.get("minLength")) and len(v) < s["minLength"]:
            return False
        if is_integer(s.get("maxLength")) and len(v) > s["maxLength"]:
            return False
        p = s.get("pattern")
        if isinstance(p, str):
            try:
                if not pattern.matches(p, v):
                    return False
            except pattern.PatternError:
                return False
        f = s.get("format")
        return not (isinstance(f, str) and not formats.conforms(f, v))

    def _valid_array(self, s: dict[str, Any], v: list[Any]) -> bool:
        if is_integer(s.get("minItems")) and len(v) < s["minItems"]:
            return False
        if is_integer(s.get("maxItems")) and len(v) > s["maxItems"]:
            return False
        if s.get("uniqueItems") is True and len({canon(x) for x in v}) != len(v):
            return False
        prefix, rest = array_rules(s)
        for i, x in enumerate(v):
            item_schema = prefix[i] if i < len(prefix) else rest
            if item_schema is not None and not self.valid(item_schema, x):
                return False
        if "contains" in s:
            hits = sum(1 for x in v if self.valid(s["contains"], x))
            low = s.get("minContains", 1)
            high = s.get("maxContains")
            if is_integer(low) and hits < low:
                return False
            if is_integer(high) and hits > high:
                return False
        return True

    def _valid_object(self, s: dict[str, Any], v: dict[str, Any]) -> bool:
        required = s.get("required")
        if isinstance(required, list) and not all(k in v for k in required if isinstance(k, str)):
            return False
        if is_integer(s.get("minProperties")) and len(v) < s["minProperties"]:
            return False
        if is_integer(s.get("maxProperties")) and len(v) > s["maxProperties"]:
            return False
        props = _mapping(s.get("properties"))
        patterns = _mapping(s.get("patternProperties"))
        additional = s.get("additionalProperties", True)
        names = s.get("propertyNames", True)
        for key, x in v.items():
            matched = False
            if key in props:
                matched = True
                if not self.valid(props[key], x):
                    return False
            for p, sub in patterns.items():
                try:
                    hit = pattern.matches(p, key)
                except pattern.PatternError:
                    return False
                if hit:
                    matched = True
                    if not self.valid(sub, x):
                        return False
            if not matched and not self.valid(additional, x):
                return False
            if names is not True and not self.valid(names, key):
                return False
        for trigger, needed in dependent_required(s).items():
            if trigger in v and not all(k in v for k in needed):
                return False
        return all(trigger not in v or self.valid(sub, v) for trigger, sub in dependent_schemas(s).items())

    def _valid_applicators(self, s: dict[str, Any], v: Any) -> bool:
        all_of = s.get("allOf")
        if isinstance(all_of, list) and not all(self.valid(sub, v) for sub in all_of):
            return False
        any_of = s.get("anyOf")
        if isinstance(any_of, list) and not any(self.valid(sub, v) for sub in any_of):
            return False
        one_of = s.get("oneOf")
        if isinstance(one_of, list) and sum(1 for sub in one_of if self.valid(sub, v)) != 1:
            return False
        if "not" in s and self.valid(s["not"], v):
            return False
        if "if" in s:
            branch = s.get("then", True) if self.valid(s["if"], v) else s.get("else", True)
            if not self.valid(branch, v):
                return False
        return True


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def array_rules(s: dict[str, Any]) -> tuple[list[object], object | None]:
    """``(prefix schemas, schema for the rest)``; ``None`` means unconstrained.

    Handles 2020-12 (``prefixItems`` + ``items``) and drafts 4-2019 (array
    ``items`` + ``additionalItems``).
    """
    items = s.get("items")
    if isinstance(items, list):
        return list(items), s.get("additionalItems")
    prefix = s.get("prefixItems")
    return (list(prefix) if isinstance(prefix, list) else []), items


def dependent_required(s: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for source in (s.get("dependentRequired"), s.get("dependencies")):
        if isinstance(source, dict):
            for k, needed in source.items():
                if isinstance(needed, list):
                    found.setdefault(k, []).extend(n for n in needed if isinstance(n, str))
    return found


def dependent_schemas(s: dict[str, Any]) -> dict[str, object]:
    found: dict[str, object] = {}
    for source in (s.get("dependentSchemas"), s.get("dependencies")):
        if isinstance(source, dict):
            for k, sub in source.items():
                if isinstance(sub, (dict, bool)):
                    found[k] = sub
    return found
