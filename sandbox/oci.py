"""The sandbox's own minimal OCI distribution client and layer builder (the sandbox plays Google).

Kept apart from tasks/registry/ on purpose: the emulator must not share code with the client it
is testing. It speaks plain HTTP to the sandbox registry: HEAD/GET manifests and blobs, a blob
upload (POST then a monolithic PUT), a cross-repository mount, and manifest PUT.

Layers are deterministic gzip'd tars (sorted entries, mtime 0, uid/gid 0, gzip mtime 0), so one
instruction with the same inputs always yields the same layer digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
ACCEPT = ", ".join([OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST])


class RegistryFailure(Exception):
    """The sandbox registry refused a request (the message reads like BuildKit's)."""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzip blob
    diff_id: str  # of the uncompressed tar
    size: int
    media_type: str = OCI_LAYER
    data: bytes | None = None  # the blob, when this build produced it


def make_layer(files: dict[str, tuple[bytes, int]]) -> Layer:
    """A layer from {absolute path: (content, mode)}; parent directories are added."""
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs):
            info = tarfile.TarInfo(name + "/")
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            content, mode = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(content), mode, 0
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    blob = gzip.compress(raw, compresslevel=6, mtime=0)
    return Layer(sha256(blob), sha256(raw), len(blob), OCI_LAYER, blob)


def split_ref(ref: str) -> tuple[str, str, str]:
    """`host:port/repo[:tag][@digest]` -> (host, repository, reference)."""
    name, _, digest = ref.partition("@")
    host, _, path = name.partition("/")
    if "." not in host and ":" not in host and host != "localhost":
        raise RegistryFailure(f"{ref!r}: expected REGISTRY/REPOSITORY[:TAG][@DIGEST]")
    repo, tag = path, "latest"
    if ":" in path.rsplit("/", 1)[-1]:
        repo, _, tag = path.rpartition(":")
    return host, repo, digest or tag


class SandboxRegistry:
    """Async client for one registry (http://host:port)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.host = httpx.URL(self.base_url).netloc.decode()
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    def same_host(self, host: str) -> bool:
        """Is an image reference's host this registry (127.0.0.1 and localhost are one)?"""
        norm = host.replace("localhost", "127.0.0.1")
        return norm == self.host.replace("localhost", "127.0.0.1")

    async def get_manifest(self, repo: str, reference: str) -> tuple[dict[str, Any], str, bytes]:
        """(manifest, digest, raw); RegistryFailure 'not found' when absent."""
        resp = await self._http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT})
        if resp.status_code == 404:
            raise RegistryFailure(f"{self.host}/{repo}:{reference}: not found")
        if resp.status_code != 200:
            raise RegistryFailure(
                f"{self.host}/{repo}:{reference}: registry answered HTTP {resp.status_code}"
            )
        digest = resp.headers.get("docker-content-digest") or sha256(resp.content)
        return resp.json(), digest, resp.content

    async def get_blob(self, repo: str, digest: str) -> bytes:
        resp = await self._http.get(f"/v2/{repo}/blobs/{digest}", follow_redirects=True)
        if resp.status_code != 200:
            raise RegistryFailure(f"{self.host}/{repo}@{digest}: blob HTTP {resp.status_code}")
        return resp.content

    async def blob_exists(self, repo: str, digest: str) -> bool:
        resp = await self._http.head(f"/v2/{repo}/blobs/{digest}")
        return resp.status_code == 200

    async def put_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        if await self.blob_exists(repo, digest):
            return digest
        start = await self._http.post(f"/v2/{repo}/blobs/uploads/")
        if start.status_code != 202:
            raise RegistryFailure(f"upload to {self.host}/{repo}: HTTP {start.status_code}")
        location = httpx.URL(start.headers["location"]).copy_merge_params({"digest": digest})
        done = await self._http.put(
            str(location), content=data, headers={"Content-Type": "application/octet-stream"}
        )
        if done.status_code != 201:
            raise RegistryFailure(f"upload to {self.host}/{repo}: HTTP {done.status_code}")
        return digest

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True when the blob is now in repo."""
        if await self.blob_exists(repo, digest):
            return True
        resp = await self._http.post(
            f"/v2/{repo}/blobs/uploads/", params={"mount": digest, "from": from_repo}
        )
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:  # not mountable: cancel the upload it opened
            await self._http.delete(resp.headers["location"])
        return False

    async def ensure_blob(
        self, repo: str, digest: str, from_repo: str, data: bytes | None = None
    ) -> None:
        """Make a blob present in repo: HEAD, mount from from_repo, else upload data/copy."""
        if await self.mount_blob(repo, digest, from_repo):
            return
        if data is None:
            data = await self.get_blob(from_repo, digest)
        await self.put_blob(repo, data)

    async def put_manifest(self, repo: str, reference: str, manifest: dict[str, Any]) -> str:
        raw = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        resp = await self._http.put(
            f"/v2/{repo}/manifests/{reference}",
            content=raw,
            headers={"Content-Type": manifest.get("mediaType", OCI_MANIFEST)},
        )
        if resp.status_code != 201:
            raise RegistryFailure(
                f"pushing {self.host}/{repo}:{reference}: HTTP {resp.status_code} {resp.text[:300]}"
            )
        return sha256(raw)
