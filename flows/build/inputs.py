"""What a build starts from: the source checkout and the base image, pinned by digest.

`resolve_base_image`: the `BASE_IMAGE` build arg, by digest: an explicit parameter, else the pin
the mirror flow recorded for the base repository (`shipyard.flows.mirror.flow.read_base_pin`).
"""

from __future__ import annotations

import re

from prefect import task
from prefect.cache_policies import NO_CACHE

from shipyard.blocks.build_settings import BuildSettings
from shipyard.tasks import git_source as gitsrc
from shipyard.tasks.errors import PermanentError, retry_condition_fn

_DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


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
    from shipyard.flows.mirror.flow import read_base_pin

    repository = settings.resolved_base_repository()
    pin = read_base_pin(repository)
    if not pin or not pin.get("image"):
        raise PermanentError(
            f"no base image pin is recorded for {repository}: run `shipyard mirror "
            f"nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 {repository}` first, or pass "
            "base_image=REPOSITORY@sha256:…"
        )
    return pin["image"]
