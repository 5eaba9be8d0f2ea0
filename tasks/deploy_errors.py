"""How a Cloud Run deploy failed, as the release decides on it: a quota refusal moves to the
next region (`QuotaDenied`), a revision that never became Ready is a failed deploy
(`DeployFailed`; `ImageFault` when its container could not start: the image's fault, the same
in every region, so no other region and no CPU revision of that image is tried), a refusal of
the request itself stops the release (`ConfigurationError`); transient errors are returned as
they are, for the step's retry.
"""

from __future__ import annotations

import re

from google.api_core import exceptions as gexc

from shipyard.tasks import cloud_run as cr
from shipyard.tasks.errors import PermanentError, is_interrupt, is_quota_error, is_transient


class QuotaDenied(PermanentError):
    """The region cannot host the revision for lack of quota: try the next region."""

    def __init__(self, region: str, message: str):
        super().__init__(f"{region}: {message}")
        self.region = region
        self.message = message


class DeployFailed(PermanentError):
    """The revision was created but never became Ready for another reason (or timed out)."""

    def __init__(self, region: str, revision: str, message: str):
        super().__init__(f"{region}: revision {revision} failed: {message}")
        self.region = region
        self.revision = revision
        self.message = message


class ImageFault(DeployFailed):
    """The revision's container could not start (it exited, never listened on $PORT, failed its
    startup probe, the image is missing): a verdict on the image, whatever the region."""


# The Ready condition's reasons that blame the container (enum names of googleapis
# google/cloud/run/v2/condition.proto as google-cloud-run 0.16 ships them:
# Condition.RevisionReason.HEALTH_CHECK_CONTAINER_ERROR "There was a health check error." -
# the startup probe failed, the container exited or never listened; Condition.CommonReason.
# CONTAINER_MISSING "The container image path is incorrect."). Quota, secrets, permissions:
# not here (they may differ by region, or are configuration).
IMAGE_FAULT_REASONS = frozenset({"HEALTH_CHECK_CONTAINER_ERROR", "CONTAINER_MISSING"})

# The same verdict told only in text (the service update's operation error carries the
# revision's message and no condition): Cloud Run's own lines, "The user-provided container
# failed to start and listen on the port defined provided by the PORT=8080 environment
# variable within the allocated timeout." (octo-sts/app#1005, transparency-dev/tesseract#413)
# and its startup probe's "Default STARTUP TCP probe failed 1 time consecutively for
# container ...".
_IMAGE_FAULT_MESSAGE = re.compile(
    r"container failed to start and listen on the port|STARTUP \w+ probe failed",
    re.IGNORECASE,
)


def is_image_fault(message: str, reasons: str | set[str] | frozenset[str] = "") -> bool:
    """The revision failed because of its container (never because of quota)."""
    names = set(reasons.split()) if isinstance(reasons, str) else set(reasons)
    if is_quota_message(message):
        return False
    return bool(names & IMAGE_FAULT_REASONS) or bool(_IMAGE_FAULT_MESSAGE.search(message))


class ConfigurationError(PermanentError):
    """Cloud Run refused the request itself (bad template, permissions, ...): stop."""


_REST_PREFIX = re.compile(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ")


def error_message(exc: BaseException) -> str:
    """Google's own message (REST errors arrive prefixed with 'PATCH <url>: ')."""
    if isinstance(exc, gexc.GoogleAPICallError):
        return _REST_PREFIX.sub("", exc.message or str(exc))
    if isinstance(exc, cr.RevisionFailed):
        return exc.message
    return str(exc)


def is_quota_message(message: str) -> bool:
    """A quota refusal told only in text (a revision's Ready condition carries no ErrorInfo):
    tasks/errors.py's one fallback reading of the text."""
    return is_quota_error(message)


def classify(
    exc: BaseException, region: str, revision: str, reasons: set[str] | None = None
) -> BaseException:
    """Quota first (a 429 RESOURCE_EXHAUSTED can be a quota refusal, not a rate limit),
    then failed/timed-out revisions (`ImageFault` when the container is to blame: `reasons`
    are the failed revisions' Ready condition reasons, when the caller read them), then
    transient (returned as is, for the step's retry), else a configuration error. An interrupt
    (KeyboardInterrupt, SystemExit, CancelledError, Prefect's TerminationSignal) is returned as
    is: it is no verdict on the deploy, and must reach the flow's hooks untouched."""
    if is_interrupt(exc):
        return exc
    message = error_message(exc)
    if isinstance(exc, QuotaDenied | DeployFailed | ConfigurationError):
        return exc
    if is_quota_error(exc):  # Google's ErrorInfo reason first, the message as a fallback
        return QuotaDenied(region, message)
    failed = isinstance(exc, cr.RevisionFailed | cr.ReadyTimeout) or (
        isinstance(exc, gexc.FailedPrecondition) and "not ready" in message
    )
    if failed:
        known = set(reasons or ())
        if isinstance(exc, cr.RevisionFailed):
            known |= set(exc.reason.split())
        if not isinstance(exc, cr.ReadyTimeout) and is_image_fault(message, known):
            return ImageFault(region, revision, message)
        return DeployFailed(region, revision, message)
    if isinstance(exc, PermanentError):
        return exc
    if is_transient(exc):
        return exc
    return ConfigurationError(f"Cloud Run refused the deploy in {region}: {message}")
