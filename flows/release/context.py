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


# Cloud Run's startup probe when a template declares none, and the longest one it accepts:
# "tcpSocket: port: CONTAINER_PORT, timeoutSeconds: 240, periodSeconds: 240,
# failureThreshold: 1" (cloud.google.com/run/docs/configuring/healthchecks, "The default TCP
# startup probe"; blocks/revision_templates.py caps startup_probe_s at 240 too).
DEFAULT_STARTUP_PROBE_S = 240
# What a new revision takes besides its probe window: pulling the image, scheduling the
# instance, Cloud Run's own reconciliation before the probe starts counting.
DEPLOY_MARGIN_S = 60.0


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
        # The tag's own CPU baseline name; `cpu_revision` becomes a later attempt of it
        # (`{name}-r2`, ...) where that one failed (flows/deploy/region_deploy.py).
        self.cpu_baseline = self.cpu_revision
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
        """For operations that start no container (traffic, tags, deletes)."""
        return {"timeout": self.target.ready_timeout_s, "poll_s": self.target.poll_interval_s}

    def template_field(self, revision: str) -> str:
        """The target's field whose template made `revision`: its CPU baseline or GPU one."""
        return "cpu_template" if revision == self.cpu_revision else "gpu_template"

    def startup_probe_s(self, revision: str) -> int | None:
        """The startup probe the revision's template declares (None: Cloud Run's default)."""
        spec = getattr(self.target, self.template_field(revision))
        probe: int | None = spec.startup_probe_s
        return probe

    def revision_wait(self, revision: str) -> Wait:
        """How long to wait for a new revision (its create/update operation, its Ready): as long
        as Cloud Run may take to decide, its startup probe's window plus DEPLOY_MARGIN_S, and
        never less than `ready_timeout_s`. A Ready wait shorter than the probe would roll back a
        revision that Cloud Run was about to call Ready (issue 21: a 60 s wait, a 240 s probe)."""
        window = self.startup_probe_s(revision) or DEFAULT_STARTUP_PROBE_S
        timeout = max(self.target.ready_timeout_s, window + DEPLOY_MARGIN_S)
        return {"timeout": timeout, "poll_s": self.target.poll_interval_s}

    def wait_setting(self, revision: str) -> str:
        """The settings a revision's wait follows, with their values, and how to change them."""
        field = self.template_field(revision)
        probe = self.startup_probe_s(revision)
        declared = (
            f"{field}.startup_probe_s={probe}"
            if probe is not None
            else f"{field}.startup_probe_s empty (Cloud Run's default probe, "
            f"{DEFAULT_STARTUP_PROBE_S} s)"
        )
        timeout = self.revision_wait(revision)["timeout"]
        return (
            f"the wait ({timeout:g} s) follows the startup probe, {declared}, plus "
            f"{DEPLOY_MARGIN_S:g} s to pull and schedule, and is at least "
            f"ready_timeout_s={self.target.ready_timeout_s:g}"
        )

    def probe_setting(self, revision: str) -> str:
        """The startup probe the revision had (what to change if it needs longer to listen)."""
        field = self.template_field(revision)
        probe = self.startup_probe_s(revision)
        if probe is None:
            return (
                f"its startup probe: Cloud Run's default, {DEFAULT_STARTUP_PROBE_S} s "
                f"({field}.startup_probe_s empty)"
            )
        return (
            f"its startup probe: {field}.startup_probe_s={probe} s (if the service needs "
            f"longer to listen on $PORT, raise it, at most {DEFAULT_STARTUP_PROBE_S})"
        )


MAX_ATTEMPTS = 9


def attempt_name(base: str, attempt: int) -> str:
    """`{base}-r{attempt}` (attempt >= 2), cut to Cloud Run's 63 characters."""
    if attempt < 2:
        return base
    tail = f"-r{attempt}"
    return base[: 63 - len(tail)].rstrip("-") + tail
