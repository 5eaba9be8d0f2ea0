"""Prewarm of the cache tiers on the sandbox: build what changed, skip the rest, quarterly tags."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from shipyard.flows.build.prewarm import prewarm_cache_tiers
from shipyard.flows.build.tier_fingerprint import FINGERPRINT_LABEL
from shipyard.tasks import image_lookup as il

# Each test runs several flows and Cloud Builds (10-15 s each on a loaded machine).
pytestmark = pytest.mark.slow


def _facts(repo: str, ref: str):
    async def go():
        async with il.client_for(repo) as client:
            return await il.image_facts(client, repo, ref)

    return asyncio.run(go())


def _tags(repo: str) -> list[str]:
    async def go():
        async with il.client_for(repo) as client:
            return await il.list_tags(client, repo)

    return asyncio.run(go())


def test_prewarm_builds_all_then_skips_all_then_only_what_a_requirement_change_touches(
    sandbox_admin, app_repo, settings_block, image_repository, base_image
):
    day = dt.date(2026, 11, 23)
    first = prewarm_cache_tiers(base_image=base_image, settings_block=settings_block, run_date=day)
    assert [(t.tier, t.action) for t in first.tiers] == [
        ("base", "built"),
        ("python", "built"),
        ("node", "built"),
    ]
    assert sandbox_admin.calls()["build.create"] == 3
    for tier in first.tiers:
        facts = _facts(image_repository, f"cache-{tier.tier}")
        assert facts.labels[FINGERPRINT_LABEL] == tier.fingerprint
        assert facts.digest == tier.digest and tier.size > 0
        quarterly = _facts(image_repository, f"cache-{tier.tier}-2026Q4")
        assert quarterly is not None and quarterly.layers == facts.layers
        assert quarterly.digest != facts.digest  # its own manifest: deletable on its own

    second = prewarm_cache_tiers(base_image=base_image, settings_block=settings_block, run_date=day)
    assert [t.action for t in second.tiers] == ["skipped", "skipped", "skipped"]
    assert [t.digest for t in second.tiers] == [t.digest for t in first.tiers]
    assert sandbox_admin.calls()["build.create"] == 3

    app_repo.edit("requirements.txt", "orjson==3.10.15\n", "add orjson")
    third = prewarm_cache_tiers(base_image=base_image, settings_block=settings_block, run_date=day)
    assert [(t.tier, t.action) for t in third.tiers] == [
        ("base", "skipped"),
        ("python", "built"),
        ("node", "built"),
    ]
    assert sandbox_admin.calls()["build.create"] == 5
    assert third.tiers[0].digest == first.tiers[0].digest
    assert third.tiers[1].fingerprint != first.tiers[1].fingerprint
    assert third.tiers[2].fingerprint != first.tiers[2].fingerprint
    # The python tier's build found the base tier's steps in cache-base and ran only its own.
    builds = list(sandbox_admin.get("/_sandbox/builds").values())
    python_build = [
        steps
        for b in builds
        for steps in [b["steps"][1]]
        if any("[python-deps" in n for n, _ in steps)
        and not any("[node-deps" in n for n, _ in steps)
    ][-1]
    assert [status for name, status in python_build if "[base" in name] == ["CACHED"] * 3
    assert [status for name, status in python_build if "[python-deps" in name] == ["DONE"] * 2


def test_quarterly_tags_beyond_retention_are_deleted_and_the_rest_kept(
    sandbox_admin, settings_block, image_repository, base_image
):
    from shipyard.blocks.cache_tiers import CacheTier, CacheTiers

    tiers_block = f"tiers-{uuid.uuid4().hex[:10]}"
    CacheTiers(tiers=[CacheTier(name="base", target="base")], quarterly_tags_to_keep=2).save(
        tiers_block
    )
    results = [
        prewarm_cache_tiers(
            base_image=base_image,
            settings_block=settings_block,
            tiers_block=tiers_block,
            run_date=day,
        )
        for day in (dt.date(2026, 2, 1), dt.date(2026, 5, 1), dt.date(2026, 8, 1))
    ]
    assert [r.quarter for r in results] == ["2026Q1", "2026Q2", "2026Q3"]
    assert [r.tiers[0].action for r in results] == ["built", "skipped", "skipped"]
    assert results[0].deleted_tags == [] and results[1].deleted_tags == []
    assert results[2].deleted_tags == ["cache-base-2026Q1"]
    tags = set(_tags(image_repository))
    assert "cache-base-2026Q1" not in tags
    assert {"cache-base", "cache-base-2026Q2", "cache-base-2026Q3"} <= tags
    assert _facts(image_repository, "cache-base").digest == results[0].tiers[0].digest
    assert sandbox_admin.calls()["build.create"] == 1
