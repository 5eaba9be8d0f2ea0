"""Cloud Run resource names derived from a service and a git tag (revisions, tags)."""

from __future__ import annotations

import re


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
