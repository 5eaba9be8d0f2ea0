"""The cache tiers of a tiered Dockerfile: which stages are cached, and how.

Tiers are ordered from the bottom: `base → python → node` by default, each a Dockerfile stage
(`--target`) plus the files whose content decides it. Cache images live in `cache_repository`
(default: the image repository) as `cache-<tier>`, with frozen quarterly copies
`cache-<tier>-<YYYYQn>`; the quarter comes from the run date, never from an edited constant.
The release build adds `cache-builder` (the only cache it exports).
"""

from __future__ import annotations

import datetime as dt
import re

from prefect.blocks.core import Block
from pydantic import BaseModel, Field, field_validator

from shipyard.blocks.schema_cache import CachedSchema

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,40}$")


class CacheTier(BaseModel):
    name: str = Field(title="Name", description="Tier name; the cache image tag is cache-<name>.")
    target: str = Field(
        title="Dockerfile stage", description="Dockerfile stage built for this tier (--target)."
    )
    files: list[str] = Field(
        default=[],
        title="Deciding files",
        description="Files (relative to the build context) whose content decides the tier.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"tier name {value!r} must be lowercase letters, digits and '-' (it becomes the "
                "tag cache-<name>)"
            )
        return value


DEFAULT_TIERS = [
    CacheTier(name="base", target="base", files=[]),
    CacheTier(name="python", target="python-deps", files=["requirements.txt"]),
    CacheTier(name="node", target="node-deps", files=["package.json", "package-lock.json"]),
]


def quarter_of(when: dt.date) -> str:
    """`2026Q4` for any day of October to December 2026."""
    return f"{when.year}Q{(when.month - 1) // 3 + 1}"


_QUARTER_TAG = re.compile(r"^cache-(?P<tier>[a-z0-9-]+)-(?P<year>\d{4})Q(?P<q>[1-4])$")


def parse_quarter_tag(tag: str) -> tuple[str, int, int] | None:
    """`cache-python-2025Q4` -> ("python", 2025, 4); None for any other tag."""
    match = _QUARTER_TAG.match(tag)
    if not match:
        return None
    return match["tier"], int(match["year"]), int(match["q"])


class CacheTiers(CachedSchema, Block):
    """Cache tiers of the release image's Dockerfile, prewarmed weekly."""

    _block_type_name = "Shipyard Cache Tiers"
    _block_type_slug = "shipyard-cache-tiers"
    _description = (
        "Ordered cache tiers (stage, deciding files), cache repository, quarterly retention."
    )

    dockerfile: str = Field(
        default="Dockerfile",
        title="Dockerfile",
        description="Dockerfile path, relative to the build context.",
    )
    tiers: list[CacheTier] = Field(
        # A plain default (copied per instance by pydantic) so the UI's form shows the tiers.
        default=DEFAULT_TIERS,
        title="Tiers",
        description="Tiers from the bottom up; each builds on the ones before it. `shipyard "
        "init` proposes those the repository's files call for (no node tier without "
        "package.json).",
    )
    cache_repository: str | None = Field(
        default=None,
        title="Cache repository",
        description="Repository of the cache images, e.g. europe-docker.pkg.dev/P/app/page-service "
        "(default: the image repository of the build settings).",
    )
    quarterly_tags_to_keep: int = Field(
        default=4,
        ge=1,
        le=40,
        title="Quarterly tags kept",
        description="Quarterly tags kept per tier (the newest ones).",
    )
    builder_cache_tag: str = Field(
        default="cache-builder",
        title="Builder cache tag",
        description="Tag of the release build's own cache (the only cache it exports).",
    )

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, value: list[CacheTier]) -> list[CacheTier]:
        if not value:
            raise ValueError("tiers: give at least one tier (name, target, files)")
        names = [t.name for t in value]
        if len(set(names)) != len(names):
            raise ValueError(f"tiers: tier names must be unique, got {names}")
        return value

    @staticmethod
    def tag(tier: CacheTier) -> str:
        return f"cache-{tier.name}"

    @staticmethod
    def quarter_tag(tier: CacheTier, when: dt.date) -> str:
        return f"cache-{tier.name}-{quarter_of(when)}"
