"""Each of our block classes computes its JSON schema once per process (blocks/schema_cache.py):
what it hands out is exactly Prefect's own schema (so the block schema's checksum, and what the
server stores, do not change), a caller that changes its copy changes nothing for the next, and a
save no longer rebuilds the schema once per field."""

from __future__ import annotations

import time
from uuid import uuid4

import pytest
from prefect.blocks.core import Block

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTiers
from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.blocks.cloud import GoogleCloud
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.blocks.schema_cache import CachedSchema

BLOCKS = [ReleaseTarget, BuildSettings, CacheTiers, CanaryPolicy, GoogleCloud]


@pytest.mark.parametrize("cls", BLOCKS, ids=lambda c: c.__name__)
def test_the_cached_schema_is_prefects_own_and_a_copy(cls):
    assert issubclass(cls, CachedSchema)
    uncached = Block.model_json_schema.__func__(cls)  # Prefect's, computed afresh
    first = cls.model_json_schema()
    assert first == uncached
    first["properties"] = {}  # a caller changing what it got ...
    assert cls.model_json_schema() == uncached  # ... changes nothing for the next caller
    assert cls.model_json_schema(mode="serialization") == Block.model_json_schema.__func__(
        cls, mode="serialization"
    )


def test_a_release_target_to_block_document_builds_its_schema_once():
    """`_to_block_document` asks `_field_has_secrets` of every field; each asked for the whole
    schema (7.4 CPU s a save before the cache). CPU time, not wall time: a busy machine cannot
    make it fail, a schema rebuilt per field (~0.1 s each, ~130 fields) does."""
    target = ReleaseTarget(service="schema-cache")
    ids = {"name": "schema-cache", "block_schema_id": uuid4(), "block_type_id": uuid4()}
    target._to_block_document(**ids)  # warm: the first one computes it
    began = time.process_time()
    document = target._to_block_document(**ids)
    assert time.process_time() - began < 2.0
    assert document.data["service"] == "schema-cache"
