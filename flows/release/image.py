"""The image a release deploys: the base-image pin check and the adapter over the build flow.

A release given `image=...` skips both; otherwise it builds the git tag (flows/build/flow.py), from
the target's pinned base image when it names one.
"""

from __future__ import annotations

import inspect
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.flow_engine import FlowRunTimeoutError

from shipyard.flows.release.context import RunContext
from shipyard.flows.release.slot import ReleaseError
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.git_source import redact_credentials


@task(name="base-image-pin", cache_policy=NO_CACHE, persist_result=False)
def pin_step(base_image: str) -> dict[str, Any]:
    note_attempt()
    from shipyard.flows.mirror.flow import read_base_pin

    pin = read_base_pin(base_image)
    if not pin:
        raise ConfigurationError(
            f"ReleaseTarget.base_image={base_image!r} has no recorded pin: run the mirror "
            "flow for it first (shipyard mirror ...), or leave base_image empty"
        )
    return pin


def build_image(
    ctx: RunContext, git_tag: str, commit: str | None, pin: dict[str, Any] | None
) -> Any:
    """Adapter over flows/build/flow.py's `build_release_image` (a subflow: it reuses an image that
    already holds the commit, so a re-run does not build twice). The commit built is the one the
    git tag points at in the build's git source (annotated tags peeled): a `commit` given (the
    webhook's, a caller's) must be that commit or the tag's own object, else the release stops
    naming both. A build failure stops the release before any deploy.
    """
    try:
        from shipyard.flows.build.flow import build_release_image
        from shipyard.flows.build.inputs import tag_commit
    except ImportError as exc:
        raise ReleaseError(
            "no image given and no build available (flows/build/flow.py): pass image=..."
        ) from exc
    try:  # the tag must exist and point at the commit: never build one under another's tag
        sha = tag_commit(ctx.target.build_settings_block, git_tag, commit)
    except (PermanentError, ValueError) as exc:  # no such tag, another commit; no git source
        raise ReleaseError(redact_credentials(str(exc))) from exc
    params = inspect.signature(build_release_image).parameters
    offered: dict[str, Any] = {
        "git_tag": git_tag,
        "commit": sha,
        "base_image": (pin or {}).get("image"),
        "settings_block": ctx.target.build_settings_block,
        "tiers_block": ctx.target.build_tiers_block,
        "cloud": ctx.cloud,  # one GoogleCloud block for the build and the deploy
    }
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    try:
        built = build_release_image(**kwargs)
    except FlowRunTimeoutError:
        raise  # a timeout (the release's, caught first by the build's own): the release's undo
    except Exception as exc:
        detail = redact_credentials(f"{type(exc).__name__}: {exc}")  # a git URL's user:token@
        raise ReleaseError(f"build of {git_tag} failed: {detail}") from exc
    image = getattr(built, "image", None) or (built if isinstance(built, str) else None)
    if not image:
        raise ReleaseError(f"the build of {git_tag} returned no image reference: {built!r}")
    return built
