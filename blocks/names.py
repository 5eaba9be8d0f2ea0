"""Cloud Run resource names derived from a service and a git tag (revisions, tags)."""

from __future__ import annotations

import re

# The tags a release puts on revisions (flows/deploy/traffic_split.py: CANARY_TAG, PRIOR_TAG,
# BASELINE_TAG; tests/release/test_gpu_requirements.py checks they are these). Blocks import no
# flows: the names are repeated here for the service-name rule below.
RELEASE_TAGS = ("canary", "prior", "baseline")
# A tag URL is `{tag}---{service}-{hash}-{region}.a.run.app`; Google refuses a tag whose length
# with the service name's is over 46: "spec.traffic.tag: traffic tag '…' and service name '…'
# together are too long. Combined traffic tag and service name cannot exceed 46 characters."
# (PolicyEngine/policyengine-api#3729, solana-foundation/tokens#89.)
TAG_AND_SERVICE_MAX = 46


def _slug(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", name).strip("-")


def sanitize_name(text: str, limit: int = 63) -> str:
    """Lowercase [a-z0-9-], starting with a letter, no double/trailing dash, at most `limit`."""
    name = _slug(text)
    if not name or not name[0].isalpha():
        name = f"r-{name}".rstrip("-")
    return name[:limit].rstrip("-")


def revision_name(service: str, git_tag: str, suffix: str = "") -> str:
    """`{service}-v1-2-3[-suffix]`: the same tag gives the same name (re-runs converge).

    Cloud Run revision names are at most 63 characters; when too long, the tag part is cut
    and a short hash of the full tag keeps different tags apart.
    """
    import hashlib

    tag = _slug(git_tag)
    if not tag:
        raise ValueError(f"git_tag={git_tag!r} has no letters or digits: use a tag like 'v1.2.3'")
    tail = f"-{suffix}" if suffix else ""
    name = sanitize_name(f"{service}-{tag}{tail}", 1000)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(git_tag.encode()).hexdigest()[:6]
    room = 63 - len(service) - len(tail) - len(digest) - 2
    if room < 1:
        raise ValueError(
            f"service={service!r} is too long to name revisions: keep it under {63 - 10} characters"
        )
    return sanitize_name(f"{service}-{tag[:room]}-{digest}{tail}", 63)


def tag_url_problem(service: str) -> str | None:
    """Why `service` cannot carry the release's revision tags on Cloud Run, or None."""
    longest = max(RELEASE_TAGS, key=len)
    room = TAG_AND_SERVICE_MAX - len(longest)
    if len(service) <= room:
        return None
    return (
        f"service={service!r} is {len(service)} characters: Cloud Run refuses a revision tag "
        f"whose length with the service name's is over {TAG_AND_SERVICE_MAX} (the tag URL), and "
        f"the release tags revisions {', '.join(repr(t) for t in RELEASE_TAGS)}; use a service "
        f"name of at most {room} characters"
    )
