"""The copy engine: plan an image (platforms), stream its blobs, push manifests, move tags.

Blobs: HEAD at the destination first; cross-repository mount within one registry; otherwise a
streaming GET -> PUT with bounded parallelism. The sha256 is verified while streaming and the last
chunk is held back until it matches, so a corrupt blob never completes an upload. A blob whose
stream breaks is re-copied on its own (never the whole image).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import httpx

from tasks.errors import backoff_delay, is_transient
from tasks.registry.client import RegistryClient
from tasks.registry.errors import DigestMismatch, PlatformNotFound, UnsupportedMediaType
from tasks.registry.manifests import Descriptor, Manifest, platform_matches, sha256_digest
from tasks.registry.references import ImageRef

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


async def _pump(resp: httpx.Response, desc: Descriptor, queue: asyncio.Queue) -> None:
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
    except Exception as exc:  # handed to the upload side, which raises it
        await queue.put(exc)
        return
    await queue.put(("sha256:" + hasher.hexdigest(), seen))


async def _verified(
    queue: asyncio.Queue, desc: Descriptor, where: str, on_bytes: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The upload body: the source's bytes, with the last chunk held back until the digest is
    proven, so a corrupt blob never completes an upload."""
    held = None
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
    """What to copy: the top manifest (image or index) and the image manifests under it."""

    source: ImageRef
    top: Manifest
    images: list[Manifest]
    platforms: list[str]
    upstream_digest: (
        str  # digest the source tag resolves to (differs from top when one platform is picked)
    )

    def blobs(self) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        for image in self.images:
            for desc in image.blobs():
                seen.setdefault(desc.digest, desc)
        return list(seen.values())

    @property
    def size(self) -> int:
        return (
            sum(d.size for d in self.blobs())
            + len(self.top.raw)
            + sum(len(m.raw) for m in self.images if m is not self.top)
        )


async def plan_image(
    client: RegistryClient, ref: ImageRef, platforms: list[str] | None = None
) -> ImagePlan:
    """Resolve a reference to its manifest(s), picking platforms from an index.

    All platforms: the index is kept as is. One platform: that image manifest alone becomes the
    copy (its own digest). Several: a new index holding only those (a new digest).
    """
    top = await client.get_manifest(ref.repository, ref.reference)
    upstream = top.digest
    if not top.is_index:
        return ImagePlan(ref, top, [top], [], upstream)
    children = top.children()
    if platforms:
        chosen = [c for c in children if any(platform_matches(p, c.platform) for p in platforms)]
        if not chosen:
            have = ", ".join(sorted({c.platform or "?" for c in children}))
            raise PlatformNotFound(
                f"{ref}: no manifest for platform(s) {', '.join(platforms)}; the index has {have}"
            )
    else:
        chosen = children
    images = list(
        await asyncio.gather(*(client.get_manifest(ref.repository, c.digest) for c in chosen))
    )
    for child, image in zip(chosen, images, strict=True):
        if image.is_index:
            raise UnsupportedMediaType(f"{ref}: nested index {child.digest} is not supported")
    names = [c.platform or "?" for c in chosen]
    if platforms and len(chosen) == 1:
        return ImagePlan(ref, images[0], images, names, upstream)
    if platforms and len(chosen) < len(children):
        data = top.data
        keep = {c.digest for c in chosen}
        data["manifests"] = [m for m in data["manifests"] if m["digest"] in keep]
        raw = json.dumps(data, indent=3).encode()
        top = Manifest(top.media_type, raw, sha256_digest(raw))
    return ImagePlan(ref, top, images, names, upstream)


async def copy_blob(
    src: RegistryClient,
    src_repo: str,
    dst: RegistryClient,
    dst_repo: str,
    desc: Descriptor,
    stats: CopyStats,
    progress: ProgressFn | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> str:
    """Copy one blob: 'skipped' (present), 'mounted' (same registry) or 'copied' (streamed)."""
    logger = logger or log
    where = f"blob {src.registry}/{src_repo}@{desc.digest}"
    if await dst.blob_exists(dst_repo, desc.digest):
        stats.blobs_skipped += 1
        _tick(progress, desc.size)
        return "skipped"
    same = src.registry == dst.registry
    for attempt in range(1, dst.max_attempts + 1):
        moved = 0

        def on_bytes(n: int) -> None:
            nonlocal moved
            moved += n
            stats.bytes_copied += n
            _tick(progress, n)

        location = None
        try:
            location = await dst.start_upload(
                dst_repo, (src_repo, desc.digest) if same and src_repo != dst_repo else None
            )
            if location is None:
                stats.blobs_mounted += 1
                _tick(progress, desc.size)
                logger.info("mounted %s from %s into %s", desc.digest[:19], src_repo, dst_repo)
                return "mounted"
            started = time.monotonic()
            resp = await src.open_blob(src_repo, desc)
            queue: asyncio.Queue = asyncio.Queue(maxsize=PIPE_DEPTH)
            reader = asyncio.create_task(_pump(resp, desc, queue))
            try:
                body = _verified(queue, desc, where, on_bytes)
                await dst.finish_upload(location, desc, body, dst_repo)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await resp.aclose()
        except Exception as exc:
            stats.bytes_copied -= moved
            _tick(progress, -moved)
            if not is_transient(exc) or attempt == dst.max_attempts:
                if location:  # giving up: drop the partial upload (a retry opens a new one)
                    await dst.cancel_upload(location)
                raise
            stats.retries += 1
            delay = backoff_delay(attempt, dst.backoff_base, dst.backoff_cap)
            logger.warning(
                "%s: %s; retrying this blob (%d) in %.2fs", where, _brief(exc), attempt, delay
            )
            await asyncio.sleep(delay)
            continue
        seconds = time.monotonic() - started
        stats.blobs_copied += 1
        logger.info("copied %s (%.1f MB in %.2fs)", desc.digest[:19], desc.size / 1e6, seconds)
        return "copied"
    raise AssertionError("unreachable")


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
    logger: logging.Logger | logging.LoggerAdapter | None = None,
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
        dst.want(src_repo, "pull")
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
    manifests = [m for m in plan.images if m is not plan.top] + [plan.top]
    for manifest in manifests:
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
