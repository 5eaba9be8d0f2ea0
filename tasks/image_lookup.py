"""Registry reads and deletes the build needs, on top of the OCI client in tasks/registry/.

- `image_facts`: does an image (tag or digest) exist, and what are its digest, config labels,
  layers and size — from the manifest and the config blob only, no layer is pulled.
- `tag_variant`: push a copy of a manifest with one annotation added under another tag. The
  distribution API can only delete manifests by digest (deleting one removes every tag on it), so
  a tag that must be deletable on its own (a quarterly cache tag) needs a manifest of its own.
- `delete_manifest`: DELETE /v2/<repo>/manifests/<digest> (registries need delete enabled).
- `list_tags`, `split_repository`.

Thin and typed; knows nothing of releases or cache tiers. Everything is async (httpx).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from shipyard.tasks.registry import (
    OCI_MANIFEST,
    Manifest,
    NotFound,
    RegistryClient,
    RegistryCredentials,
    config_labels,
    parse_reference,
    sha256_digest,
)

__all__ = [
    "ImageFacts",
    "LookupClient",
    "image_facts",
    "split_repository",
]


@dataclass
class ImageFacts:
    repository: str  # registry/repository
    digest: str
    labels: dict[str, str]
    layers: list[tuple[str, int]]  # (digest, size)
    config: dict[str, Any] = field(repr=False)
    manifest: Manifest = field(repr=False)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.layers)

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}"


class LookupClient(RegistryClient):
    """RegistryClient plus manifest DELETE."""

    async def __aenter__(self) -> LookupClient:
        await super().__aenter__()
        return self

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        """Delete a manifest by digest; False when it was already gone."""
        try:
            await self._send(
                "DELETE",
                f"/v2/{repository}/manifests/{digest}",
                f"manifest delete {self.registry}/{repository}@{digest}",
                ok=(202, 200),
            )
        except NotFound:
            return False
        return True


def split_repository(repository: str) -> tuple[str, str]:
    """`host[:port]/path` -> (registry host, repository path), validated like an image ref."""
    ref = parse_reference(repository, field="repository")
    return ref.registry, ref.repository


def client_for(repository: str, credentials: RegistryCredentials | None = None) -> LookupClient:
    ref = parse_reference(repository, field="repository")
    return LookupClient(ref.registry, credentials, base_url=ref.base_url, max_attempts=4)


async def image_facts(client: RegistryClient, repository: str, reference: str) -> ImageFacts | None:
    """The image at repository:reference (a tag or a digest), or None when it does not exist."""
    _, path = split_repository(repository)
    try:
        manifest = await client.get_manifest(path, reference)
    except NotFound:
        return None
    if manifest.is_index:  # a multi-platform image: describe its first image manifest
        child = manifest.children()[0]
        manifest = await client.get_manifest(path, child.digest)
    config = json.loads(await client.read_blob(path, manifest.config()))
    layers = [(d["digest"], int(d["size"])) for d in manifest.data.get("layers", [])]
    return ImageFacts(repository, manifest.digest, config_labels(config), layers, config, manifest)


async def tag_variant(
    client: RegistryClient,
    repository: str,
    manifest: Manifest,
    tag: str,
    annotation: tuple[str, str],
) -> str:
    """Push `manifest` plus one annotation under `tag` (a digest of its own); returns it."""
    _, path = split_repository(repository)
    data = manifest.data
    data.setdefault("annotations", {})[annotation[0]] = annotation[1]
    media_type = data.get("mediaType") or manifest.media_type
    if media_type != OCI_MANIFEST:
        # Docker schema 2 has no annotations field; the OCI manifest carries the same content.
        data["mediaType"] = media_type = OCI_MANIFEST
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    variant = Manifest(media_type, raw, sha256_digest(raw))
    await client.put_manifest(path, tag, variant)
    return variant.digest


async def list_tags(client: RegistryClient, repository: str) -> list[str]:
    _, path = split_repository(repository)
    return await client.list_tags(path)


async def manifest_digest(client: RegistryClient, repository: str, reference: str) -> str | None:
    _, path = split_repository(repository)
    return await client.manifest_digest(path, reference)


async def put_tag(client: RegistryClient, repository: str, manifest: Manifest, tag: str) -> None:
    _, path = split_repository(repository)
    await client.put_manifest(path, tag, manifest)
