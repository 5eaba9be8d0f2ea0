"""What to build, independent of the backend: the one type the build's modules share.

The backend adapter (backend.py) and the Docker backend (docker_build_run.py) both take a
`BuildSpec`; it lives here, importing nothing of theirs, so neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BuildSpec:
    """What to build, independent of the backend (Cloud Build renders it as buildx flags)."""

    base_image: str
    tags: list[str]
    cache_from: list[str]
    cache_to: str  # `type=inline` or `type=registry,ref=…,mode=max`
    target: str
    labels: dict[str, str] = field(default_factory=dict)
    dockerfile: str = "Dockerfile"
    context: str = "."
