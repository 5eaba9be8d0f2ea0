"""A cache tier's identity: its Dockerfile stage text and a fingerprint over everything that
changes what BuildKit caches for it (stage text, global ARGs, base image, tiers below, files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tasks.errors import PermanentError

FINGERPRINT_LABEL = "dev.shipyard.cache.fingerprint"
TIER_LABEL = "dev.shipyard.cache.tier"


def stage_texts(dockerfile: str) -> tuple[str, dict[str, str]]:
    """(prelude, {stage name: text}) with comments and blank lines dropped (they change nothing
    BuildKit caches). Stages without a name are keyed by their index."""
    prelude: list[str] = []
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    index = 0
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0].upper() == "FROM" and (current is None or not _continued(current)):
            name = words[3].lower() if len(words) >= 4 and words[2].lower() == "as" else str(index)
            current = stages.setdefault(name, [])
            index += 1
        (prelude if current is None else current).append(line)
    return "\n".join(prelude), {k: "\n".join(v) for k, v in stages.items()}


def _continued(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].endswith("\\")


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
