"""What the deploy, canary and traffic steps of a release share: `RunContext`."""

from __future__ import annotations

from typing import TypedDict

from shipyard.blocks.names import revision_name
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.tasks import cloud_run as cr


class Wait(TypedDict):
    """How the Cloud Run calls wait for an operation or a Ready revision."""

    timeout: float
    poll_s: float


class RunContext:
    """What the deploy/traffic steps share: the target, project, and the Cloud Run clients.

    A plain class on purpose: Prefect passes it to tasks as is (it copies pydantic models and
    dataclasses when resolving task inputs).
    """

    def __init__(self, target: ReleaseTarget, git_tag: str, image: str | None):
        self.target = target
        self.git_tag = git_tag
        self.image = image
        cloud = target.google()
        self.cloud = cloud
        self.project = target.resolved_project()
        self.services = cloud.services_client()
        self.revisions = cloud.revisions_client()
        self.gpu_revision = revision_name(target.service, git_tag)
        self.cpu_revision = revision_name(target.service, git_tag, "cpu")
        # region -> the GPU revision name of this run's attempt there, when it is not the
        # first: Cloud Run refuses to delete a service's latest revision, and re-applying a
        # failed template under its own name creates nothing, so a new attempt needs a name.
        self.attempts: dict[str, str] = {}

    def gpu_revision_in(self, region: str) -> str:
        """The tag's GPU revision name for this run in `region` (see `attempts`)."""
        return self.attempts.get(region, self.gpu_revision)

    def service_name(self, region: str) -> str:
        return cr.service_path(self.project, region, self.target.service)

    def revision_path(self, region: str, revision: str) -> str:
        return cr.revision_path(self.project, region, self.target.service, revision)

    @property
    def wait(self) -> Wait:
        return {"timeout": self.target.ready_timeout_s, "poll_s": self.target.poll_interval_s}


MAX_ATTEMPTS = 9


def attempt_name(base: str, attempt: int) -> str:
    """`{base}-r{attempt}` (attempt >= 2), cut to Cloud Run's 63 characters."""
    if attempt < 2:
        return base
    tail = f"-r{attempt}"
    return base[: 63 - len(tail)].rstrip("-") + tail
