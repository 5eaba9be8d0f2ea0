"""`promote_release(target, git_tag, comment, by)`: release in `target` the exact image digest
that passed in the stage before it (ReleaseTarget.promotes_from); no rebuild.

1. `passed_in` (flows/promotion/passed.py) finds the release that passed in the previous stage,
   or refuses with the reason and the fix (a first stage, a tag never released there, one rolled
   back or failed there, a stage skipped).
2. The digest goes to the target's image repository when the stages keep their images apart
   (flows/promotion/copy.py: copied by digest, the same digest), else it is released as it is.
3. The release of that digest starts with `image=REPOSITORY@sha256:...` (the release builds
   nothing for a given image), `commit` and `tagged_at` of the release that passed (the lead
   time still starts at the tag), and `promoted_from="BLOCK/FLOW-RUN-ID"` for the ledger:
   - through the target's own deployment `release/release-<target>` when it exists (the fleet's
     per-target deployments, deployments/fleet.py: the name is computed here the same way,
     "release-" + the block name, since flows import no deployments), else the generic
     `release/release` with `target=...`; `timeout=0`: the promotion holds no worker while the
     release runs, and returns the release run's id;
   - with no release deployment (or `where="here"`: the CLI's `--here`, tests), in this process,
     as a subflow; it returns the finished release run's id.
4. A markdown artifact `promotion-<target>` says what was promoted, from where, by whom and why,
   and links the release run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL

from shipyard.flows.promotion.chain import promoted_from_text
from shipyard.flows.promotion.copy import image_repository, in_repository
from shipyard.flows.promotion.passed import (
    PassedRelease,
    PromotionRefused,
    load_target,
    passed_in,
)
from shipyard.tasks.reports import publish_markdown

__all__ = [
    "GENERIC_RELEASE_DEPLOYMENT",
    "Promotion",
    "promote",
    "promote_release",
    "release_deployment",
]

GENERIC_RELEASE_DEPLOYMENT = "release/release"
Where = Literal["auto", "deployment", "here"]


def release_deployment(target: str) -> str:
    """The target's own release deployment, `release/release-<target>` (deployments/fleet.py
    `release_deployment_name`, computed the same way: flows import no deployments)."""
    return f"release/release-{target}"


@dataclass(frozen=True)
class Promotion:
    """A promotion started (or, in this process, done): what went where, and the release run."""

    target: str
    passed: PassedRelease
    image: str  # what the release deploys: repository@sha256:... (the digest that passed)
    deployment: str | None  # the release deployment that runs it; None: run in this process
    flow_run_id: str
    outcome: str | None = None  # known when the release ran in this process

    def line(self) -> str:
        via = f"deployment {self.deployment}" if self.deployment else "this process"
        done = f": {self.outcome}" if self.outcome else " (started)"
        return (
            f"{self.passed.git_tag} ({self.passed.digest[:19]}) promoted "
            f"{self.passed.source} -> {self.target} through {via}, release run "
            f"{self.flow_run_id}{done}"
        )


def _deployment_for(target: str) -> str | None:
    with get_client(sync_client=True) as client:
        for name in (release_deployment(target), GENERIC_RELEASE_DEPLOYMENT):
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            return name
    return None


def promote(
    target: str, git_tag: str = "", comment: str = "", by: str = "", *, where: Where = "auto"
) -> Promotion:
    """Validate, copy when needed, and start the release of the digest that passed (see the
    module docstring); raises PromotionRefused with the reason and the fix."""
    if not target:
        raise PromotionRefused("target is empty: give the ReleaseTarget block to promote to")
    block = load_target(target)
    passed = passed_in(block, git_tag.strip() or None)
    image = passed.image
    repository = image_repository(block)
    if repository:
        image = in_repository(passed.image, repository)
    parameters = _release_parameters(target, passed, image)
    deployment = None if where == "here" else _deployment_for(target)
    if where == "deployment" and deployment is None:
        raise PromotionRefused(
            f"no release deployment for {target!r} ({release_deployment(target)} or "
            f"{GENERIC_RELEASE_DEPLOYMENT}): deploy them (`shipyard fleet deploy {target} --pool "
            "POOL`, or `prefect deploy --all`), or run the release here (--here)"
        )
    if deployment is not None:
        promotion = _through_deployment(target, passed, image, deployment, parameters)
    else:
        promotion = _here(target, passed, image, parameters)
    _report(promotion, comment, by)
    return promotion


def _release_parameters(target: str, passed: PassedRelease, image: str) -> dict[str, str]:
    return {
        "git_tag": passed.git_tag,
        "target": target,
        "image": image,
        "commit": passed.commit,
        "tagged_at": passed.tagged_at,
        "promoted_from": promoted_from_text(passed.source, passed.flow_run_id),
    }


def _through_deployment(
    target: str, passed: PassedRelease, image: str, deployment: str, parameters: dict[str, str]
) -> Promotion:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    run = run_deployment(
        deployment,
        parameters=parameters,
        timeout=0,  # the release runs on its own worker; this run does not wait for it
        tags=["shipyard", "promotion"],
    )
    assert isinstance(run, FlowRun)  # the sync branch of Prefect's async_dispatch  # noqa: S101
    return Promotion(target, passed, image, deployment, str(run.id))


def _here(target: str, passed: PassedRelease, image: str, parameters: dict[str, str]) -> Promotion:
    from shipyard.flows.release.flow import run_release

    result = run_release(
        parameters["git_tag"],
        target,
        image=image,
        commit=parameters["commit"],
        tagged_at=parameters["tagged_at"],
        promoted_from=parameters["promoted_from"],
    )
    return Promotion(target, passed, image, None, result.flow_run_id or "", result.outcome)


def _report(promotion: Promotion, comment: str, by: str) -> None:
    passed = promotion.passed
    ui = PREFECT_UI_URL.value()
    run = promotion.flow_run_id
    link = f"[{run}]({ui}/runs/flow-run/{run})" if ui and run else (run or "-")
    lines = [
        f"# Promotion of {passed.git_tag} to `{promotion.target}`",
        "",
        f"- **from**: `{passed.source}` ({passed.environment}), passed at {passed.finished_at} "
        f"in run `{passed.flow_run_id or '-'}`",
        f"- **image**: `{promotion.image}` (the digest that passed; no rebuild)",
        f"- **release run**: {link}"
        + (f" through `{promotion.deployment}`" if promotion.deployment else " (this process)"),
        f"- **outcome**: {promotion.outcome or 'started'}",
        f"- **by**: {by.strip() or 'anonymous (no name given)'}",
        f"- **why**: {comment.strip() or 'no comment given'}",
    ]
    if FlowRunContext.get() is None:  # called outside a run (the CLI prints the line itself)
        logging.getLogger("shipyard.promotion").info("%s", promotion.line())
        return
    publish_markdown(
        "\n".join(lines),
        key=f"promotion-{promotion.target}",
        description=f"Promotion of {passed.git_tag} to {promotion.target}",
    )
    get_run_logger().info("%s", promotion.line())


@flow(name="promote-release", flow_run_name="promote-{target}")
def promote_release(
    target: str = "default", git_tag: str = "", comment: str = "", by: str = ""
) -> str:
    """Release in `target` the exact image digest that passed in the stage before it (the
    target's promotes_from); no rebuild. Refused, with the reason, when it did not pass there.

    Args:
        target: Name of the Shipyard Release Target block to promote to (e.g. digit-production);
            its promotes_from names the stage the digest must have passed.
        git_tag: The release tag to promote, e.g. v1.4.0; empty: the newest that passed there.
        comment: Why it is promoted (shown on the promotion's page).
        by: Who promotes it (shown on the promotion's page).

    Returns the release run's id.
    """
    return promote(target, git_tag, comment, by).flow_run_id
