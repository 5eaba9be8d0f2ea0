"""A promoted image in the next stage's repository: copied by digest when the stages keep their
images apart (production's BuildSettings.image_repository is not staging's), never rebuilt.

The copy is the mirror's (tasks/registry/copy.py `plan_image` + `copy_image`): every blob, then
the manifests by digest, unchanged, so the digest in the next repository is the one that passed.
The registries are asked as the build asks them (no credentials: on Google the Artifact Registry
of the project answers the worker's identity; the sandbox's registry is open).
"""

from __future__ import annotations

import asyncio
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.tasks.registry import (
    RegistryClient,
    copy_image,
    parse_reference,
    plan_image,
)

__all__ = ["COPY_TIMEOUT_S", "image_repository", "in_repository"]

COPY_TIMEOUT_S = 1800.0  # a CUDA image is a few GB: half an hour between two registries


def image_repository(target: ReleaseTarget) -> str | None:
    """Where the target's images live (its BuildSettings block's repository); None when the
    target names no build settings block (the environment's settings say nothing per stage)."""
    if not target.build_settings_block:
        return None
    settings = cast(BuildSettings, BuildSettings.load(target.build_settings_block))
    return settings.image_repository or None


@task(name="copy-image-by-digest", cache_policy=NO_CACHE, persist_result=False, retries=2)
def in_repository(image: str, repository: str, timeout: float = COPY_TIMEOUT_S) -> str:
    """`image` (repository@sha256:...) as `repository@sha256:...`, its manifest and blobs copied
    there by digest when it is not there yet; returns the new reference (same digest)."""
    source = parse_reference(image, field="image")
    dest = parse_reference(repository, field="image_repository")
    if source.repo_name == dest.repo_name or source.digest is None:
        return image
    digest = source.digest

    async def copy() -> None:
        src = RegistryClient(source.registry, None, base_url=source.base_url)
        dst = (
            src
            if dest.registry == source.registry
            else RegistryClient(dest.registry, None, base_url=dest.base_url)
        )
        async with src:
            if dst is not src:
                await dst.__aenter__()
            try:
                if await dst.manifest_digest(dest.repository, digest) == digest:
                    return  # copied before (a re-run of the promotion)
                plan = await plan_image(src, source)
                await copy_image(src, plan, dst, dest.repository)
            finally:
                if dst is not src:
                    await dst.__aexit__(None, None, None)

    async def bounded() -> None:
        await asyncio.wait_for(copy(), timeout)

    run_coro_as_sync(bounded())
    return f"{dest.repo_name}@{digest}"
