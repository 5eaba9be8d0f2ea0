"""One JSON schema per block class, computed once per process.

Prefect computes a block's JSON schema again and again while it saves one: `Block.save` asks, for
every field, whether the field holds secrets (`_field_has_secrets`), and each answer builds the
block's whole schema, nested blocks and their checksums included. For ReleaseTarget (five nested
blocks, ~130 fields in all) that is ~130 schemas per save: 7.4 CPU seconds per `save()`, measured
with cProfile (Prefect 3.8.8, pydantic 2), which made every test set-up, `shipyard setup` and the
fleet bench's target saving slow.

A class's schema depends only on the class and the arguments, so it is kept per (class,
arguments) and a deep copy is handed out each time (callers may change what they get).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

__all__ = ["CachedSchema"]


class CachedSchema:
    """Mix into a Block subclass, before `Block`: `class X(CachedSchema, Block)`."""

    _schemas: ClassVar[dict[tuple[Any, ...], dict[str, Any]]] = {}

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        key = (cls, args, tuple(sorted(kwargs.items())))
        schema = CachedSchema._schemas.get(key)
        if schema is None:
            schema = super().model_json_schema(*args, **kwargs)  # type: ignore[misc] # Block's
            CachedSchema._schemas[key] = schema
        return copy.deepcopy(schema)
