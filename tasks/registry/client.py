"""RegistryClient: one registry host, requests with retries, manifests and blob endpoints."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import httpx

from shipyard.tasks.errors import is_transient
from shipyard.tasks.registry.auth import RegistryAuth, RegistryCredentials, who
from shipyard.tasks.registry.errors import (
    PERMANENT_CODES,
    DigestMismatch,
    ManifestTooLarge,
    NotFound,
    RegistryAuthError,
    RegistryError,
    RegistryRequestError,
    RegistryUnavailable,
)
from shipyard.tasks.registry.manifests import (
    ACCEPT,
    MAX_CONFIG_BYTES,
    MAX_MANIFEST_BYTES,
    Descriptor,
    Manifest,
    parse_manifest,
    sha256_digest,
)
from shipyard.tasks.registry.references import ImageRef
from shipyard.tasks.registry.retry import DEFAULT_RETRY_BUDGET, RetryBudget, parse_retry_after
from shipyard.tasks.registry.transport import USER_AGENT, http_timeout, make_transport

T = TypeVar("T")

log = logging.getLogger("shipyard.registry")


class RegistryClient:
    """One registry (host). Use as `async with RegistryClient(...) as client:`.

    retry_budget: seconds one operation may spend retrying transient failures (default 300);
    max_attempts: an optional cap on attempts within it; backoff_*: the pause when the registry
    gives no Retry-After.
    """

    def __init__(
        self,
        registry: str,
        credentials: RegistryCredentials | None = None,
        *,
        base_url: str | None = None,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        max_attempts: int | None = None,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        timeout: float | None = None,
        max_connections: int = 16,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.retry_budget = retry_budget  # seconds per operation; see tasks/registry/retry.py
        self.max_attempts = max_attempts  # optional cap on attempts within the budget
        self._not_before = 0.0  # monotonic time before which no request goes out (Retry-After)
        self.no_mount_from: set[str] = set()  # repositories whose mounts this registry refused
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.retries = 0
        self.auth = RegistryAuth(registry, credentials)
        url = base_url or ImageRef(registry, "x").base_url
        self._http = httpx.AsyncClient(
            base_url=url,
            auth=self.auth,
            follow_redirects=True,
            transport=make_transport(url, max_connections),
            timeout=http_timeout(timeout),  # tasks/deadlines.py
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
        code = codes[0] if codes else ""
        detail = f"HTTP {status}" + (f" {'/'.join(codes)}" if codes else "")
        if messages:
            detail += f": {'; '.join(messages)}"
        if status in (401, 403):
            return RegistryAuthError(
                f"registry {self.registry} refused {what} ({detail}) using {who(self.credentials)}. Fix: give "
                "credentials with access to that repository (a DockerRegistryCredentials block; "
                "for Artifact Registry a GcpCredentials block, user oauth2accesstoken); not retried.",
                self.registry,
                code,
            )
        if status == 404:
            return NotFound(
                f"registry {self.registry}: {what} not found ({detail})",
                self.registry,
                code or "NOT_FOUND",
            )
        if (status == 429 or status >= 500) and not PERMANENT_CODES.intersection(codes):
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if retry_after is not None:
                self._not_before = max(self._not_before, time.monotonic() + retry_after)
                detail += f", Retry-After {retry_after:.0f}s"
            err = RegistryUnavailable(
                f"registry {self.registry} is unavailable for {what} ({detail})",
                self.registry,
                code,
            )
            err.retry_after = retry_after
            return err
        return RegistryRequestError(
            f"registry {self.registry} refused {what} ({detail}); not retried: the registry's "
            "answer is final for this request",
            self.registry,
            code,
        )

    async def _gate(self) -> None:
        """Wait out a Retry-After the registry gave to any request of this client: a rate limit
        applies to the client, not to the one request that happened to hear about it."""
        pause = self._not_before - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)

    async def retrying(
        self, what: str, once: Callable[[], Awaitable[T]], *, attempts: int | None = None
    ) -> T:
        """Run `once` until it succeeds, fails for good, or the retry budget is spent.

        Transient failures (429/5xx without a permanent code, resets, timeouts, a body cut
        short) are retried after the registry's Retry-After or a backoff; anything else is
        raised at once.
        """
        clock = RetryBudget(
            self.retry_budget, self.backoff_base, self.backoff_cap, attempts or self.max_attempts
        )
        attempt = 0
        while True:
            attempt += 1
            await self._gate()
            try:
                return await once()
            except httpx.TransportError as exc:
                err: Exception = RegistryUnavailable(
                    f"registry {self.registry}: {what} failed: {type(exc).__name__}: {exc}",
                    self.registry,
                )
                transient = is_transient(exc)
            except RegistryError as exc:
                err, transient = exc, is_transient(exc)
            if not transient:
                raise err
            retry_after = getattr(err, "retry_after", None)
            delay = clock.delay(attempt, retry_after)
            if delay is None:
                if attempts == 1:  # the caller retries (a streamed body cannot be replayed)
                    raise err
                gave_up = RegistryUnavailable(
                    f"{err} - {clock.gave_up(attempt, retry_after)}", self.registry
                )
                # The caller's own retry (a blob copy) must see the wait too: without it, it
                # retried after a short backoff and this client's gate then waited the whole
                # Retry-After, past the budget.
                gave_up.retry_after = retry_after
                raise gave_up from None
            self.retries += 1
            log.info("%s: transient failure (%s), retry %d in %.2fs", what, err, attempt, delay)
            await asyncio.sleep(delay)

    async def _send_once(
        self, method: str, url: str, what: str, ok: tuple[int, ...], stream: bool, **kw: Any
    ) -> httpx.Response:
        request = self._http.build_request(method, url, **kw)
        resp = await self._http.send(request, stream=True)
        try:
            if resp.status_code in ok:
                if not stream:
                    await resp.aread()  # inside the retry: a body cut short is retried too
                return resp
            raise await self._error(resp, what)
        except BaseException:
            await resp.aclose()
            raise

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
        statuses = tuple(ok)
        return await self.retrying(
            what,
            lambda: self._send_once(method, url, what, statuses, stream, **kw),
            attempts=attempts,
        )

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, repository: str, reference: str) -> Manifest:
        where = (
            f"{self.registry}/{repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"{self.registry}/{repository}@{reference}"
        )

        async def once() -> Manifest:
            resp = await self._send_once(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                f"manifest {where}",
                (200,),
                True,
                headers={"Accept": ACCEPT},
            )
            try:
                length = int(resp.headers.get("content-length") or 0)
                if length > MAX_MANIFEST_BYTES:
                    raise ManifestTooLarge(
                        f"{where}: manifest is {length} bytes, over the {MAX_MANIFEST_BYTES} byte "
                        "(4 MiB) limit",
                        self.registry,
                    )
                raw = bytearray()
                async for chunk in resp.aiter_raw():
                    raw += chunk
                    if len(raw) > MAX_MANIFEST_BYTES:
                        raise ManifestTooLarge(
                            f"{where}: manifest is over the {MAX_MANIFEST_BYTES} byte (4 MiB) limit",
                            self.registry,
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
                    f"{where}: manifest bytes hash to {manifest.digest}, not {expected}",
                    self.registry,
                )
            return manifest

        return await self.retrying(f"manifest {where}", once)

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

        Returns the upload location, or None when the mount succeeded (201). A mount is only an
        optimisation: a registry that cannot mount answers 202 and an upload session
        (distribution-spec, "Mounting a blob from another repository"), but one whose credentials
        may push here and not read `from_repo` answers 401/403 (distribution asks for
        `repository:<from>:pull` on a mount; go-containerregistry#219, kaniko's "cross repo mount
        fallback" osscontainertools/kaniko#1013). That refusal falls back to a plain upload, and
        this client stops trying mounts from that repository.
        """
        where = f"blob upload to {self.registry}/{repository}"
        url = f"/v2/{repository}/blobs/uploads/"
        if mount and mount[0] not in self.no_mount_from:
            try:
                resp = await self._send(
                    "POST", url, where, ok=(201, 202), params={"mount": mount[1], "from": mount[0]}
                )
            except RegistryAuthError as exc:
                self.no_mount_from.add(mount[0])
                log.info(
                    "%s: mount from %s refused (%s); uploading instead",
                    where,
                    mount[0],
                    exc.code or "denied",
                )
            else:
                if resp.status_code == 201:
                    return None
                return self._location(resp)
        return self._location(await self._send("POST", url, where, ok=(201, 202)))

    def _location(self, resp: httpx.Response) -> str:
        location = resp.headers.get("location")
        if not location:
            raise RegistryRequestError(
                f"registry {self.registry} started an upload without a Location", self.registry
            )
        return str(location)

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
        """DELETE an upload session nobody will finish (distribution-spec "Canceling an
        upload"): else it holds its partial bytes at the registry until a purge, days later."""
        try:
            resp = await self._http.delete(location)
        except httpx.HTTPError as exc:
            log.info("cancelling upload %s failed: %s", httpx.URL(location).path, exc)
            return
        if resp.status_code not in (200, 202, 204, 404):
            log.info("cancelling upload %s: HTTP %d", httpx.URL(location).path, resp.status_code)

    async def upload_bytes(self, repository: str, data: bytes, media_type: str = "") -> Descriptor:
        """Push a small in-memory blob (configs, test fixtures); skipped if present."""
        desc = Descriptor(media_type, sha256_digest(data), len(data))
        if not await self.blob_exists(repository, desc.digest):
            location = await self.start_upload(repository)
            if location is None:  # only a mount answers without a session, and none was asked
                raise RegistryRequestError(
                    f"registry {self.registry} opened no upload session", self.registry
                )

            async def one() -> AsyncIterator[bytes]:
                yield data

            try:
                await self.finish_upload(location, desc, one(), repository)
            except BaseException:
                await asyncio.shield(self.cancel_upload(location))
                raise
        return desc
