"""Block documents made in the Prefect UI's block form, with its defaults, load.

The UI fills a new block's form from the block schema it reads from the API: each property's
`default`; for a property that is a reference to a nested model (not a block), the nested
model's own property defaults, recursively; a nested *block* is a block-document selector left
empty; a property without a default is left empty. (Prefect UI schema forms:
`getSchemaDefaultValues` / `getSchemaPropertyDefaultValue` in prefect-ui-library.) So a field
whose default comes from `default_factory` is not in the form at all, and two fields referencing
the same model show that model's defaults, not the field's.

A Release Target's form names the blocks `shipyard setup` saves (build settings, cache tiers), and
a loaded target whose named block does not exist is refused (tests/ui/test_target_form.py): the
release target's case runs with those blocks present, as after setup.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTiers
from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.blocks.cloud import PROJECT_ENV, GoogleCloud
from shipyard.blocks.release_target import SETUP_BUILD_BLOCK, SETUP_TIERS_BLOCK, ReleaseTarget

BLOCK_TYPES: list[type[Block]] = [
    ReleaseTarget,
    CanaryPolicy,
    CacheTiers,
    BuildSettings,
    GoogleCloud,
]

_EMPTY = object()


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    ref = prop.get("$ref") or next((p.get("$ref") for p in prop.get("allOf", [])), None)
    return defs[ref.split("/")[-1]] if ref else None


def ui_default(prop: dict[str, Any], defs: dict[str, Any]) -> Any:
    """What the UI's form holds for one property before the user touches it."""
    if "default" in prop:
        return prop["default"]
    nested = _resolve(prop, defs)
    if nested is not None:
        if "block_type_slug" in nested:
            return _EMPTY  # a block selector, left empty
        return ui_defaults(nested, defs)
    if prop.get("type") == "object" and "properties" in prop:
        return ui_defaults(prop, defs)
    return _EMPTY


def ui_defaults(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    values = {name: ui_default(prop, defs) for name, prop in schema.get("properties", {}).items()}
    return {name: value for name, value in values.items() if value is not _EMPTY}


async def _save_as_the_ui(block_cls: type[Block], name: str) -> dict[str, Any]:
    await block_cls.register_type_and_schema()
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug(block_cls.get_block_type_slug())
        schema = await client.read_block_schema_by_checksum(block_cls._calculate_schema_checksum())
        fields = schema.fields
        data = ui_defaults(fields, fields.get("definitions", {}) | fields.get("$defs", {}))
        await client.create_block_document(
            BlockDocumentCreate(
                name=name,
                data=data,
                block_schema_id=schema.id,
                block_type_id=block_type.id,
            )
        )
    return data


def _plain_defaults(block_cls: type[Block]) -> dict[str, Any]:
    """The Python defaults of the block's non-block fields, as JSON."""
    dumped = block_cls().model_dump(mode="json")
    return {
        name: dumped[name]
        for name, field in block_cls.model_fields.items()
        if dumped.get(name) is not None
        and not (isinstance(field.annotation, type) and issubclass(field.annotation, Block))
    }


def _setup_blocks_while(body: Any) -> Any:
    """Run `body()` with setup's build settings and cache tiers blocks present (those missing
    are saved for the call and deleted after it)."""
    made = []
    for cls, block in ((BuildSettings, SETUP_BUILD_BLOCK), (CacheTiers, SETUP_TIERS_BLOCK)):
        try:
            cls.load(block)
        except ValueError:
            cls().save(block)
            made.append((cls, block))
    try:
        return body()
    finally:
        for cls, block in made:
            cls.delete(block)


@pytest.mark.parametrize("block_cls", BLOCK_TYPES, ids=lambda c: c.__name__)
def test_a_block_made_with_the_ui_forms_defaults_loads_with_every_default(block_cls, monkeypatch):
    # An environment that names a project: a target with no cloud block uses it, not setup's.
    monkeypatch.setenv(PROJECT_ENV, "ui-form-project")
    name = f"ui-{uuid.uuid4().hex[:8]}"
    data = asyncio.run(_save_as_the_ui(block_cls, name))
    loaded = _setup_blocks_while(lambda: block_cls.load(name))
    assert isinstance(loaded, block_cls)
    # Every default the Python class has is shown (and saved) by the form, none lost.
    for field, value in _plain_defaults(block_cls).items():
        assert data.get(field) == value, (
            f"{block_cls.__name__}.{field}: form shows {data.get(field)!r}"
        )


def test_the_templates_have_their_own_titles_and_defaults():
    # The UI labels a nested model with its definition's title (Prefect removes property titles).
    schema = ReleaseTarget.model_json_schema()
    props = schema["properties"]
    assert props["cpu_template"]["default"]["gpu"] == 0
    assert props["gpu_template"]["default"]["gpu"] == 1
    defs = schema["definitions"]
    assert defs["GpuTemplate"]["title"] == "GPU template"
    assert defs["CpuTemplate"]["title"] == "CPU baseline template"
