"""What a build starts from: the blocks, the source checkout, the base image pinned by digest,
and what the registry already holds.

`resolve_base_image`: the `BASE_IMAGE` build arg, by digest: an explicit parameter, else the pin
the mirror flow recorded for the base repository (`shipyard.flows.mirror.flow.read_base_pin`).
`tag_commit`: the commit a release builds, checked against its tag.
`read_image`: an image's facts (digest, labels, layers), or None: the build's reuse check, the
prewarm's fingerprint check, and what a build pushed.
"""

from __future__ import annotations

import re
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTiers
from shipyard.blocks.cloud import GoogleCloud, default_cloud
from shipyard.flows.mirror.flow import read_base_pin
from shipyard.tasks import git_source as gitsrc
from shipyard.tasks import image_lookup as il
from shipyard.tasks.errors import PermanentError, retry_condition_fn

_DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


def load_blocks(
    settings_block: str | None,
    tiers_block: str | None,
    cloud_block: str | None,
    cloud: GoogleCloud | None = None,
) -> tuple[BuildSettings, CacheTiers, GoogleCloud]:
    """The blocks by name, else their defaults. `cloud`, when given, is used as is (a release
    builds with its target's cloud block); else the `cloud_block` name, else the environment."""
    # Block.load is sync-compatible: called from sync code it returns the block, not a coroutine
    settings = cast(BuildSettings, BuildSettings.load(settings_block)) if settings_block else None
    tiers = cast(CacheTiers, CacheTiers.load(tiers_block)) if tiers_block else None
    if cloud is None and cloud_block:
        cloud = cast(GoogleCloud, GoogleCloud.load(cloud_block))
    return settings or BuildSettings(), tiers or CacheTiers(), cloud or default_cloud()


@task(
    name="git-checkout",
    retries=2,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def checkout_task(url: str, revision: str) -> tuple[str, str]:
    root, commit = gitsrc.checkout(url, revision)
    return str(root), commit


@task(
    name="verify-tag",
    retries=2,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def tag_commit(settings_block: str | None, git_tag: str, commit: str | None) -> str:
    """The commit a release of `git_tag` builds: the one the tag points at in the build's git
    source (an annotated tag peeled, `^{commit}`), after checking that the commit given (a
    webhook's, a caller's) is that commit or the tag's own object; TagMismatchError (permanent)
    naming the tag, the commit it points at and the commit given otherwise."""
    settings = cast(BuildSettings, BuildSettings.load(settings_block)) if settings_block else None
    return gitsrc.verify_tag((settings or BuildSettings()).resolved_git_url(), git_tag, commit)


@task(name="resolve-base-image", cache_policy=NO_CACHE, persist_result=False)
def resolve_base_image(base_image: str | None, settings: BuildSettings) -> str:
    """`repo@sha256:…`: the parameter if given (must be by digest), else the mirror's pin."""
    if base_image:
        if not _DIGEST_REF.search(base_image):
            raise PermanentError(
                f"base_image {base_image!r} is not pinned by digest: give REPOSITORY@sha256:… "
                "(tags move and NVIDIA deletes old CUDA tags), or leave it empty to use the "
                "mirror's pin"
            )
        return base_image
    repository = settings.resolved_base_repository()
    pin = read_base_pin(repository)
    image = pin.get("image") if pin else None
    if not isinstance(image, str) or not image:
        raise PermanentError(
            f"no base image pin is recorded for {repository}: run `shipyard mirror "
            f"nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 {repository}` first, or pass "
            "base_image=REPOSITORY@sha256:…"
        )
    return image


@task(name="read-cache-image", cache_policy=NO_CACHE, persist_result=False)
def read_image(repository: str, reference: str) -> il.ImageFacts | None:
    async def go() -> il.ImageFacts | None:
        async with il.client_for(repository) as client:
            return await il.image_facts(client, repository, reference)

    return run_coro_as_sync(go())
