"""The fallback's JSON Schema engine (pure): instances that validate, in linear time.

:mod:`.instance` makes a deterministic instance of a schema (``instance_for``);
:mod:`.schema` reads and checks schemas; :mod:`.pattern` samples and matches
``pattern`` regexes with RE2; :mod:`.formats` generates and checks ``format``
values. Every surface's fallback uses this one generator.
"""

from __future__ import annotations

from airgap_proxy.fallback.jsonschema.instance import instance_for
from airgap_proxy.fallback.jsonschema.schema import NestingError, SchemaError

__all__ = ["NestingError", "SchemaError", "instance_for"]
