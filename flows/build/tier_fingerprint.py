"""A cache tier's identity: its Dockerfile stage text and a fingerprint over everything that
changes what BuildKit caches for it (stage text, global ARGs, base image, tiers below, files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from shipyard.tasks.dockerfile import parse_dockerfile
from shipyard.tasks.errors import PermanentError

FINGERPRINT_LABEL = "dev.shipyard.cache.fingerprint"
TIER_LABEL = "dev.shipyard.cache.tier"


def stage_texts(dockerfile: str) -> tuple[str, dict[str, str]]:
    """(prelude, {stage name: text}): the Dockerfile's lines before the first FROM and those of
    each stage, as written, stripped, with comments and blank lines dropped (they change nothing
    BuildKit caches). Stages without a name are keyed by their index.

    Where stages start and what they are called comes from the one Dockerfile parser
    (tasks/dockerfile.py: `FROM --platform=... IMAGE AS name` included); a Dockerfile BuildKit
    would refuse raises DockerfileError."""
    parsed = parse_dockerfile(dockerfile, refuse_unsupported=False)
    lines = dockerfile.splitlines()
    starts = [stage.line - 1 for stage in parsed.stages] + [len(lines)]

    def text(first: int, end: int) -> str:
        kept = (raw.strip() for raw in lines[first:end])
        return "\n".join(line for line in kept if line and not line.startswith("#"))

    stages = {
        stage.name or str(stage.index): text(starts[i], starts[i + 1])
        for i, stage in enumerate(parsed.stages)
    }
    return text(0, starts[0]), stages


def tier_fingerprint(
    stage_text: str, prelude: str, base_image: str, below: list[str], files: dict[str, bytes]
) -> str:
    """sha256 over the stage's Dockerfile text, the global ARGs, the base image, the tiers
    below and the content of the tier's files (by name)."""
    h = hashlib.sha256()
    for part in (prelude, stage_text, base_image, *below):
        h.update(part.encode() + b"\0")
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\0".encode())
    return "sha256:" + h.hexdigest()


def read_tier_files(context: Path, names: list[str], tier: str) -> dict[str, bytes]:
    out = {}
    for name in names:
        path = context / name
        if not path.is_file():
            raise PermanentError(
                f"cache tier {tier!r}: file {name!r} is not in the build context {context}; fix "
                "the CacheTiers block's `files` for this tier"
            )
        out[name] = path.read_bytes()
    return out
