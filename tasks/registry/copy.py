"""The copy engine: plan an image (platforms), stream its blobs, push manifests, move tags.

Blobs: HEAD at the destination first; cross-repository mount within one registry; otherwise a
streaming GET -> PUT with bounded parallelism. The sha256 is verified while streaming and the last
chunk is held back until it matches, so a corrupt blob never completes an upload. A blob whose
stream breaks is re-copied on its own (never the whole image).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import httpx

from shipyard.tasks.errors import is_transient
from shipyard.tasks.registry.client import RegistryClient
from shipyard.tasks.registry.errors import (
    DigestMismatch,
    PlatformNotFound,
    RegistryUnavailable,
    UnsupportedMediaType,
)
from shipyard.tasks.registry.manifests import Descriptor, Manifest, platform_matches, sha256_digest
from shipyard.tasks.registry.references import ImageRef
from shipyard.tasks.registry.retry import RetryBudget

log = logging.getLogger("shipyard.registry")

PIPE_DEPTH = 2  # pieces read ahead of the upload, per blob (see transport.PIPE_CHUNK)
ProgressFn = Callable[[int], None]  # called with a byte delta (negative when a retry rolls back)


@dataclass
class CopyStats:
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    bytes_total: int = 0
    manifests_pushed: int = 0
    retries: int = 0
    seconds: float = 0.0


# What the reader hands the upload: a chunk, the error that stopped it, or (digest, size) last.
Piece = bytes | Exception | tuple[str, int]


async def _pump(resp: httpx.Response, desc: Descriptor, queue: asyncio.Queue[Piece]) -> None:
    """Read and hash the source body into a small queue, so reading overlaps the upload (on a
    real network both sides wait on latency). Ends with the digest it computed, or with the
    exception that stopped it."""
    hasher, seen = hashlib.sha256(), 0
    try:
        async for chunk in resp.aiter_raw():  # pieces of up to PIPE_CHUNK (see _WideReadStream)
            if not chunk:
                continue
            seen += len(chunk)
            if seen > desc.size:
                raise DigestMismatch(f"more than the {desc.size} bytes the manifest declares")
            hasher.update(chunk)
            await queue.put(chunk)
    except Exception as exc:  # noqa: BLE001 - handed to the upload side, which raises it
        await queue.put(exc)
        return
    await queue.put(("sha256:" + hasher.hexdigest(), seen))


async def _verified(
    queue: asyncio.Queue[Piece], desc: Descriptor, where: str, on_bytes: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The upload body: the source's bytes, with the last chunk held back until the digest is
    proven, so a corrupt blob never completes an upload."""
    held: bytes | None = None
    while isinstance(item := await queue.get(), bytes):
        if held is not None:
            yield held
            on_bytes(len(held))
        held = item
    if isinstance(item, DigestMismatch):
        raise DigestMismatch(f"{where}: {item}; not copied") from None
    if isinstance(item, Exception):
        raise item
    actual, seen = item
    if seen != desc.size or actual != desc.digest:
        raise DigestMismatch(
            f"{where}: received {seen} bytes hashing to {actual}, expected {desc.size} bytes with "
            f"{desc.digest}; the source blob is corrupt, nothing was tagged"
        )
    if held is not None:
        yield held
        on_bytes(len(held))


@dataclass
class ImagePlan:
    """What to copy: the top manifest (image or index), the platform images under it, and the
    attestation manifests (buildx SBOM/provenance) kept with them; `platforms` names the images."""

    source: ImageRef
    top: Manifest
    images: list[Manifest]
    platforms: list[str]
    upstream_digest: (
        str  # digest the source tag resolves to (differs from top when one platform is picked)
    )
    attestations: list[Manifest] = field(default_factory=list)

    def manifests(self) -> list[Manifest]:
        """Every manifest to push, children before the index that names them."""
        children = [m for m in [*self.images, *self.attestations] if m is not self.top]
        return [*children, self.top]

    def blobs(self) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        for image in [*self.images, *self.attestations]:
            for desc in image.blobs():
                seen.setdefault(desc.digest, desc)
        return list(seen.values())

    @property
    def size(self) -> int:
        return sum(d.size for d in self.blobs()) + sum(len(m.raw) for m in self.manifests())


async def plan_image(
    client: RegistryClient, ref: ImageRef, platforms: list[str] | None = None
) -> ImagePlan:
    """Resolve a reference to its manifest(s), picking platforms from an index.

    All platforms: the index is kept as is, attestation manifests included (its digest is
    preserved). One platform: that image manifest alone becomes the copy (its own digest).
    Several: a new index holding only those images and no attestation (a new digest; an
    attestation kept there could name an image that is not). Attestations are never a platform.
    """
    top = await client.get_manifest(ref.repository, ref.reference)
    upstream = top.digest
    if not top.is_index:
        return ImagePlan(ref, top, [top], [], upstream)
    children = top.children()
    platform_children = [c for c in children if not c.is_attestation]
    attestations = [c for c in children if c.is_attestation]
    if platforms:
        chosen = [
            c for c in platform_children if any(platform_matches(p, c.platform) for p in platforms)
        ]
        if not chosen:
            have = ", ".join(sorted({c.platform or "?" for c in platform_children}))
            raise PlatformNotFound(
                f"{ref}: no manifest for platform(s) {', '.join(platforms)}; the index has {have}"
            )
        attestations = []
    else:
        chosen = platform_children
    fetched = list(
        await asyncio.gather(
            *(client.get_manifest(ref.repository, c.digest) for c in [*chosen, *attestations])
        )
    )
    for child, manifest in zip([*chosen, *attestations], fetched, strict=True):
        if manifest.is_index:
            raise UnsupportedMediaType(f"{ref}: nested index {child.digest} is not supported")
    images, kept_attestations = fetched[: len(chosen)], fetched[len(chosen) :]
    names = [c.platform or "?" for c in chosen]
    if platforms and len(chosen) == 1:
        return ImagePlan(ref, images[0], images, names, upstream)
    if platforms and len(chosen) < len(children):
        data = top.data
        keep = {c.digest for c in chosen}
        data["manifests"] = [m for m in data["manifests"] if m["digest"] in keep]
        raw = json.dumps(data, indent=3).encode()
        top = Manifest(top.media_type, raw, sha256_digest(raw))
    return ImagePlan(ref, top, images, names, upstream, kept_attestations)


async def copy_blob(
    src: RegistryClient,
    src_repo: str,
    dst: RegistryClient,
    dst_repo: str,
    desc: Descriptor,
    stats: CopyStats,
    progress: ProgressFn | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> str:
    """Copy one blob: 'skipped' (present), 'mounted' (same registry) or 'copied' (streamed)."""
    logger = logger or log
    where = f"blob {src.registry}/{src_repo}@{desc.digest}"
    if await dst.blob_exists(dst_repo, desc.digest):
        stats.blobs_skipped += 1
        _tick(progress, desc.size)
        return "skipped"
    same_registry = src.registry == dst.registry and src_repo != dst_repo
    # No mount once the destination's token service refused the source's scope (auth.narrowed).
    mount = (src_repo, desc.digest) if same_registry and not dst.auth.narrowed else None
    clock = RetryBudget(dst.retry_budget, dst.backoff_base, dst.backoff_cap, dst.max_attempts)
    attempt = 0
    while True:
        attempt += 1
        moved = 0

        def on_bytes(n: int) -> None:
            nonlocal moved
            moved += n
            stats.bytes_copied += n
            _tick(progress, n)

        location = None
        finished = False
        try:
            location = await _open_session(dst, dst_repo, mount)
            if location is None:
                stats.blobs_mounted += 1
                _tick(progress, desc.size)
                logger.info("mounted %s from %s into %s", desc.digest[:19], src_repo, dst_repo)
                return "mounted"
            started = time.monotonic()
            resp = await src.open_blob(src_repo, desc)
            queue: asyncio.Queue[Piece] = asyncio.Queue(maxsize=PIPE_DEPTH)
            reader = asyncio.create_task(_pump(resp, desc, queue))
            try:
                body = _verified(queue, desc, where, on_bytes)
                await dst.finish_upload(location, desc, body, dst_repo)
                finished = True
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await resp.aclose()
        except Exception as exc:
            stats.bytes_copied -= moved
            _tick(progress, -moved)
            retry_after = getattr(exc, "retry_after", None)
            delay = clock.delay(attempt, retry_after) if is_transient(exc) else None
            if delay is None:
                if is_transient(exc) and attempt > 1:
                    raise RegistryUnavailable(
                        f"{where}: {exc} - {clock.gave_up(attempt, retry_after)}", dst.registry
                    ) from None
                raise
            stats.retries += 1
            logger.warning(
                "%s: %s; retrying this blob (%d) in %.2fs", where, _brief(exc), attempt, delay
            )
            await asyncio.sleep(delay)
            continue
        finally:
            # A session this attempt opened and did not finish (a retry follows, the blob is
            # refused, or a sibling's failure cancelled this copy) is deleted, not left to hold
            # its partial bytes at the registry (distribution-spec "Canceling an upload").
            if location and not finished:
                await asyncio.shield(dst.cancel_upload(location))
        seconds = time.monotonic() - started
        stats.blobs_copied += 1
        logger.info("copied %s (%.1f MB in %.2fs)", desc.digest[:19], desc.size / 1e6, seconds)
        return "copied"


async def _open_session(
    dst: RegistryClient, dst_repo: str, mount: tuple[str, str] | None
) -> str | None:
    """start_upload, finished even when this copy is cancelled meanwhile: the registry may have
    opened the session already, and only its Location lets us delete it."""
    opening = asyncio.ensure_future(dst.start_upload(dst_repo, mount))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        location = None
        with contextlib.suppress(Exception):  # the POST failed: no session to delete
            location = await opening
        if location:
            await dst.cancel_upload(location)
        raise


def _tick(progress: ProgressFn | None, n: int) -> None:
    if progress is not None and n:
        progress(n)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


async def copy_image(
    src: RegistryClient,
    plan: ImagePlan,
    dst: RegistryClient,
    dst_repo: str,
    *,
    concurrency: int = 4,
    progress: ProgressFn | None = None,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
) -> CopyStats:
    """Copy every blob then every manifest (by digest, children first). Tags nothing.

    On any failure the remaining blob copies are cancelled and no manifest is pushed.
    """
    started = time.monotonic()
    stats = CopyStats()
    blobs = plan.blobs()
    stats.bytes_total = sum(b.size for b in blobs)
    src_repo = plan.source.repository
    src.want(src_repo, "pull")
    dst.want(dst_repo, "pull,push")
    if src.registry == dst.registry and src_repo != dst_repo:
        # For a mount, and only of the registry that holds the source: optional, a token
        # service that refuses it gets the destination's scopes alone (tasks/registry/auth.py).
        dst.auth.add_scope(f"repository:{src_repo}:pull", optional=True)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(desc: Descriptor) -> None:
        async with gate:
            await copy_blob(src, src_repo, dst, dst_repo, desc, stats, progress, logger)

    try:
        async with asyncio.TaskGroup() as group:
            for desc in blobs:
                group.create_task(one(desc))
    except (
        BaseExceptionGroup
    ) as failed:  # the first blob error, as itself (the rest were cancelled)
        raise failed.exceptions[0] from None
    for manifest in plan.manifests():
        if await dst.manifest_digest(dst_repo, manifest.digest) != manifest.digest:
            await dst.put_manifest(dst_repo, manifest.digest, manifest)
            stats.manifests_pushed += 1
    stats.retries += src.retries + dst.retries
    stats.seconds = time.monotonic() - started
    return stats


async def tag_image(
    dst: RegistryClient, repository: str, manifest: Manifest, tags: Iterable[str]
) -> list[str]:
    """Point tags at a manifest already pushed by digest; returns the tags that moved."""
    moved = []
    for tag in tags:
        if await dst.manifest_digest(repository, tag) != manifest.digest:
            await dst.put_manifest(repository, tag, manifest)
            moved.append(tag)
    return moved
