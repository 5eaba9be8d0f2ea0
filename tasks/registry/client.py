"""RegistryClient: one registry host, requests with retries, manifests and blob endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx

from tasks.errors import backoff_delay, is_transient
from tasks.registry.auth import RegistryAuth, RegistryCredentials, who
from tasks.registry.errors import (
    DigestMismatch,
    ManifestTooLarge,
    NotFound,
    RegistryAuthError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
)
from tasks.registry.manifests import (
    ACCEPT,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Manifest,
    parse_manifest,
    sha256_digest,
)
from tasks.registry.references import ImageRef
from tasks.registry.transport import USER_AGENT, make_transport

log = logging.getLogger("shipyard.registry")


class RegistryClient:
    """One registry (host). Use as `async with RegistryClient(...) as client:`."""

    def __init__(
        self,
        registry: str,
        credentials: RegistryCredentials | None = None,
        *,
        base_url: str | None = None,
        max_attempts: int = 6,
        backoff_base: float = 0.2,
        backoff_cap: float = 5.0,
        timeout: float = 60.0,
        max_connections: int = 16,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.max_attempts = max_attempts
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.retries = 0
        self.auth = RegistryAuth(registry, credentials)
        url = base_url or ImageRef(registry, "x").base_url
        self._http = httpx.AsyncClient(
            base_url=url,
            auth=self.auth,
            follow_redirects=True,
            transport=make_transport(url, max_connections),
            timeout=httpx.Timeout(timeout, connect=10.0),
            headers={"User-Agent": USER_AGENT},
        )

    @classmethod
    def for_ref(
        cls, ref: ImageRef, credentials: RegistryCredentials | None = None, **kw: Any
    ) -> RegistryClient:
        return cls(ref.registry, credentials, base_url=ref.base_url, **kw)

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self.auth.aclose()

    def want(self, repository: str, actions: str) -> None:
        """Declare a scope (e.g. `pull,push`) so one bearer token covers the whole operation."""
        self.auth.add_scope(f"repository:{repository}:{actions}")

    # -- requests --------------------------------------------------------------------------

    async def _error(self, resp: httpx.Response, what: str) -> RegistryError:
        """Turn a refusal into a clear error. Bodies are read capped; no header is echoed."""
        text = b""
        async for chunk in resp.aiter_raw():
            text += chunk
            if len(text) > 65536:
                break
        codes, messages = [], []
        try:
            for err in json.loads(text).get("errors", []):
                codes.append(str(err.get("code", "")))
                messages.append(str(err.get("message", ""))[:200])
        except (ValueError, AttributeError):
            pass
        status = resp.status_code
        detail = f"HTTP {status}" + (f" {'/'.join(codes)}" if codes else "")
        if messages:
            detail += f": {'; '.join(messages)}"
        if status in (401, 403):
            return RegistryAuthError(
                f"registry {self.registry} refused {what} ({detail}) using {who(self.credentials)}. Fix: give "
                "credentials with access to that repository (a DockerRegistryCredentials block; "
                "for Artifact Registry a GcpCredentials block, user oauth2accesstoken); not retried."
            )
        if status == 404:
            code = codes[0] if codes else "NOT_FOUND"
            return NotFound(
                f"registry {self.registry}: {what} not found ({detail})", self.registry, code
            )
        if status == 429 or status >= 500:
            return RegistryUnavailable(
                f"registry {self.registry} is unavailable for {what} ({detail})"
            )
        return RegistryRequestError(f"registry {self.registry} refused {what} ({detail})")

    async def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        ok: Iterable[int] = (200,),
        stream: bool = False,
        attempts: int | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Send with retries on transient failures; raise a RegistryError on any other status."""
        ok = tuple(ok)
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                request = self._http.build_request(method, url, **kw)
                resp = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                err: Exception = RegistryUnavailable(
                    f"registry {self.registry}: {what} failed: {type(exc).__name__}: {exc}"
                )
                transient = is_transient(exc)
            else:
                if resp.status_code in ok:
                    if not stream:
                        await resp.aread()
                    return resp
                err = await self._error(resp, what)
                await resp.aclose()
                transient = is_transient(err)
            if not transient or attempt == attempts:
                if transient and attempts > 1:
                    raise RegistryUnavailable(f"{err} - gave up after {attempt} attempts") from None
                raise err
            self.retries += 1
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
            log.info("%s: transient failure (%s), retry %d in %.2fs", what, err, attempt, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        where = (
            f"{self.registry}/{repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"{self.registry}/{repository}@{reference}"
        )
        resp = await self._send(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            f"manifest {where}",
            stream=True,
            headers={"Accept": ACCEPT},
        )
        try:
            length = int(resp.headers.get("content-length") or 0)
            if length > MAX_MANIFEST_BYTES:
                raise ManifestTooLarge(
                    f"{where}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} byte (4 MiB) limit"
                )
            raw = bytearray()
            async for chunk in resp.aiter_raw():
                raw += chunk
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise ManifestTooLarge(
                        f"{where}: manifest is over the {MAX_MANIFEST_BYTES} byte (4 MiB) limit"
                    )
        finally:
            await resp.aclose()
        manifest = parse_manifest(bytes(raw), resp.headers.get("content-type", ""), where=where)
        expected = (
            reference
            if reference.startswith("sha256:")
            else resp.headers.get("docker-content-digest")
        )
        if expected and expected != manifest.digest:
            raise DigestMismatch(
                f"{where}: manifest bytes hash to {manifest.digest}, not {expected}"
            )
        return manifest

    async def manifest_digest(self, repository: str, reference: str) -> str | None:
        """HEAD a manifest: its digest, or None when absent."""
        try:
            resp = await self._send(
                "HEAD",
                f"/v2/{repository}/manifests/{reference}",
                f"manifest {self.registry}/{repository}:{reference}",
                headers={"Accept": ACCEPT},
            )
        except NotFound:
            return None
        return resp.headers.get("docker-content-digest") or (
            reference if reference.startswith("sha256:") else None
        )

    async def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> None:
        """Push the original bytes under a digest or a tag."""
        await self._send(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            f"manifest push {self.registry}/{repository}:{reference}",
            ok=(200, 201),
            content=manifest.raw,
            headers={"Content-Type": manifest.media_type},
        )

    async def list_tags(self, repository: str) -> list[str]:
        try:
            resp = await self._send(
                "GET", f"/v2/{repository}/tags/list", f"tags of {self.registry}/{repository}"
            )
        except NotFound:
            return []
        return resp.json().get("tags") or []

    # -- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repository: str, digest: str) -> bool:
        try:
            await self._send(
                "HEAD",
                f"/v2/{repository}/blobs/{digest}",
                f"blob {self.registry}/{repository}@{digest}",
            )
        except NotFound:
            return False
        return True

    async def read_blob(
        self, repository: str, desc: Descriptor, limit: int = MAX_CONFIG_BYTES
    ) -> bytes:
        """A small blob (an image config) in memory, digest-verified."""
        where = f"blob {self.registry}/{repository}@{desc.digest}"
        if desc.size > limit:
            raise RegistryRequestError(
                f"{where} is {desc.size} bytes, over the {limit} byte limit for configs"
            )
        resp = await self._send("GET", f"/v2/{repository}/blobs/{desc.digest}", where)
        if sha256_digest(resp.content) != desc.digest:
            raise DigestMismatch(f"{where}: content hashes to {sha256_digest(resp.content)}")
        return resp.content

    async def open_blob(self, repository: str, desc: Descriptor) -> httpx.Response:
        """A streaming GET (redirects to a CDN are followed; credentials are not sent there)."""
        return await self._send(
            "GET",
            f"/v2/{repository}/blobs/{desc.digest}",
            f"blob {self.registry}/{repository}@{desc.digest}",
            stream=True,
        )

    async def start_upload(
        self, repository: str, mount: tuple[str, str] | None = None
    ) -> str | None:
        """POST an upload; with mount=(from_repo, digest) try a cross-repository mount first.

        Returns the upload location, or None when the mount succeeded (201).
        """
        params = {"mount": mount[1], "from": mount[0]} if mount else None
        resp = await self._send(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            f"blob upload to {self.registry}/{repository}",
            ok=(201, 202),
            params=params,
        )
        if resp.status_code == 201 and mount:
            return None
        location = resp.headers.get("location")
        if not location:
            raise RegistryRequestError(
                f"registry {self.registry} started an upload without a Location"
            )
        return location

    async def finish_upload(
        self, location: str, desc: Descriptor, chunks: AsyncIterator[bytes], repository: str
    ) -> None:
        """PUT the whole blob as a stream (single attempt: a streamed body cannot be replayed)."""
        url = httpx.URL(location)
        url = url.copy_merge_params({"digest": desc.digest})
        what = f"blob upload {self.registry}/{repository}@{desc.digest}"
        try:
            await self._send(
                "PUT",
                str(url),
                what,
                ok=(201, 204),
                attempts=1,
                content=chunks,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(desc.size),
                },
            )
        except RegistryAuthError:
            if not self.auth.expire_token():
                raise
            # Bearer tokens last minutes (Docker Hub: 5): a long upload can outlive one.
            raise RegistryUnavailable(
                f"{what}: the bearer token expired during the upload; retrying with a fresh one"
            ) from None

    async def cancel_upload(self, location: str) -> None:
        try:
            await self._http.delete(location)
        except httpx.HTTPError:
            pass

    async def upload_bytes(self, repository: str, data: bytes, media_type: str = "") -> Descriptor:
        """Push a small in-memory blob (configs, test fixtures); skipped if present."""
        desc = Descriptor(media_type, sha256_digest(data), len(data))
        if not await self.blob_exists(repository, desc.digest):
            location = await self.start_upload(repository)
            assert location is not None

            async def one() -> AsyncIterator[bytes]:
                yield data

            await self.finish_upload(location, desc, one(), repository)
        return desc
