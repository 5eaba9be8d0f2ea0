"""Mirror a CUDA base image into our own registry, pinned by digest, with the cuDNN major verified.

Why: NVIDIA deletes CUDA tags months after release ("manifest unknown"), and cuDNN 9 in place of
8 breaks `libcudnn.so.8` users at run time. So the flow copies registry to registry
(no Docker daemon, no local disk), refuses an image whose cuDNN major is not the expected one
before any byte moves, and records the digest it copied.

The pin, read by the build
--------------------------
Each destination repository has one Prefect Variable, `shipyard-base-pin-<sanitized repository>`
(see `pin_variable_name`), holding JSON::

    {"source": "docker.io/nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04",
     "source_digest": "sha256:...",            # what the source tag resolved to
     "destination": "ghcr.io/acme/base/cuda",  # repository
     "digest": "sha256:...",                   # what the destination serves (== source_digest
                                               #   unless a platform subset was mirrored)
     "image": "ghcr.io/acme/base/cuda@sha256:...",
     "tag": "12.1.1-cudnn8-runtime-ubuntu22.04", "dated_tag": "12.1.1-...-20251123",
     "cudnn": "8.9.0.131", "cuda": "12.1.1", "platforms": [...], "size": 123,
     "recorded_at": "2025-11-23T12:00:00+00:00"}

The build calls `read_base_pin(destination)` and uses `FROM <pin["image"]>` (by digest, never by
tag). Drift (the upstream tag now names another digest) is reported and the pin is kept unless the
run is asked to accept it; an upstream that is gone (404 / MANIFEST_UNKNOWN) is reported plainly
and the pinned mirror keeps being served.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    aupdate_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from shipyard.blocks.build_settings import BuildSettings, BuildSettingsError
from shipyard.blocks.registry_credentials import (
    credentials_from_docker_block,
    credentials_from_gcp_block,
)
from shipyard.flows.observe.stage_events import stage_hooks
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.registry import (
    DEFAULT_RETRY_BUDGET,
    CopyStats,
    ImagePlan,
    ImageRef,
    NotFound,
    PlatformNotFound,
    RegistryClient,
    RegistryCredentials,
    config_env,
    config_labels,
    copy_image,
    parse_reference,
    plan_image,
    platform_matches,
    platform_of_config,
    tag_image,
)

CUDNN_LABEL = "com.nvidia.cudnn.version"
CUDNN_ENV = "NV_CUDNN_VERSION"
PIN_PREFIX = "shipyard-base-pin-"
# Where the scheduled mirror copies to when no destination is given: read when the run starts,
# so a deployment holds no registry host:port (`shipyard setup` sets it for the sandbox).
DESTINATION_VARIABLE = "shipyard_base_mirror"


class CudnnMismatch(PermanentError):
    """The image's cuDNN major is not the one the services link against."""


# ---------------------------------------------------------------- pin


def pin_variable_name(destination: str) -> str:
    """`shipyard-base-pin-<repository>`, lowercase, [a-z0-9_-] only, at most 255 characters."""
    ref = parse_reference(destination, field="destination")
    name = PIN_PREFIX + re.sub(r"[^a-z0-9_-]+", "-", ref.repo_name.lower()).strip("-")
    if len(name) > 255:
        name = name[:238] + "-" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def _artifact_key(kind: str, destination: str) -> str:
    return (kind + "-" + re.sub(r"[^a-z0-9]+", "-", destination.lower())).strip("-")[:200]


async def aread_base_pin(destination: str) -> dict[str, Any] | None:
    """The recorded pin of a destination repository (a tag in `destination` is ignored), or None."""
    return await Variable.aget(pin_variable_name(destination), default=None)


def read_base_pin(destination: str) -> dict[str, Any] | None:
    """Synchronous `aread_base_pin`, for the build flow and scripts."""
    return Variable.get(pin_variable_name(destination), default=None)


# ---------------------------------------------------------------- image facts


def cudnn_version(config: dict[str, Any]) -> str | None:
    """From the label com.nvidia.cudnn.version, else the env NV_CUDNN_VERSION."""
    return config_labels(config).get(CUDNN_LABEL) or config_env(config).get(CUDNN_ENV)


def cuda_version(config: dict[str, Any]) -> str | None:
    return config_env(config).get("CUDA_VERSION") or config_labels(config).get(
        "com.nvidia.cuda.version"
    )


def check_cudnn(
    configs: dict[str, dict[str, Any]], expect_major: int | None, image: str
) -> str | None:
    """Raise CudnnMismatch unless every platform's cuDNN major is `expect_major` (None: no check)."""
    versions = {platform: cudnn_version(cfg) for platform, cfg in configs.items()}
    found = sorted({v for v in versions.values() if v})
    if expect_major is None:
        return found[0] if found else None
    for platform, version in versions.items():
        major = version.split(".")[0] if version else None
        if major != str(expect_major):
            shown = (
                f"cuDNN {version}" if version else f"no cuDNN ({CUDNN_LABEL} / {CUDNN_ENV} absent)"
            )
            raise CudnnMismatch(
                f"{image} ({platform}) has {shown}, expected cuDNN major {expect_major}: refusing to "
                f"mirror it (services built on libcudnn.so.{expect_major} would break). Fix: pick the "
                f"cudnn{expect_major} tag, or pass --expect-cudnn {major or 0} if that is intended."
            )
    return found[0] if found else None


# ---------------------------------------------------------------- tasks


@task(name="resolve-source", retries=0, cache_policy=NO_CACHE)
async def resolve_source(
    client: RegistryClient, ref: ImageRef, platforms: list[str] | None
) -> ImagePlan:
    """Source tag -> digest (and the per-platform manifests). Retries (429/5xx with their
    Retry-After, resets, a body cut short) live in the client, within its retry budget."""
    plan = await plan_image(client, ref, platforms)
    get_run_logger().info(
        "%s resolves to %s (%s, %d image manifest(s))",
        ref,
        plan.upstream_digest,
        plan.top.media_type,
        len(plan.images),
    )
    return plan


@task(name="read-image-configs", retries=0, cache_policy=NO_CACHE)
async def read_configs(client: RegistryClient, plan: ImagePlan) -> dict[str, dict[str, Any]]:
    """The image configs (a few KB each), without pulling any layer; attestation manifests are
    not platforms and are not read (their config says unknown/unknown and carries no cuDNN)."""
    blobs = await asyncio.gather(
        *(client.read_blob(plan.source.repository, m.config()) for m in plan.images)
    )
    configs = [json.loads(b) for b in blobs]
    names = plan.platforms or [platform_of_config(c) or "image" for c in configs]
    return dict(zip(names, configs, strict=True))


@task(name="copy-image", retries=0, cache_policy=NO_CACHE)
async def copy_task(
    src: RegistryClient, plan: ImagePlan, dst: RegistryClient, dst_repo: str, concurrency: int
) -> CopyStats:
    """Blobs then manifests by digest; a progress artifact follows the bytes. No Prefect retries:
    transient failures are retried per request / per blob inside the client."""
    logger = get_run_logger()
    total = sum(d.size for d in plan.blobs()) or 1
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n

    artifact_id = await acreate_progress_artifact(
        0.0,
        description=f"Mirroring {plan.source} -> {dst.registry}/{dst_repo} ({total / 1e6:.1f} MB)",
    )
    copying = asyncio.create_task(
        copy_image(
            src, plan, dst, dst_repo, concurrency=concurrency, progress=on_bytes, logger=logger
        )
    )
    last = -1.0
    while not copying.done():
        await asyncio.wait({copying}, timeout=0.5)
        percent = round(min(100.0, 100.0 * done / total), 1)
        if percent != last and not copying.done():
            await aupdate_progress_artifact(artifact_id, percent)
            last = percent
    stats = copying.result()  # raises the copy's error, if any
    await aupdate_progress_artifact(artifact_id, 100.0)
    logger.info(
        "copied %d blob(s), skipped %d, mounted %d: %.1f MB in %.2fs",
        stats.blobs_copied,
        stats.blobs_skipped,
        stats.blobs_mounted,
        stats.bytes_copied / 1e6,
        stats.seconds,
    )
    return stats


@task(name="tag-destination", retries=0, cache_policy=NO_CACHE)
async def tag_task(
    dst: RegistryClient, dst_repo: str, plan: ImagePlan, tags: list[str]
) -> list[str]:
    moved = await tag_image(dst, dst_repo, plan.top, tags)
    get_run_logger().info(
        "tags %s now name %s (moved: %s)", ", ".join(tags), plan.top.digest, moved or "none"
    )
    return moved


# ---------------------------------------------------------------- stages
#
# The flow is a chain of stages; each takes what it needs and returns what it decided (a frozen
# dataclass, an ImagePlan, the result dict). Nothing is shared between them but their values.


@dataclass(frozen=True)
class MirrorTarget:
    """The parameters as references: what to copy, where to, and the destination tag."""

    source: ImageRef
    destination: ImageRef
    tag: str

    @property
    def repo(self) -> str:
        """The destination repository, without its registry host (the client's path)."""
        return self.destination.repository

    @property
    def name(self) -> str:
        """The destination repository with its registry host: what the pin is keyed by."""
        return self.destination.repo_name


@dataclass(frozen=True)
class KeptPin:
    """The run leaves the recorded pin as it is: the upstream is gone, or it drifted and the
    drift was not accepted. `upstream_digest` is what the source resolves to now (None: gone)."""

    status: str  # "upstream-gone" | "drift"
    message: str
    pin: dict[str, Any]
    upstream_digest: str | None = None


@dataclass(frozen=True)
class SourceFacts:
    """What the source's image configs say, after the platform and cuDNN gates passed."""

    cudnn: str | None
    cuda: str | None
    platforms: tuple[str, ...]  # sorted


@dataclass(frozen=True)
class Copied:
    """The copy at the destination: its statistics and the tags now naming it."""

    stats: CopyStats
    dated_tag: str
    tag: str

    @property
    def tags(self) -> list[str]:
        return [self.dated_tag, self.tag]


async def _credentials(
    docker_block: str | None, gcp_block: str | None = None
) -> RegistryCredentials | None:
    if gcp_block:
        return await credentials_from_gcp_block(gcp_block)
    if docker_block:
        return await credentials_from_docker_block(docker_block)
    return None


async def _default_destination() -> str:
    """The mirror's destination at run time: the Variable, else the build settings' default."""
    configured = await Variable.aget(DESTINATION_VARIABLE)
    if isinstance(configured, str) and configured:
        return configured
    try:
        return BuildSettings().resolved_base_repository()
    except BuildSettingsError:
        raise PermanentError(
            f"destination is empty and the Variable {DESTINATION_VARIABLE} is not set: pass "
            f"destination=REPOSITORY, or `prefect variable set {DESTINATION_VARIABLE} REPOSITORY` "
            "(on the sandbox, `shipyard setup` sets it)"
        ) from None


async def _target(source: str, destination: str) -> MirrorTarget:
    """The source and destination references (an empty destination: the configured one); the
    destination tag is the destination's own, else the source's (or its digest, as a tag)."""
    destination = destination or await _default_destination()
    src_ref = parse_reference(source, field="source")
    dst_ref = parse_reference(destination, field="destination")
    if dst_ref.digest:
        raise PermanentError(
            f"destination {destination!r} must be a repository (optionally :tag), not a digest"
        )
    if not (src_ref.tag or src_ref.digest):
        src_ref = ImageRef(src_ref.registry, src_ref.repository, "latest")
    tag = dst_ref.tag or src_ref.tag or (src_ref.digest or "").replace(":", "-")[:71]
    return MirrorTarget(src_ref, dst_ref, tag)


async def _upstream_gone(
    dst: RegistryClient, target: MirrorTarget, pin: dict[str, Any] | None, gone: NotFound
) -> KeptPin:
    """The source cannot be resolved: keep serving the pin, or fail plainly when there is none."""
    if not pin:
        raise NotFound(
            f"{target.source} cannot be resolved: {gone}. Fix: check the tag (NVIDIA removes old "
            "CUDA tags); nothing was mirrored and there is no pin to fall back on.",
            gone.registry,
            gone.code,
        ) from None
    logger = get_run_logger()
    served = await dst.manifest_digest(target.repo, pin["digest"])
    message = (
        f"Upstream {target.source} is gone ({gone.code}). Keeping the pinned mirror "
        f"{pin['image']} ({'still served' if served else 'MISSING at the destination!'})."
    )
    (logger.warning if served else logger.error)(message)
    return KeptPin("upstream-gone", message, pin)


async def _resolve(
    src: RegistryClient,
    dst: RegistryClient,
    target: MirrorTarget,
    platforms: list[str] | None,
    pin: dict[str, Any] | None,
    accept_drift: bool,
) -> ImagePlan | KeptPin:
    """The plan to copy, or the decision to keep the pin (upstream gone, drift not accepted)."""
    try:
        plan = await resolve_source(src, target.source, platforms)
    except NotFound as exc:
        return await _upstream_gone(dst, target, pin, exc)
    if pin and pin.get("source_digest") != plan.upstream_digest and not accept_drift:
        message = (
            f"Drift: {target.source} now resolves to {plan.upstream_digest}, the pin is "
            f"{pin.get('source_digest')} ({pin['image']}). Keeping the pin; rerun with "
            "--accept-drift (accept_drift=True) to mirror and pin the new digest."
        )
        get_run_logger().warning(message)
        return KeptPin("drift", message, pin, plan.upstream_digest)
    return plan


async def _inspect(
    src: RegistryClient,
    plan: ImagePlan,
    target: MirrorTarget,
    platforms: list[str] | None,
    expect_cudnn: int | None,
) -> SourceFacts:
    """Read the configs and pass the gates (platform of a single image, cuDNN major), before
    any byte moves."""
    configs = await read_configs(src, plan)
    if platforms and not plan.platforms:  # a single image: its config says what it is
        have = next(iter(configs))
        if not any(platform_matches(p, have) for p in platforms):
            raise PlatformNotFound(
                f"{target.source} is a single {have} image, not {', '.join(platforms)}: "
                "nothing copied"
            )
    cudnn = check_cudnn(configs, expect_cudnn, str(target.source))
    cuda = next((v for v in map(cuda_version, configs.values()) if v), None)
    get_run_logger().info("cuDNN %s, CUDA %s on %s", cudnn, cuda, ", ".join(configs))
    return SourceFacts(cudnn, cuda, tuple(sorted(configs)))


async def _dated_tag(
    dst: RegistryClient, repo: str, tag: str, digest: str, pin: dict[str, Any] | None
) -> str:
    """An immutable tag `<tag>-YYYYMMDD`; never moved: reuse the pin's, or suffix the digest."""
    pinned = pin.get("dated_tag") if pin else None
    if pin and pin.get("digest") == digest and isinstance(pinned, str) and pinned:
        return pinned
    base = f"{tag}-{datetime.now(UTC):%Y%m%d}"[:128]
    current = await dst.manifest_digest(repo, base)
    if current in (None, digest):
        return base
    return f"{tag[:107]}-{datetime.now(UTC):%Y%m%d}-{digest[7:19]}"


async def _copy(
    src: RegistryClient,
    dst: RegistryClient,
    plan: ImagePlan,
    target: MirrorTarget,
    pin: dict[str, Any] | None,
    concurrency: int,
) -> Copied:
    """Copy the image, then point the dated tag and the tag at it."""
    stats = await copy_task(src, plan, dst, target.repo, concurrency)
    dated = await _dated_tag(dst, target.repo, target.tag, plan.top.digest, pin)
    copied = Copied(stats, dated, target.tag)
    await tag_task(dst, target.repo, plan, copied.tags)
    return copied


def _pin_record(
    target: MirrorTarget, plan: ImagePlan, facts: SourceFacts, copied: Copied
) -> dict[str, Any]:
    """The pin's JSON (see the module docstring), recorded now."""
    return {
        "source": str(target.source),
        "source_digest": plan.upstream_digest,
        "destination": target.name,
        "digest": plan.top.digest,
        "image": f"{target.name}@{plan.top.digest}",
        "tag": copied.tag,
        "dated_tag": copied.dated_tag,
        "media_type": plan.top.media_type,
        "cudnn": facts.cudnn,
        "cuda": facts.cuda,
        "platforms": list(facts.platforms),
        "size": plan.size,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


async def _record_pin(
    target: MirrorTarget, record: dict[str, Any], previous: dict[str, Any] | None
) -> str:
    """Write the pin's Variable (a moved pin is a warning); returns the Variable's name."""
    variable = pin_variable_name(target.name)
    await Variable.aset(variable, record, overwrite=True)
    if previous and previous.get("digest") != record["digest"]:
        get_run_logger().warning(
            "pin moved from %s to %s (drift accepted)", previous.get("digest"), record["digest"]
        )
    return variable


def _kept_result(target: MirrorTarget, kept: KeptPin) -> dict[str, Any]:
    """The summary of a run that left the pin as it is: the pin's facts and why."""
    pin = kept.pin
    result: dict[str, Any] = {
        "source": str(target.source),
        "destination": target.name,
        "tags": [t for t in (pin.get("tag"), pin.get("dated_tag")) if t],
    }
    if kept.upstream_digest is not None:
        result["upstream_digest"] = kept.upstream_digest
    result.update(status=kept.status, message=kept.message, digest=pin["digest"])
    result.update({k: pin.get(k) for k in ("cudnn", "cuda", "size", "platforms")})
    result["pinned_source_digest"] = pin.get("source_digest")
    return result


def _mirrored_result(
    target: MirrorTarget,
    plan: ImagePlan,
    facts: SourceFacts,
    copied: Copied,
    variable: str,
    seconds: float,
) -> dict[str, Any]:
    """The summary of a run that mirrored and pinned the source."""
    stats = copied.stats
    return {
        "source": str(target.source),
        "destination": target.name,
        "tags": copied.tags,
        "upstream_digest": plan.upstream_digest,
        "status": "mirrored",
        "digest": plan.top.digest,
        "size": plan.size,
        "cudnn": facts.cudnn,
        "cuda": facts.cuda,
        "platforms": list(facts.platforms),
        "blobs_copied": stats.blobs_copied,
        "blobs_skipped": stats.blobs_skipped,
        "blobs_mounted": stats.blobs_mounted,
        "bytes_copied": stats.bytes_copied,
        "retries": stats.retries,
        "seconds": seconds,
        "pin_variable": variable,
    }


def _markdown(result: dict[str, Any]) -> str:
    rows = [
        ("status", result["status"]),
        ("source", result["source"]),
        ("upstream digest", result.get("upstream_digest") or "-"),
        ("destination", result["destination"]),
        ("pinned digest", result.get("digest") or "-"),
        ("tags", ", ".join(result.get("tags") or []) or "-"),
        ("size", f"{(result.get('size') or 0) / 1e6:.1f} MB"),
        ("cuDNN / CUDA", f"{result.get('cudnn') or '-'} / {result.get('cuda') or '-'}"),
        ("platforms", ", ".join(result.get("platforms") or []) or "single image"),
        (
            "blobs copied / skipped / mounted",
            "{} / {} / {}".format(
                result.get("blobs_copied", 0),
                result.get("blobs_skipped", 0),
                result.get("blobs_mounted", 0),
            ),
        ),
        ("bytes copied", f"{result.get('bytes_copied', 0):,}"),
        ("seconds", f"{result.get('seconds', 0):.2f}"),
    ]
    table = "\n".join(f"| {k} | `{v}` |" for k, v in rows)
    note = f"\n\n> {result['message']}\n" if result.get("message") else ""
    return f"## Base image mirror\n\n| | |\n| --- | --- |\n{table}{note}"


async def _publish(result: dict[str, Any]) -> dict[str, Any]:
    """The run's markdown artifact; returns the result, which the flow returns."""
    await acreate_markdown_artifact(
        _markdown(result), key=_artifact_key("mirror", result["destination"])
    )
    return result


# ---------------------------------------------------------------- flow


# No undo hook (flows/observe/undo_hooks.py): a mirror timed out, cancelled or crashed midway
# has pushed blobs (and per-platform manifests) by digest only, which no tag names and nothing
# reads; the destination tags move and the pin Variable is written only once the whole copy is
# there (`_copy`, then `_record_pin`), so the build keeps using the previous pin. The next run
# skips the blobs already there. It holds no lock or lease: its registry connections close with
# the run (`async with` on the way out, or with the process).
@flow(
    timeout_seconds=3600,  # bounded: a stuck run ends TimedOut
    name="mirror_base_image",
    **stage_hooks("mirror", resource_parameter="destination"),
)
async def mirror_base_image(
    source: str,
    destination: str = "",
    expect_cudnn: int | None = 8,
    platforms: list[str] | None = None,
    accept_drift: bool = False,
    source_credentials: str | None = None,
    destination_credentials: str | None = None,
    destination_gcp_credentials: str | None = None,
    concurrency: int = 4,
    retry_budget_seconds: float = DEFAULT_RETRY_BUDGET,
) -> dict[str, Any]:
    """Mirror `source` (e.g. nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04) into `destination`
    (a repository; a tag there replaces the source tag), pin it by digest, verify the cuDNN major.
    An empty destination is read when the run starts: the Variable `shipyard_base_mirror`, else
    the build settings' base repository (SHIPYARD_BASE_REPOSITORY / the registry's).

    expect_cudnn: the cuDNN major required (None or 0: no check). platforms: e.g. ["linux/amd64"]
    (default: all). *_credentials: names of DockerRegistryCredentials blocks;
    destination_gcp_credentials: a GcpCredentials block for Artifact Registry.
    retry_budget_seconds: how long each registry operation (a request, a blob) may keep retrying
    a busy or rate-limiting registry, waiting what its Retry-After asks (default five minutes).

    Returns a summary dict; `status` is "mirrored", "drift" (pin kept) or "upstream-gone".
    """
    started = time.monotonic()
    target = await _target(source, destination)
    pin = await aread_base_pin(target.name)
    src_creds = await _credentials(source_credentials)
    dst_creds = await _credentials(destination_credentials, destination_gcp_credentials)
    async with (
        RegistryClient.for_ref(target.source, src_creds, retry_budget=retry_budget_seconds) as src,
        RegistryClient.for_ref(
            target.destination, dst_creds, retry_budget=retry_budget_seconds
        ) as dst,
    ):
        src.want(target.source.repository, "pull")
        dst.want(target.repo, "pull,push")
        resolved = await _resolve(src, dst, target, platforms, pin, accept_drift)
        if isinstance(resolved, KeptPin):
            return await _publish(_kept_result(target, resolved))
        facts = await _inspect(src, resolved, target, platforms, expect_cudnn or None)
        copied = await _copy(src, dst, resolved, target, pin, concurrency)

    record = _pin_record(target, resolved, facts, copied)
    variable = await _record_pin(target, record, pin)
    seconds = round(time.monotonic() - started, 3)
    result = await _publish(_mirrored_result(target, resolved, facts, copied, variable, seconds))
    get_run_logger().info("pinned %s (dated tag %s)", record["image"], copied.dated_tag)
    return result
