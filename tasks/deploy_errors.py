"""How a Cloud Run deploy failed, as the release decides on it: a quota refusal moves to the
next region (`QuotaDenied`), a revision that never became Ready is a failed deploy
(`DeployFailed`), a refusal of the request itself stops the release (`ConfigurationError`);
transient errors are returned as they are, for the step's retry.
"""

from __future__ import annotations

import re

from google.api_core import exceptions as gexc

from tasks import cloud_run as cr
from tasks.errors import PermanentError, is_quota_error, is_transient


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


def classify(exc: BaseException, region: str, revision: str) -> BaseException:
    """Quota first (a 429 RESOURCE_EXHAUSTED can be a quota refusal, not a rate limit),
    then failed/timed-out revisions, then transient (returned as is, for the step's retry),
    else a configuration error."""
    message = error_message(exc)
    if isinstance(exc, QuotaDenied | DeployFailed | ConfigurationError):
        return exc
    if is_quota_error(exc):  # Google's ErrorInfo reason first, the message as a fallback
        return QuotaDenied(region, message)
    if isinstance(exc, cr.RevisionFailed | cr.ReadyTimeout):
        return DeployFailed(region, revision, message)
    if isinstance(exc, PermanentError):
        return exc
    if is_transient(exc):
        return exc
    if isinstance(exc, gexc.FailedPrecondition) and "not ready" in message:
        return DeployFailed(region, revision, message)
    return ConfigurationError(f"Cloud Run refused the deploy in {region}: {message}")
