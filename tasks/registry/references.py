"""Image references parsed the way docker parses them (`nvidia/cuda:12.1`, `host:5000/a/b@sha256:...`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shipyard.tasks.registry.errors import InvalidReference

DOCKER_HUB = "registry-1.docker.io"

_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
)
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}(?::[0-9]{{1,5}})?$")
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = ("localhost", "127.", "[::1]")
_REF_HELP = (
    "expected [REGISTRY[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], lowercase repository, e.g. "
    "nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 or europe-docker.pkg.dev/PROJECT/base/cuda"
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. `registry` is the API host (Docker Hub is registry-1.docker.io)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if pinned, else the tag (default latest)."""
        return self.digest or self.tag or "latest"

    @property
    def repo_name(self) -> str:
        """registry/repository, as written in image references (docker.io for Docker Hub)."""
        host = "docker.io" if self.registry == DOCKER_HUB else self.registry
        return f"{host}/{self.repository}"

    @property
    def base_url(self) -> str:
        # Docker's own rule: loopback registries speak plain HTTP, everything else HTTPS.
        scheme = "http" if self.registry.startswith(_LOOPBACK) else "https"
        return f"{scheme}://{self.registry}"

    def __str__(self) -> str:
        text = self.repo_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, field: str = "reference") -> ImageRef:
    """Parse an image reference the way docker does; `field` names it in error messages."""
    raw = (text or "").strip()
    if raw.startswith("docker://"):
        raw = raw[len("docker://") :]

    def bad(why: str) -> InvalidReference:
        return InvalidReference(
            f"{field} {text!r} is not a valid image reference: {why}; {_REF_HELP}"
        )

    if not raw:
        raise bad("it is empty")
    digest = None
    if "@" in raw:
        raw, digest = raw.rsplit("@", 1)
        if not _DIGEST_RE.match(digest):
            raise bad(f"digest {digest!r} is not sha256: followed by 64 lowercase hex digits")
    tag = None
    slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise bad(f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with . or -")
    parts = raw.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, parts[1:]
        if not _DOMAIN_RE.match(registry):
            raise bad(f"registry {registry!r} is not a host[:port]")
    else:
        registry, path = "docker.io", parts
    if registry in ("docker.io", "index.docker.io"):
        registry = DOCKER_HUB
        if len(path) == 1:
            path = ["library", *path]
    for component in path:
        if not _COMPONENT_RE.match(component):
            raise bad(
                f"repository part {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    repository = "/".join(path)
    if len(registry) + 1 + len(repository) > 255:
        raise bad("the name is longer than 255 characters")
    return ImageRef(registry, repository, tag, digest)
