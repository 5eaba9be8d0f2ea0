"""Manifests and descriptors: media types, parsing with the original bytes, platforms, configs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from shipyard.tasks.registry.errors import UnsupportedMediaType

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
IMAGE_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
INDEX_TYPES = frozenset({DOCKER_LIST, OCI_INDEX})
SUPPORTED_TYPES = IMAGE_TYPES | INDEX_TYPES
ACCEPT = ", ".join(sorted(SUPPORTED_TYPES))
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 8 * 1024 * 1024
REFERENCE_TYPE = "vnd.docker.reference.type"
REFERENCE_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_MANIFEST = "attestation-manifest"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: str | None = None
    urls: tuple[str, ...] = ()
    reference_type: str | None = None  # annotation vnd.docker.reference.type of an index entry

    @property
    def is_attestation(self) -> bool:
        """A buildx attestation manifest (SBOM, provenance) in an index: not a platform image.

        BuildKit stores them as index entries with platform `unknown/unknown` and the
        annotations `vnd.docker.reference.type: attestation-manifest` and
        `vnd.docker.reference.digest: <the image they describe>` (docs.docker.com/build/
        metadata/attestations/attestation-storage; moby/buildkit util/attestation/types.go).
        """
        return self.reference_type == ATTESTATION_MANIFEST

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        plat = data.get("platform")
        platform = None
        if plat:
            platform = "/".join(
                p for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p
            )
        annotations = data.get("annotations") or {}
        return cls(
            data.get("mediaType", ""),
            data["digest"],
            int(data["size"]),
            platform,
            tuple(data.get("urls") or ()),
            annotations.get(REFERENCE_TYPE),
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest with its original bytes (pushed unchanged, so its digest is preserved)."""

    media_type: str
    raw: bytes = field(repr=False)
    digest: str

    @property
    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def children(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in self.data.get("manifests", [])]

    def config(self) -> Descriptor:
        return Descriptor.from_json(self.data["config"])

    def blobs(self) -> list[Descriptor]:
        """Config then layers, without non-distributable (foreign, URL-backed) layers."""
        layers = [Descriptor.from_json(d) for d in self.data.get("layers", [])]
        foreign = ("foreign", "nondistributable")
        kept = [d for d in layers if not (d.urls and any(f in d.media_type for f in foreign))]
        return [self.config(), *kept]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_manifest(raw: bytes, content_type: str, *, where: str) -> Manifest:
    """Check the media type (body first, header second) and compute the digest."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise UnsupportedMediaType(
            f"{where}: the manifest is not JSON (Content-Type {content_type!r})"
        ) from None
    media_type = (body.get("mediaType") if isinstance(body, dict) else None) or content_type.split(
        ";"
    )[0].strip()
    if media_type not in SUPPORTED_TYPES:
        hint = (
            " (Docker schema 1 is deprecated: re-push the image with a current client)"
            if "v1+" in media_type and "docker" in media_type
            else ""
        )
        raise UnsupportedMediaType(
            f"{where}: unsupported manifest media type {media_type!r}{hint}; Shipyard copies "
            f"{', '.join(sorted(SUPPORTED_TYPES))}"
        )
    return Manifest(media_type, raw, sha256_digest(raw))


def platform_of_config(config: dict[str, Any]) -> str:
    parts = (config.get("os"), config.get("architecture"), config.get("variant"))
    return "/".join(p for p in parts if p)


def platform_matches(wanted: str, have: str | None) -> bool:
    """linux/arm64 matches linux/arm64/v8; linux/arm64/v8 needs the variant."""
    if not have:
        return False
    want, got = wanted.split("/"), have.split("/")
    return got[: len(want)] == want or (
        want[:2] == got[:2] and len(got) == 2 and want[2:] == ["v8"]
    )


def config_env(config: dict[str, Any]) -> dict[str, str]:
    env = (config.get("config") or {}).get("Env") or []
    return dict(item.split("=", 1) for item in env if "=" in item)


def config_labels(config: dict[str, Any]) -> dict[str, str]:
    return (config.get("config") or {}).get("Labels") or {}
