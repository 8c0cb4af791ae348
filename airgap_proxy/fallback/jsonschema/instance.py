"""Deterministic JSON Schema instances, valid or refused (pure).

:func:`instance_for` returns a value valid against the schema, or raises
:class:`~airgap_proxy.fallback.jsonschema.schema.SchemaError` saying why it cannot;
it never returns an invalid value.

How a value is made, at each schema node:

1. *Collect.* The node's keywords, its ``$ref`` target and its ``allOf``
   members are folded into one set of :class:`_Facts` (bounds intersected,
   lengths tightened, ``multipleOf`` combined, property and item rules kept
   per declaring schema so ``additionalProperties`` keeps its scope).
2. *Choose.* ``anyOf``, ``oneOf`` and ``if``/``then``/``else`` are
   alternatives: each branch is folded into a copy of the facts, in an
   order picked by the seed (simplest and non-recursive branches first once
   the value is deep, so recursive schemas bottom out). ``not`` is pushed
   inwards (De Morgan, :func:`_negation`) so that it becomes positive
   alternatives where it can; the other branches of a ``oneOf`` are first
   left to the check, then excluded the same way.
3. *Make.* ``const``/``enum`` values are tried in turn; otherwise one value
   per allowed type is made from the facts, children recursively, then a
   few boundary values as a last resort.
4. *Check.* Each candidate is validated against the node's schema by
   :class:`~airgap_proxy.fallback.jsonschema.schema.Schema` (this is what enforces
   ``oneOf``'s "exactly one", ``not`` and ``if``); the first valid one wins,
   else other seeds and branches are tried, within a fixed budget.

Everything variable comes from the :class:`Seed`; nothing is random.
"""

from __future__ import annotations

import math
from collections.abc import Container, Hashable, Iterator, Sized
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from airgap_proxy.fallback.jsonschema import formats, pattern
from airgap_proxy.fallback.jsonschema.schema import (
    TYPES,
    NestingError,
    Schema,
    SchemaError,
    array_rules,
    canon,
    dependent_required,
    dependent_schemas,
    is_integer,
    is_multiple,
    is_number,
    pointer_escape,
)
from airgap_proxy.fallback.limits import spend
from airgap_proxy.fallback.seed import Seed

MAX_DEPTH = 40  # nesting of generated values
SOFT_DEPTH = 3  # from here on: required properties only, minItems, simplest branches
MAX_STEPS = 20_000  # schema nodes visited per instance
MAX_ITEMS = 1_000
MAX_PROPERTIES = 1_000
MAX_STRING = 100_000
MAX_TEXT = 1_000_000  # characters of strings per instance
ATTEMPTS = 3  # seeds tried per node
MAX_ALTERNATIVES = 48  # anyOf/oneOf/if combinations tried per node
MAX_KEY = 24  # characters of an invented property name
MAX_NESTING = 64  # schemas folded into one another at one node ($ref, allOf, not)
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima")
_RICH = ("object", "array", "string", "number", "integer", "boolean", "null")
_SIMPLE = ("null", "boolean", "integer", "number", "string", "array", "object")


class _Exhausted(SchemaError):
    """The budget ran out: stop everything, do not try alternatives."""


class _Nested(_Exhausted):
    """The schema nests past what the fallback walks: stop, whatever the branch."""


class _TooDeep(SchemaError):
    """Values nest past ``MAX_DEPTH``: other seeds will not help, other branches may."""


@dataclass(slots=True)
class _ObjectRule:
    """``properties`` / ``patternProperties`` / ``additionalProperties`` of one schema."""

    properties: dict[str, object]
    patterns: list[tuple[str, object]]
    additional: object | None  # None: not given (any)
    pointer: str


@dataclass(slots=True)
class _ArrayRule:
    prefix: list[object]
    rest: object | None  # None: not given (any)
    pointer: str


@dataclass(slots=True)
class _Facts:
    """Everything one node's value must satisfy, folded together."""

    types: set[str] | None = None
    consts: list[Any] = field(default_factory=list)
    enums: list[list[Any]] = field(default_factory=list)
    lo: Fraction | None = None
    lo_excl: bool = False
    lo_text: str = ""
    lo_at: str = ""
    hi: Fraction | None = None
    hi_excl: bool = False
    hi_text: str = ""
    hi_at: str = ""
    multiples: list[int | float] = field(default_factory=list)
    min_len: int = 0
    max_len: int | None = None
    patterns: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    min_items: int = 0
    max_items: int | None = None
    unique: bool = False
    arrays: list[_ArrayRule] = field(default_factory=list)
    contains: list[tuple[object, int, str]] = field(default_factory=list)
    closed_items: bool = False
    min_props: int = 0
    max_props: int | None = None
    required: dict[str, None] = field(default_factory=dict)
    objects: list[_ObjectRule] = field(default_factory=list)
    names: list[object] = field(default_factory=list)
    dependent: dict[str, list[str]] = field(default_factory=dict)
    dependent_schemas: list[tuple[str, object, str]] = field(default_factory=list)
    closed_props: bool = False
    choices: list[tuple[str, list[object], str]] = field(default_factory=list)
    nots: list[object] = field(default_factory=list)
    refs: set[str] = field(default_factory=set)

    def clone(self) -> _Facts:
        copy = _Facts()
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, (list, dict, set)):
                value = value.copy()
            setattr(copy, name, value)
        return copy

    def has_string_facts(self) -> bool:
        return bool(self.min_len or self.max_len is not None or self.patterns or self.formats)

    def has_number_facts(self) -> bool:
        return self.lo is not None or self.hi is not None or bool(self.multiples)

    def has_array_facts(self) -> bool:
        return bool(self.min_items or self.max_items is not None or self.arrays or self.contains or self.unique)

    def has_object_facts(self) -> bool:
        return bool(self.required or self.objects or self.min_props or self.max_props is not None or self.names)


def instance_for(schema: object, seed: Seed) -> Any:
    """A value valid against ``schema`` (JSON Schema, local ``$ref`` only), chosen by ``seed``.

    Raises :class:`SchemaError` when the schema cannot be satisfied, uses an
    unsupported construct, or needs more than the fallback's limits.
    """
    try:
        return _Generator(schema).generate(schema, "#", 0, seed)
    except RecursionError:  # a last resort: the explicit limits should stop nesting first
        raise _Nested("the schema nests too deeply for the deterministic fallback", "#") from None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def _decimal(value: int | float) -> Fraction:
    """The number as written in JSON (``0.1`` is one tenth, not its binary neighbour)."""
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def _float(value: Fraction | int | float | None) -> float | None:
    """``value`` as a float; ``None`` if it is ``None`` or past the float range."""
    if value is None:
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _exact(value: Fraction, as_int: bool) -> int | float | None:
    """``value`` as an int or a float that is exactly it; ``None`` if neither can be."""
    if value.denominator == 1:
        return int(value)
    converted = None if as_int else _float(value)
    return converted if converted is not None and Fraction(converted) == value else None


def _rounded_product(k: int, step: Fraction) -> float | None:
    """``k * step`` in float arithmetic, rounded to 12 places (``0.1 * 3`` -> ``0.3``); ``None`` past the range."""
    k_float, step_float = _float(k), _float(step)
    if k_float is None or step_float is None or not math.isfinite(k_float * step_float):
        return None
    return round(k_float * step_float, 12)


def _lcm(a: Fraction, b: Fraction) -> Fraction:
    return Fraction(math.lcm(a.numerator, b.numerator), math.gcd(a.denominator, b.denominator))


def _count(value: object, keyword: str, pointer: str) -> int:
    if not is_integer(value) or value < 0:
        raise SchemaError(f"{keyword} must be a non-negative integer, got {value!r}", pointer)
    return int(value)


def _bound_text(keyword: str, value: Fraction) -> str:
    number = value.numerator if value.denominator == 1 else float(value)
    return f"{keyword} {number}"


class _Generator:
    def __init__(self, root: object):
        self.schema = Schema(root)
        self.steps = 0
        self.text = 0
        self.ref_stack: list[set[str]] = []
        self.nesting = 0

    # --------------------------------------------------------------- driver

    def tick(self, pointer: str) -> None:
        spend()
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _Exhausted("the schema is too large or too ambiguous for the deterministic fallback", pointer)

    def generate(self, schema: object, pointer: str, depth: int, seed: Seed, *, avoid: Container[Hashable] = ()) -> Any:
        """A value valid against ``schema`` whose :func:`canon` key is not in ``avoid``, or :class:`SchemaError`."""
        if depth > MAX_DEPTH:
            raise _TooDeep("values nest too deeply (a recursive $ref with no way out?)", pointer)
        if schema is True:
            return _WORDS[seed.below(len(_WORDS))]
        base = _Facts()
        self.collect(base, schema, pointer, ())
        self.ref_stack.append(base.refs)
        try:
            minimal = depth >= SOFT_DEPTH or any(r in frame for frame in self.ref_stack[:-1] for r in base.refs)
            errors: list[SchemaError] = []
            for tried, facts in enumerate(self.alternatives(base, seed, minimal, errors)):
                if tried >= MAX_ALTERNATIVES:
                    break
                for value in self.candidates(facts, pointer, depth, seed, minimal=minimal, errors=errors, avoid=avoid):
                    if avoid and canon(value) in avoid:
                        continue
                    self.tick(pointer)
                    if self.valid(schema, value, pointer):
                        return value
        finally:
            self.ref_stack.pop()
        if errors:
            raise errors[0]
        raise SchemaError("no value satisfies every constraint together (allOf/anyOf/oneOf/not/if)", pointer)

    def valid(self, schema: object, value: Any, pointer: str) -> bool:
        """:meth:`Schema.valid`, with its nesting limit turned into a stop."""
        try:
            return self.schema.valid(schema, value)
        except NestingError as exc:
            raise _Nested(exc.reason, pointer) from None

    # -------------------------------------------------------------- collect

    def collect(self, f: _Facts, schema: object, pointer: str, active: tuple[str, ...]) -> None:
        """Fold ``schema`` (with its ``$ref`` and ``allOf``) into ``f``, at most ``MAX_NESTING`` deep."""
        if self.nesting >= MAX_NESTING:
            raise _Nested(f"the schema nests more than {MAX_NESTING} levels deep ($ref, allOf, not)", pointer)
        self.nesting += 1
        try:
            self.fold(f, schema, pointer, active)
        finally:
            self.nesting -= 1

    def fold(self, f: _Facts, schema: object, pointer: str, active: tuple[str, ...]) -> None:
        if schema is True:
            return
        if schema is False:
            raise SchemaError("the schema is `false`, which no value satisfies", pointer)
        if not isinstance(schema, dict):
            raise SchemaError(f"a schema must be an object or a boolean, got {_kind(schema)}", pointer)
        self.tick(pointer)
        for keyword in ("$dynamicRef", "$recursiveRef"):
            if keyword in schema:
                raise SchemaError(f"{keyword} is not supported; use $ref", pointer)
        if "$ref" in schema:
            ref = schema["$ref"]
            target, target_pointer = self.schema.resolve(ref, pointer)
            if ref not in active and ref not in f.refs:
                f.refs.add(ref)
                self.collect(f, target, target_pointer, (*active, ref))
        self.collect_type(f, schema, pointer)
        if "const" in schema:
            f.consts.append(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError("enum must be a non-empty array", pointer)
            f.enums.append(values)
        self.collect_number(f, schema, pointer)
        self.collect_string(f, schema, pointer)
        self.collect_array(f, schema, pointer)
        self.collect_object(f, schema, pointer)
        all_of = schema.get("allOf")
        if all_of is not None:
            if not isinstance(all_of, list) or not all_of:
                raise SchemaError("allOf must be a non-empty array", pointer)
            for i, sub in enumerate(all_of):
                self.collect(f, sub, f"{pointer}/allOf/{i}", active)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                branches = schema[keyword]
                if not isinstance(branches, list) or not branches:
                    raise SchemaError(f"{keyword} must be a non-empty array", pointer)
                f.choices.append((keyword, branches, pointer))
        if "not" in schema:
            self.exclude(f, schema["not"], f"{pointer}/not", active)
        if "if" in schema:
            f.choices.append(("if", [schema["if"], schema.get("then", True), schema.get("else", True)], pointer))

    def exclude(self, f: _Facts, schema: object, pointer: str, active: tuple[str, ...]) -> None:
        """Fold "not ``schema``" into ``f``: as positive constraints where :func:`_negation` can, else kept aside."""
        if schema is True or schema == {}:
            raise SchemaError("`not: {}` excludes every value", pointer)
        negation = _negation(schema)
        if negation is None:
            f.nots.append(schema)  # checked on candidates; a pure type schema also narrows the types
        else:
            self.collect(f, negation, pointer, active)

    def collect_type(self, f: _Facts, schema: dict[str, Any], pointer: str) -> None:
        if "type" not in schema:
            return
        raw = schema["type"]
        names = [raw] if isinstance(raw, str) else raw
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in TYPES for n in names):
            raise SchemaError(
                f"type must be one of {', '.join(TYPES)} or a non-empty list of them, got {raw!r}", pointer
            )
        allowed = set(names)
        if "number" in allowed:
            allowed.add("integer")
        merged = allowed if f.types is None else f.types & allowed
        if not merged:
            raise SchemaError(f"type {raw!r} conflicts with the other types required here", pointer)
        f.types = merged

    def collect_number(self, f: _Facts, schema: dict[str, Any], pointer: str) -> None:
        for keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            value = schema.get(keyword)
            if value is None or (isinstance(value, bool) and keyword.startswith("exclusive")):
                continue
            if not is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
                raise SchemaError(f"{keyword} must be a number, got {value!r}", pointer)
            if keyword == "multipleOf":
                if value <= 0:
                    raise SchemaError(f"multipleOf must be greater than 0, got {value!r}", pointer)
                f.multiples.append(value)
            elif keyword.endswith("inimum"):
                exclusive = keyword == "exclusiveMinimum" or schema.get("exclusiveMinimum") is True
                self.lower(f, Fraction(value), exclusive, "exclusiveMinimum" if exclusive else "minimum", pointer)
            else:
                exclusive = keyword == "exclusiveMaximum" or schema.get("exclusiveMaximum") is True
                self.upper(f, Fraction(value), exclusive, "exclusiveMaximum" if exclusive else "maximum", pointer)

    @staticmethod
    def lower(f: _Facts, value: Fraction, exclusive: bool, keyword: str, pointer: str) -> None:
        if f.lo is None or value > f.lo or (value == f.lo and exclusive):
            f.lo, f.lo_excl, f.lo_text, f.lo_at = value, exclusive, _bound_text(keyword, value), pointer

    @staticmethod
    def upper(f: _Facts, value: Fraction, exclusive: bool, keyword: str, pointer: str) -> None:
        if f.hi is None or value < f.hi or (value == f.hi and exclusive):
            f.hi, f.hi_excl, f.hi_text, f.hi_at = value, exclusive, _bound_text(keyword, value), pointer

    def collect_string(self, f: _Facts, schema: dict[str, Any], pointer: str) -> None:
        if "minLength" in schema:
            f.min_len = max(f.min_len, _count(schema["minLength"], "minLength", pointer))
        if "maxLength" in schema:
            limit = _count(schema["maxLength"], "maxLength", pointer)
            f.max_len = limit if f.max_len is None else min(f.max_len, limit)
        if "pattern" in schema:
            regex = schema["pattern"]
            if not isinstance(regex, str):
                raise SchemaError("pattern must be a string", pointer)
            try:
                pattern.check(regex)
            except pattern.PatternError as exc:
                raise SchemaError(f"pattern {regex!r}: {exc}", pointer) from None
            f.patterns.append(regex)
        if isinstance(schema.get("format"), str):
            f.formats.append(schema["format"])

    def collect_array(self, f: _Facts, schema: dict[str, Any], pointer: str) -> None:
        if "minItems" in schema:
            f.min_items = max(f.min_items, _count(schema["minItems"], "minItems", pointer))
        if "maxItems" in schema:
            limit = _count(schema["maxItems"], "maxItems", pointer)
            f.max_items = limit if f.max_items is None else min(f.max_items, limit)
        if schema.get("uniqueItems") is True:
            f.unique = True
        if "items" in schema or "prefixItems" in schema:
            items, prefix = schema.get("items"), schema.get("prefixItems", [])
            if not isinstance(items, (dict, bool, list, type(None))) or not isinstance(prefix, list):
                raise SchemaError("items must be a schema and prefixItems an array of schemas", pointer)
            rule_prefix, rest = array_rules(schema)
            f.arrays.append(_ArrayRule(rule_prefix, rest, pointer))
        if "contains" in schema:
            low = _count(schema.get("minContains", 1), "minContains", pointer)
            f.contains.append((schema["contains"], low, f"{pointer}/contains"))
        if schema.get("unevaluatedItems") is False:
            f.closed_items = True

    def collect_object(self, f: _Facts, schema: dict[str, Any], pointer: str) -> None:
        if "minProperties" in schema:
            f.min_props = max(f.min_props, _count(schema["minProperties"], "minProperties", pointer))
        if "maxProperties" in schema:
            limit = _count(schema["maxProperties"], "maxProperties", pointer)
            f.max_props = limit if f.max_props is None else min(f.max_props, limit)
        if "required" in schema:
            required = schema["required"]
            if not isinstance(required, list) or not all(isinstance(k, str) for k in required):
                raise SchemaError("required must be an array of strings", pointer)
            f.required.update(dict.fromkeys(required))
        if "properties" in schema or "patternProperties" in schema or "additionalProperties" in schema:
            props = schema.get("properties", {})
            patterns = schema.get("patternProperties", {})
            if not isinstance(props, dict) or not isinstance(patterns, dict):
                raise SchemaError("properties and patternProperties must be objects", pointer)
            for regex in patterns:
                try:
                    pattern.check(regex)
                except pattern.PatternError as exc:
                    raise SchemaError(f"patternProperties {regex!r}: {exc}", pointer) from None
            additional = schema.get("additionalProperties")
            f.objects.append(_ObjectRule(props, list(patterns.items()), additional, pointer))
        if "propertyNames" in schema:
            f.names.append(schema["propertyNames"])
        for trigger, needed in dependent_required(schema).items():
            f.dependent.setdefault(trigger, []).extend(needed)
        for trigger, sub in dependent_schemas(schema).items():
            f.dependent_schemas.append((trigger, sub, f"{pointer}/dependentSchemas/{pointer_escape(trigger)}"))
        if schema.get("unevaluatedProperties") is False:
            f.closed_props = True

    # --------------------------------------------------------- alternatives

    def alternatives(self, base: _Facts, seed: Seed, minimal: bool, errors: list[SchemaError]) -> Iterator[_Facts]:
        """``base`` with each combination of its pending choices folded in, depth first, without recursion."""
        stack: list[Iterator[_Facts]] = [iter((base,))]
        while stack:
            f = next(stack[-1], None)
            if f is None:
                stack.pop()
            elif not f.choices:
                yield f
            else:
                stack.append(self.branches(f, seed, minimal, errors))

    def branches(self, base: _Facts, seed: Seed, minimal: bool, errors: list[SchemaError]) -> Iterator[_Facts]:
        """``base`` with each branch of its first pending choice folded in (the other choices stay pending)."""
        kind, branches, pointer = base.choices[0]
        rest = base.choices[1:]
        if kind == "if":
            condition, then, otherwise = branches
            for taken in (True, False):
                f = base.clone()
                f.choices = rest.copy()
                try:
                    if taken:
                        self.collect(f, condition, f"{pointer}/if", tuple(f.refs))
                        self.collect(f, then, f"{pointer}/then", tuple(f.refs))
                    else:
                        self.exclude(f, condition, f"{pointer}/if", tuple(f.refs))
                        self.collect(f, otherwise, f"{pointer}/else", tuple(f.refs))
                except _Exhausted:
                    raise
                except SchemaError as exc:
                    errors.append(exc)
                    continue
                yield f
            return
        order = self.branch_order(branches, seed.child(pointer + kind), minimal)
        # oneOf: first leave the other branches to the final check (cheap, usually enough), then
        # fold their negations in as constraints (finds values that only a narrow corner allows).
        modes = ("check", "negate") if kind == "oneOf" else ("",)
        for mode in modes:
            for i in order:
                f = base.clone()
                f.choices = rest.copy()
                try:
                    self.collect(f, branches[i], f"{pointer}/{kind}/{i}", tuple(f.refs))
                    for j, other in enumerate(branches):
                        if j != i and mode == "check":
                            f.nots.append(other)
                        elif j != i and mode == "negate":
                            self.exclude(f, other, f"{pointer}/oneOf/{j}", tuple(f.refs))
                except _Exhausted:
                    raise
                except SchemaError as exc:
                    errors.append(exc)
                    continue
                yield f

    def branch_order(self, branches: list[object], seed: Seed, minimal: bool) -> list[int]:
        """Seed-rotated; null-only branches last; when minimal, simple and non-recursive first."""
        n = len(branches)
        start = seed.below(n)
        rotated = [(start + k) % n for k in range(n)]
        if minimal:
            active = set().union(*self.ref_stack) if self.ref_stack else set()
            return sorted(rotated, key=lambda i: (self.mentions(branches[i], active), _size(branches[i])))
        return sorted(rotated, key=lambda i: branches[i] == {"type": "null"})

    @staticmethod
    def mentions(schema: object, refs: set[str]) -> bool:
        """Whether ``schema`` (not following refs) refers to one of ``refs``."""
        stack = [schema]
        seen = 0
        while stack and seen < 2_000:
            node = stack.pop()
            seen += 1
            if isinstance(node, dict):
                if node.get("$ref") in refs:
                    return True
                stack.extend(v for k, v in node.items() if k not in ("enum", "const", "default", "examples"))
            elif isinstance(node, list):
                stack.extend(node)
        return False

    # ----------------------------------------------------------- candidates

    def candidates(
        self,
        f: _Facts,
        pointer: str,
        depth: int,
        seed: Seed,
        *,
        minimal: bool,
        errors: list[SchemaError],
        avoid: Container[Hashable] = (),
    ) -> Iterator[Any]:
        """Values to check against the node's schema, best first."""
        if f.consts or f.enums:
            yield from self.listed(f, seed, minimal, avoid)
            errors.append(SchemaError("no value of enum/const satisfies the other constraints", pointer))
            return
        types = self.type_order(f, depth, minimal)
        if not types:
            errors.append(SchemaError("no type satisfies every constraint here (type and not)", pointer))
            return
        for attempt in range(ATTEMPTS):
            s = seed if attempt == 0 else seed.child(f"attempt{attempt}")
            too_deep = False
            for t in types:
                try:
                    yield self.typed(t, f, pointer, depth, s, minimal=minimal)
                except _Exhausted:
                    raise
                except _TooDeep as exc:
                    errors.append(exc)
                    too_deep = True
                except SchemaError as exc:
                    errors.append(exc)
            if too_deep:
                return
        yield from self.edge_values(f, types)

    def edge_values(self, f: _Facts, types: list[str]) -> Iterator[Any]:
        """Last resorts for scalars: small and boundary values that the facts allow.

        They rescue constraints that only the final check sees, such as a
        ``oneOf`` inside a ``not`` that small integers happen to satisfy.
        """
        if "boolean" in types:
            yield from (False, True)
        if "integer" in types or "number" in types:
            edges: list[int | float] = [0, 1, -1, 2, -2, 3, 10, -10, 100, -100]
            for bound, step in ((f.lo, 1), (f.hi, -1)):
                if bound is not None:
                    edges += [
                        math.ceil(bound) if step > 0 else math.floor(bound),
                        int(bound) + step,
                        int(bound) + 2 * step,
                    ]
            if "number" in types:
                edges += [0.5, -0.5, 1.5]
            for value in edges:
                if self.in_bounds(f, value) and all(is_multiple(value, m) for m in f.multiples):
                    yield value
        if "string" in types:
            for text in ("", "a", "0", "ab", "abc", " "):
                if self.string_fits(f, text):
                    yield text

    def listed(self, f: _Facts, seed: Seed, minimal: bool, avoid: Container[Hashable] = ()) -> Iterator[Any]:
        """The ``const`` or ``enum`` values every listing allows, from a seeded start (past ``avoid``'s)."""
        pool = f.consts[:1] if f.consts else f.enums[0]
        if f.consts:
            start = 0
        elif minimal:  # in order, from just past the values already taken (uniqueItems)
            start = len(avoid) % len(pool) if isinstance(avoid, Sized) else 0
        else:
            start = seed.below(len(pool))
        listings = [self.schema.enum_keys(values) for values in f.enums]
        consts = {canon(c) for c in f.consts}
        excluded = [n for n in f.nots if isinstance(n, dict)]
        for k in range(len(pool)):
            value = pool[(start + k) % len(pool)]
            if isinstance(value, float) and not math.isfinite(value):
                continue
            key = canon(value)
            if key in avoid or any(key not in keys for keys in listings) or any(key != c for c in consts):
                continue
            if any(self.valid(n, value, "#") for n in excluded):
                continue
            yield value

    def type_order(self, f: _Facts, depth: int, minimal: bool) -> list[str]:
        excluded: set[str] = set()
        for n in f.nots:
            if isinstance(n, dict) and set(n) == {"type"}:
                names = [n["type"]] if isinstance(n["type"], str) else n["type"]
                if isinstance(names, list):
                    excluded.update(x for x in names if isinstance(x, str))
                    if "number" in names:
                        excluded.add("integer")
        preference = _SIMPLE if minimal else _RICH
        if f.types is not None:
            allowed = f.types
            order = [t for t in preference if t in allowed]
        else:
            inferred = {
                "string": f.has_string_facts(),
                "number": f.has_number_facts() and not all(isinstance(m, int) for m in f.multiples or [0.5]),
                "integer": f.has_number_facts(),
                "array": f.has_array_facts(),
                "object": f.has_object_facts(),
            }
            first = [t for t in preference if inferred.get(t)]
            if not first:
                first = ["object"] if depth == 0 else ["string"]
            order = first + [t for t in preference if t not in first]
        return [t for t in order if t not in excluded]

    def typed(self, t: str, f: _Facts, pointer: str, depth: int, seed: Seed, *, minimal: bool) -> Any:
        if t == "null":
            return None
        if t == "boolean":
            return False if minimal else seed.child("bool").flag()
        if t == "integer":
            return self.integer(f, pointer, seed, minimal)
        if t == "number":
            return self.number(f, pointer, seed, minimal)
        if t == "string":
            text = self.string(f, pointer, seed, minimal)
            self.text += len(text)
            if self.text > MAX_TEXT:
                raise _Exhausted(f"the instance would hold over {MAX_TEXT} characters of text", pointer)
            return text
        if t == "array":
            return self.array(f, pointer, depth, seed, minimal)
        return self.object(f, pointer, depth, seed, minimal)

    # -------------------------------------------------------------- numbers

    def bounds_error(self, f: _Facts, what: str, pointer: str) -> SchemaError:
        """Why no number fits, located where the bounds are if they share a schema."""
        located = {p for p in (f.lo_at, f.hi_at) if p}
        if len(located) == 1:
            pointer = located.pop()
        if f.lo is not None and f.hi is not None and (f.lo > f.hi or (f.lo == f.hi and (f.lo_excl or f.hi_excl))):
            relation = "is greater than" if f.lo > f.hi else "leaves no value below"
            return SchemaError(f"{f.lo_text} {relation} {f.hi_text}", pointer)
        parts = [t for t in (f.lo_text, f.hi_text) if t]
        if f.multiples:
            parts.append("multipleOf " + " and ".join(repr(m) for m in f.multiples))
        return SchemaError(f"no {what} satisfies {', '.join(parts)}", pointer)

    def in_bounds(self, f: _Facts, value: int | float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        v = Fraction(value)
        if f.lo is not None and (v < f.lo or (f.lo_excl and v == f.lo)):
            return False
        return f.hi is None or not (v > f.hi or (f.hi_excl and v == f.hi))

    def step_range(self, f: _Facts, step: Fraction) -> tuple[int | None, int | None]:
        """The range of ``k`` with ``k * step`` within the bounds."""
        k_lo = k_hi = None
        if f.lo is not None:
            q = f.lo / step
            k_lo = math.floor(q) + 1 if f.lo_excl and q.denominator == 1 else math.ceil(q)
        if f.hi is not None:
            q = f.hi / step
            k_hi = math.ceil(q) - 1 if f.hi_excl and q.denominator == 1 else math.floor(q)
        return k_lo, k_hi

    def multiples(self, f: _Facts, step: Fraction, seed: Seed, minimal: bool, as_int: bool) -> Iterator[int | float]:
        """Values ``k * step`` within the bounds, nearest a seeded start first."""
        k_lo, k_hi = self.step_range(f, step)
        if k_lo is not None and k_hi is not None and k_lo > k_hi:
            return
        wander = 0 if minimal else seed.child("k").below(20)
        if k_lo is not None and k_hi is not None:
            start = k_lo + (0 if minimal else seed.child("k").below(k_hi - k_lo + 1))
        elif k_lo is not None:
            start = k_lo + wander
        elif k_hi is not None:
            start = k_hi - wander
        else:
            start = 0 if minimal else 1 + wander
        for offset in range(64):
            k = start + (offset + 1) // 2 * (1 if offset % 2 else -1)
            if (k_lo is not None and k < k_lo) or (k_hi is not None and k > k_hi):
                continue
            exact = k * step
            value = int(exact) if as_int or exact.denominator == 1 else _float(exact)
            if value is not None and self.fits(f, value):
                yield value
            if not as_int and exact.denominator != 1:
                rounded = _rounded_product(k, step)
                if rounded is not None and self.fits(f, rounded):
                    yield rounded

    def binary_multiples(self, f: _Facts, as_int: bool) -> Iterator[int | float]:
        """``k * 2**j`` times a float ``multipleOf``, near the bounds: exact in binary.

        The ``jsonschema`` package judges a float ``multipleOf`` by its binary
        value, so these are multiples at any magnitude (``1e-300`` next to
        ``1e300``), where the decimal steps of :meth:`multiples` are not.
        Past the float range they are integers.
        """
        anchors = [b for b in (f.lo, f.hi) if b] or [Fraction(1)]
        for m in f.multiples:
            if not isinstance(m, float):
                continue
            for anchor in anchors:
                ratio = abs(anchor) / Fraction(m)
                top = ratio.numerator.bit_length() - ratio.denominator.bit_length()
                for j in range(top - 4, top + 2):
                    for k in range(1, 16):
                        for sign in (1, -1):
                            value = _exact(sign * k * Fraction(m) * Fraction(2) ** j, as_int)
                            if value is not None and self.fits(f, value):
                                yield value

    def fits(self, f: _Facts, value: int | float) -> bool:
        return self.in_bounds(f, value) and all(is_multiple(value, m) for m in f.multiples)

    def integer(self, f: _Facts, pointer: str, seed: Seed, minimal: bool) -> int:
        step = Fraction(1)
        for m in f.multiples:
            step = _lcm(step, _decimal(m))
        for value in self.multiples(f, step, seed, minimal, as_int=True):
            return int(value)
        for value in self.binary_multiples(f, as_int=True):
            return int(value)
        raise self.bounds_error(f, "integer", pointer)

    def number(self, f: _Facts, pointer: str, seed: Seed, minimal: bool) -> int | float:
        if f.multiples:
            step = _decimal(f.multiples[0])
            for m in f.multiples[1:]:
                step = _lcm(step, _decimal(m))
            for value in self.multiples(f, step, seed, minimal, as_int=False):
                return value
            for value in self.binary_multiples(f, as_int=False):
                return value
            raise self.bounds_error(f, "number", pointer)
        for value in self.plain_numbers(f, seed, minimal):
            if math.isfinite(value) and self.in_bounds(f, value):
                return value
        raise self.bounds_error(f, "number", pointer)

    def plain_numbers(self, f: _Facts, seed: Seed, minimal: bool) -> Iterator[float]:
        """Candidates, preferring short non-integral decimals (``12.25``)."""
        quarter = (2 * seed.child("q").below(400) + 1) / 4  # 0.25 .. 199.75, never integral
        lo, hi = _float(f.lo), _float(f.hi)
        if (lo is None and f.lo is not None and f.lo > 0) or (hi is None and f.hi is not None and f.hi < 0):
            return  # every allowed number is past the float range: integers only
        if lo is not None and hi is not None:
            fraction = 0.5 if minimal else (1 + seed.child("f").below(98)) / 100
            yield round(lo + (hi - lo) * fraction, 2)
            yield lo + (hi - lo) * fraction
            yield (lo + hi) / 2
        elif lo is not None:
            yield math.floor(lo) + (0.5 if minimal else quarter)
            yield lo + abs(lo) * 1e-9 + 0.5
        elif hi is not None:
            yield math.ceil(hi) - (0.5 if minimal else quarter)
            yield hi - abs(hi) * 1e-9 - 0.5
        else:
            yield 0.5 if minimal else quarter
        for edge, direction in ((lo, math.inf), (hi, -math.inf)):
            if edge is not None:
                yield edge
                yield math.nextafter(edge, direction)

    # -------------------------------------------------------------- strings

    def string(self, f: _Facts, pointer: str, seed: Seed, minimal: bool) -> str:
        lo, hi = f.min_len, f.max_len
        if hi is not None and lo > hi:
            raise SchemaError(f"minLength {lo} is greater than maxLength {hi}", pointer)
        if lo > MAX_STRING:
            raise SchemaError(f"minLength {lo} is over the fallback's limit of {MAX_STRING}", pointer)
        known = [name for name in f.formats if name in formats.GENERATORS]
        if known:
            try:
                return self.formatted(f, known[0], pointer, seed)
            except SchemaError:
                if not f.patterns:
                    raise
                return self.patterned(f, pointer, seed)  # a pattern sample may happen to be in the format
        if f.patterns:
            return self.patterned(f, pointer, seed)
        count = 1 if minimal else 1 + seed.child("words").below(2)
        words = [_WORDS[seed.child(f"w{i}").below(len(_WORDS))] for i in range(count)]
        text = " ".join(words)
        while len(text) < lo:
            text += " " + _WORDS[(len(text) * 7) % len(_WORDS)]
        text = text[: max(lo, len(" ".join(words)))]
        if hi is not None:
            text = text[:hi]
        return text[:-1] + "x" if text.endswith(" ") else text

    def string_fits(self, f: _Facts, text: str) -> bool:
        if len(text) < f.min_len or (f.max_len is not None and len(text) > f.max_len):
            return False
        return all(pattern.matches(p, text) for p in f.patterns) and all(formats.conforms(n, text) for n in f.formats)

    def formatted(self, f: _Facts, name: str, pointer: str, seed: Seed) -> str:
        for attempt in range(2 * ATTEMPTS):
            text = formats.generate(name, seed.child(f"format{attempt}"), f.min_len, f.max_len)
            if text is not None and self.string_fits(f, text):
                return text
        limits = _length_text(f.min_len, f.max_len)
        extra = f" matching pattern {f.patterns[0]!r}" if f.patterns else ""
        raise SchemaError(f"cannot make a {name!r} string{limits}{extra}", pointer)

    def patterned(self, f: _Facts, pointer: str, seed: Seed) -> str:
        """A string for every pattern; several patterns are tried alone and joined (``^a`` + ``z$``)."""
        for attempt in range(3 * ATTEMPTS):
            samples = []
            for regex in f.patterns:
                lo = f.min_len if len(f.patterns) == 1 else 0
                try:
                    sample = pattern.sample(regex, lo, f.max_len, seed.child(f"pattern{attempt}:{regex}"))
                except pattern.PatternError as exc:
                    raise SchemaError(f"pattern {regex!r}: {exc}", pointer) from None
                if sample is not None:
                    samples.append(sample)
            candidates = [*samples, "".join(samples), "".join(reversed(samples))] if len(samples) > 1 else samples
            if len(samples) > 1:  # patterns searched, not anchored, may take padding at either end
                candidates += [pad for c in candidates if len(c) < f.min_len for pad in _padded(c, f.min_len)]
            for text in candidates:
                if self.string_fits(f, text):
                    return text
        regex = f.patterns[0]
        also = f" and {', '.join(repr(p) for p in f.patterns[1:])}" if len(f.patterns) > 1 else ""
        raise SchemaError(
            f"cannot make a string matching pattern {regex!r}{also}{_length_text(f.min_len, f.max_len)}", pointer
        )

    # --------------------------------------------------------------- arrays

    def array(self, f: _Facts, pointer: str, depth: int, seed: Seed, minimal: bool) -> list[Any]:
        """Items by position (prefix and rest rules), with ``contains`` matches placed where they fit.

        Each ``contains`` needs ``minContains`` matching items: they are placed
        on their own items when the length allows, else stacked on the same
        ones; a match that does not fit an item's position moves to the next.
        """
        lo, hi = f.min_items, f.max_items
        closed_at: int | None = None
        for rule in f.arrays:
            if rule.rest is False or f.closed_items:
                closed_at = len(rule.prefix) if closed_at is None else min(closed_at, len(rule.prefix))
        if closed_at is not None and (hi is None or closed_at < hi):
            if lo > closed_at:
                raise SchemaError(f"items: false allows at most {closed_at} items but minItems is {lo}", pointer)
            hi = closed_at
        if hi is not None and lo > hi:
            raise SchemaError(f"minItems {lo} is greater than maxItems {hi}", pointer)
        disjoint: list[object] = [c for c, low, _ in f.contains for _ in range(low)]
        most = max((low for _, low, _ in f.contains), default=0)
        stacked: list[object] = [{"allOf": [c for c, low, _ in f.contains if low > k]} for k in range(most)]
        if hi is not None and most > hi:
            raise SchemaError(f"contains needs {most} matching items but at most {hi} are allowed", pointer)
        if max(lo, most) > MAX_ITEMS:
            raise SchemaError(f"minItems {max(lo, most)} is over the fallback's limit of {MAX_ITEMS}", pointer)
        longest_prefix = max((len(r.prefix) for r in f.arrays), default=0)
        count = lo if minimal else max(lo, min(longest_prefix, MAX_ITEMS), 1 + seed.child("n").below(3))
        if hi is not None:
            count = min(count, hi)
        layouts = [disjoint, stacked] if len(f.contains) > 1 and (hi is None or len(disjoint) <= hi) else [stacked]
        for layout in layouts[:-1]:
            try:
                return self.items(f, layout.copy(), pointer, depth, seed, count=count, hi=hi)
            except _Exhausted:
                raise
            except SchemaError:
                continue
        return self.items(f, layouts[-1].copy(), pointer, depth, seed, count=count, hi=hi)

    def items(
        self, f: _Facts, pending: list[object], pointer: str, depth: int, seed: Seed, *, count: int, hi: int | None
    ) -> list[Any]:
        """``count`` items or more, until every ``pending`` contains match is placed."""
        lo = f.min_items
        result: list[Any] = []
        seen: set[Hashable] | None = set() if f.unique else None
        i = 0
        while (i < count or pending) and (hi is None or i < hi) and i < MAX_ITEMS:
            schemas: list[tuple[object, str]] = []
            for rule in f.arrays:
                if i < len(rule.prefix):
                    schemas.append((rule.prefix[i], f"{rule.pointer}/prefixItems/{i}"))
                elif rule.rest is not None:
                    schemas.append((rule.rest, f"{rule.pointer}/items"))
            value = _MISSING
            if pending:
                matching = _combine([*schemas, (pending[0], f"{pointer}/contains")], f"{pointer}/items")
                value = self.item(matching, depth, seed.child(i), seen)
                if value is not _MISSING:
                    pending.pop(0)
            if value is _MISSING:
                plain, plain_pointer = _combine(schemas, f"{pointer}/items")
                try:
                    value = self.unique_item(plain, plain_pointer, depth, seed.child(i), seen=seen)
                except _Exhausted:
                    raise
                except SchemaError:
                    if i < lo:
                        raise
                    break
                if value is _MISSING:
                    if i < lo:
                        raise SchemaError(f"uniqueItems: cannot make {lo} distinct items", pointer)
                    break
            if seen is not None:
                seen.add(canon(value))
            result.append(value)
            i += 1
        if pending:
            raise SchemaError("contains: no room for the items it needs next to the other array rules", pointer)
        return result

    def item(self, schema: tuple[object, str], depth: int, seed: Seed, seen: set[Hashable] | None) -> Any:
        """``unique_item`` for a ``contains`` placement: ``_MISSING`` instead of an error."""
        try:
            return self.unique_item(schema[0], schema[1], depth, seed, seen=seen)
        except _Exhausted:
            raise
        except SchemaError:
            return _MISSING

    def unique_item(self, schema: object, pointer: str, depth: int, seed: Seed, *, seen: set[Hashable] | None) -> Any:
        """A generated item; with ``seen`` (``uniqueItems``), one not seen yet, else ``_MISSING``."""
        if not seen:
            return self.generate(schema, pointer, depth + 1, seed)
        for attempt in range(4 * ATTEMPTS):
            try:
                return self.generate(
                    schema, pointer, depth + 1, seed.child(f"unique{attempt}") if attempt else seed, avoid=seen
                )
            except _Exhausted:
                raise
            except SchemaError:
                continue  # every candidate of this seed was taken
        return _MISSING

    # -------------------------------------------------------------- objects

    def property_schemas(self, f: _Facts, key: str) -> list[tuple[object, str]] | None:
        """The schemas ``key``'s value must satisfy; ``None`` if the key is not allowed."""
        schemas: list[tuple[object, str]] = []
        for rule in f.objects:
            matched = False
            if key in rule.properties:
                schemas.append((rule.properties[key], f"{rule.pointer}/properties/{pointer_escape(key)}"))
                matched = True
            for regex, sub in rule.patterns:
                if pattern.matches(regex, key):
                    schemas.append((sub, f"{rule.pointer}/patternProperties/{pointer_escape(regex)}"))
                    matched = True
            if not matched and rule.additional is not None:
                if rule.additional is False:
                    return None
                schemas.append((rule.additional, f"{rule.pointer}/additionalProperties"))
        if f.closed_props and not any(key in rule.properties for rule in f.objects):
            return None
        if any(not self.valid(names, key, "#") for names in f.names):
            return None
        return schemas

    def object(self, f: _Facts, pointer: str, depth: int, seed: Seed, minimal: bool) -> dict[str, Any]:
        if any(trigger in f.required for trigger, _, _ in f.dependent_schemas):
            f = f.clone()
            pending, f.dependent_schemas = f.dependent_schemas, []
            for trigger, sub, sub_pointer in pending:
                if trigger in f.required:
                    self.collect(f, sub, sub_pointer, tuple(f.refs))
                else:
                    f.dependent_schemas.append((trigger, sub, sub_pointer))
        keys = self.object_keys(f, pointer, depth, seed, minimal)
        required = set(f.required)
        for needed in f.dependent.values():
            required.update(k for k in needed if k in keys)
        result: dict[str, Any] = {}
        dropped = 0
        for key in keys:
            sub, sub_pointer = _combine(
                self.property_schemas(f, key) or [], f"{pointer}/properties/{pointer_escape(key)}"
            )
            try:
                result[key] = self.generate(sub, sub_pointer, depth + 1, seed.child("property:" + key))
            except _Exhausted:
                raise
            except SchemaError:
                # An optional property that cannot be made is left out, unless minProperties needs it.
                if key in required or len(keys) - dropped - 1 < f.min_props:
                    raise
                dropped += 1
        return result

    def object_keys(self, f: _Facts, pointer: str, depth: int, seed: Seed, minimal: bool) -> list[str]:
        required = list(f.required)
        for key in required:
            if self.property_schemas(f, key) is None:
                raise SchemaError(
                    f"required property {key!r} is not allowed by additionalProperties/propertyNames", pointer
                )
        limit = MAX_PROPERTIES if f.max_props is None else min(f.max_props, MAX_PROPERTIES)
        if len(required) > limit:
            raise SchemaError(f"{len(required)} properties are required but at most {limit} are allowed", pointer)
        if f.min_props > limit:
            raise SchemaError(f"minProperties {f.min_props} is greater than the {limit} properties allowed", pointer)
        declared: dict[str, None] = {}
        for rule in f.objects:
            declared.update(dict.fromkeys(rule.properties))
        triggers = {t for t, _, _ in f.dependent_schemas}
        chosen = dict.fromkeys(required)
        optional = [k for k in declared if k not in chosen and k not in triggers]
        for key in optional:
            if len(chosen) >= limit or (minimal and len(chosen) >= f.min_props):
                break
            if self.property_schemas(f, key) is not None:
                chosen[key] = None
        self.add_dependencies(f, chosen, pointer)
        extra = misses = 0
        while len(chosen) < f.min_props:
            new_key = self.extra_key(f, chosen, pointer, depth, seed.child(f"key{extra}"), index=extra)
            extra += 1
            if new_key is None:
                misses += 1
                if misses > 4 * ATTEMPTS:
                    raise SchemaError(f"minProperties {f.min_props}: cannot name enough allowed properties", pointer)
                continue
            misses = 0
            chosen[new_key] = None
            self.add_dependencies(f, chosen, pointer)
        ordered = [k for k in declared if k in chosen]
        return ordered + [k for k in chosen if k not in declared]

    def add_dependencies(self, f: _Facts, chosen: dict[str, None], pointer: str) -> None:
        changed = True
        while changed:
            changed = False
            for trigger, needed in f.dependent.items():
                if trigger in chosen:
                    for key in needed:
                        if key not in chosen:
                            if self.property_schemas(f, key) is None:
                                raise SchemaError(
                                    f"property {trigger!r} requires {key!r}, which is not allowed", pointer
                                )
                            chosen[key] = None
                            changed = True

    def extra_key(
        self, f: _Facts, chosen: dict[str, None], pointer: str, depth: int, seed: Seed, *, index: int
    ) -> str | None:
        """A new property name that the rules allow, for ``minProperties`` (``index``: how many were asked for)."""
        for key in self.key_candidates(f, chosen, pointer, depth, seed, index=index):
            if key not in chosen and self.property_schemas(f, key) is not None:
                return key
        return None

    def key_candidates(
        self, f: _Facts, chosen: dict[str, None], pointer: str, depth: int, seed: Seed, *, index: int
    ) -> Iterator[str]:
        """Names to try, best first: pattern samples, ``propertyNames`` values, words, then numbered short names."""
        # Short samples first; longer ones once the short names run out (samples favour few characters).
        lengths = dict.fromkeys((1, min(1 + len(chosen).bit_length(), MAX_KEY), MAX_KEY))
        for rule in f.objects:
            for regex, _ in rule.patterns:
                for shortest in lengths:
                    text = pattern.sample(regex, shortest, MAX_KEY, seed.child(regex))
                    if text is not None:
                        yield text
        if f.names:
            names_schema = {"allOf": [*f.names, {"type": "string"}]}
            try:
                yield self.generate(names_schema, f"{pointer}/propertyNames", depth + 1, seed, avoid=_Names(chosen))
            except _Exhausted:
                raise
            except SchemaError:
                pass
        yield f"{_WORDS[seed.below(len(_WORDS))]}_{seed.child('n').below(1000)}"
        yield _short_name(len(chosen) + index)  # distinct and short, for narrow propertyNames


_MISSING: Any = object()
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class _Names:
    """The :func:`canon` keys (``("s", name)``) of an object's chosen property names, without copying them."""

    def __init__(self, names: dict[str, None]):
        self.names = names

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and key[0] == "s" and key[1] in self.names

    def __len__(self) -> int:
        return len(self.names)


def _short_name(index: int) -> str:
    """The ``index``-th of "a".."9", "aa".."99"...: short names (62 of one character), all distinct."""
    name = ""
    index += 1
    while index:
        index, digit = divmod(index - 1, len(_NAME_CHARS))
        name = _NAME_CHARS[digit] + name
    return name


_NOT_NUMERIC = {
    "minimum": "exclusiveMaximum",
    "maximum": "exclusiveMinimum",
    "exclusiveMinimum": "maximum",
    "exclusiveMaximum": "minimum",
}
_NOT_COUNT = {
    "minLength": ("string", "maxLength", -1),
    "maxLength": ("string", "minLength", 1),
    "minItems": ("array", "maxItems", -1),
    "maxItems": ("array", "minItems", 1),
    "minProperties": ("object", "maxProperties", -1),
    "maxProperties": ("object", "minProperties", 1),
}
_WITHOUT_ASSERTION = frozenset(
    {"$schema", "$id", "$anchor", "$comment", "$defs", "definitions", "title", "description", "default", "examples"}
    | {"readOnly", "writeOnly", "deprecated", "contentMediaType", "contentEncoding", "then", "else"}
)


def _negation(schema: object) -> object | None:
    """A schema for "not ``schema``" made of positive keywords, or ``None`` when there is none.

    ``schema`` holds when all of its keywords do, so its negation is the
    ``anyOf`` of each keyword's negation (De Morgan), each scoped to the type
    the keyword applies to: not ``minimum: 3`` is ``{"type": "number",
    "exclusiveMaximum": 3}``. Keywords with no positive negation (``pattern``,
    ``enum``, ``multipleOf``...) stay ``{"not": {keyword: value}}``, checked on
    candidates. A pure ``type`` schema returns ``None``: the type exclusion
    handles it. Generation then sees alternatives instead of a filter.
    """
    if schema is False:
        return True
    if not isinstance(schema, dict) or "$ref" in schema:
        return None
    keywords = {k: v for k, v in schema.items() if k not in _WITHOUT_ASSERTION}
    if not keywords:
        return False
    if set(keywords) == {"type"}:
        return None
    if isinstance(keywords.get("exclusiveMinimum"), bool) or isinstance(keywords.get("exclusiveMaximum"), bool):
        return None  # draft 4 pairs: keep them whole
    parts: list[object] = []
    for key, value in keywords.items():
        if key == "not":
            parts.append(value)
        elif key == "allOf" and isinstance(value, list):
            parts.extend({"not": sub} for sub in value)
        elif key == "anyOf" and isinstance(value, list):
            parts.append({"allOf": [{"not": sub} for sub in value]})
        elif key in _NOT_NUMERIC and is_number(value):
            parts.append({"type": "number", _NOT_NUMERIC[key]: value})
        elif key in _NOT_COUNT and is_integer(value):
            kind, opposite, shift = _NOT_COUNT[key]
            if value + shift >= 0:
                parts.append({"type": kind, opposite: int(value) + shift})
        elif key == "required" and isinstance(value, list):
            parts.extend({"type": "object", "properties": {k: False}} for k in value if isinstance(k, str))
        elif key == "properties" and isinstance(value, dict):
            parts.extend({"type": "object", "required": [k], "properties": {k: {"not": v}}} for k, v in value.items())
        elif key == "if":
            parts.append(
                {"if": value, "then": {"not": schema.get("then", True)}, "else": {"not": schema.get("else", True)}}
            )
        elif len(keywords) == 1:
            return None  # a lone keyword with no positive negation: nothing gained
        else:
            parts.append({"not": {key: value}})
    if not parts:
        return False  # every keyword was vacuous (``minLength: 0``, ``required: []``)
    return parts[0] if len(parts) == 1 else {"anyOf": parts}


def _combine(schemas: list[tuple[object, str]], pointer: str) -> tuple[object, str]:
    """One schema that means all of ``schemas``, and the pointer to report."""
    schemas = [(s, p) for s, p in schemas if s is not True]
    if not schemas:
        return True, pointer
    if len(schemas) == 1:
        return schemas[0]
    return {"allOf": [s for s, _ in schemas]}, schemas[0][1]


def _padded(text: str, length: int) -> list[str]:
    filler = "x" * (length - len(text))
    return [text + filler, filler + text]


def _length_text(lo: int, hi: int | None) -> str:
    if hi is None:
        return f" of at least {lo} characters" if lo else ""
    return f" of {lo} to {hi} characters"


def _size(schema: object) -> int:
    """A rough size, to try small branches first."""
    stack = [schema]
    n = 0
    while stack and n < 64:
        node = stack.pop()
        n += 1
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return n
