"""Prewarm the cache tiers: `cache-base → cache-python → cache-node`, weekly.

Per tier, bottom up: a fingerprint from the stage's Dockerfile text (comments ignored), the
global ARGs, the base image digest, the fingerprints of the tiers below and the content of the
tier's files. The tier's cache image `cache-<tier>` carries the fingerprint it was built from in
the label `dev.shipyard.cache.fingerprint`; equal fingerprint → skipped (unless `force`).
Otherwise the build backend (Cloud Build, or a Docker daemon: flows/build/backend.py) builds
`--target <stage>` with `--cache-from` every tier up to this one and
an inline cache (`--cache-to type=inline`: the image itself is the cache, so one push serves as
both the tier image and its cache), labelled with the fingerprint, pushed as `cache-<tier>`.

Quarterly tags: `cache-<tier>-<YYYYQn>`, the quarter taken from the run date, point at a copy of
the tier's manifest with the annotation `dev.shipyard.cache.quarter` — a manifest of its own,
because the distribution API deletes manifests by digest only (deleting a shared digest would
also remove `cache-<tier>`). A tier rebuilt within a quarter moves that quarter's tag; a skipped
tier gets the tag if the quarter has none yet. Tags older than the newest
`quarterly_tags_to_keep` quarters are deleted (by digest), never one a kept tag still uses.

Returns a `PrewarmResult` and publishes a table artifact (tier, built/skipped, digest, size,
hit rate of a built tier's steps, fingerprint, seconds).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTier, CacheTiers, parse_quarter_tag, quarter_of
from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.build.backend import run_build
from shipyard.flows.build.cloud_build_request import REVISION_LABEL
from shipyard.flows.build.inputs import checkout_task, load_blocks, read_image, resolve_base_image
from shipyard.flows.build.spec import BuildSpec
from shipyard.flows.build.tier_fingerprint import (
    FINGERPRINT_LABEL,
    TIER_LABEL,
    read_tier_files,
    stage_texts,
    tier_fingerprint,
)
from shipyard.flows.observe.stage_events import stage_hooks
from shipyard.flows.observe.undo_hooks import cancel_builds_hook, combined, undo_hooks
from shipyard.tasks import image_lookup as il
from shipyard.tasks.buildkit_log import BuildLogReport
from shipyard.tasks.dockerfile import DockerfileError
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.git_source import public_url

QUARTER_ANNOTATION = "dev.shipyard.cache.quarter"


class TierResult(BaseModel):
    tier: str
    target: str
    action: str  # "built" | "skipped"
    image: str  # cache repository:cache-<tier>
    digest: str
    size: int
    fingerprint: str
    seconds: float
    quarter_tag: str
    build_id: str | None = None
    # A built tier's steps per Dockerfile stage, {"CACHED": n, "RUN": n, "ERROR": n}, from the
    # build's own BuildKit log (either backend): which stages really ran.
    steps_by_stage: dict[str, dict[str, int]] = {}
    hit_rate: float | None = None


class PrewarmResult(BaseModel):
    quarter: str
    commit: str
    base_image: str
    tiers: list[TierResult]
    deleted_tags: list[str]


@task(name="quarter-tag", cache_policy=NO_CACHE, persist_result=False)
def ensure_quarter_tag(
    repository: str, facts: il.ImageFacts, tag: str, quarter: str, move: bool
) -> str:
    """Create (or, when `move`, re-point) a quarterly tag; returns its digest."""

    async def go() -> str:
        async with il.client_for(repository) as client:
            current = await il.manifest_digest(client, repository, tag)
            if current and not move:
                return current
            return await il.tag_variant(
                client, repository, facts.manifest, tag, (QUARTER_ANNOTATION, quarter)
            )

    return run_coro_as_sync(go())


@task(name="quarterly-retention", cache_policy=NO_CACHE, persist_result=False)
def apply_retention(repository: str, tier_names: list[str], keep: int) -> list[str]:
    """Delete quarterly tags beyond the newest `keep` per tier; returns the deleted tags."""
    logger = get_run_logger()

    async def go() -> list[str]:
        deleted: list[str] = []
        async with il.client_for(repository) as client:
            tags = await il.list_tags(client, repository)
            for tier in tier_names:
                quarterly = sorted(
                    (
                        (year, q, tag)
                        for tag in tags
                        if (parsed := parse_quarter_tag(tag)) and parsed[0] == tier
                        for _, year, q in [parsed]
                    ),
                    reverse=True,
                )
                kept, old = quarterly[:keep], quarterly[keep:]
                protected = {
                    await il.manifest_digest(client, repository, t)
                    for t in [f"cache-{tier}", *(tag for _, _, tag in kept)]
                }
                for _, _, tag in old:
                    digest = await il.manifest_digest(client, repository, tag)
                    if digest is None:
                        continue
                    if digest in protected:
                        logger.warning(
                            "not deleting %s: its manifest %s is also a kept tag's", tag, digest
                        )
                        continue
                    _, path = il.split_repository(repository)
                    await client.delete_manifest(path, digest)
                    deleted.append(tag)
                    logger.info(
                        "deleted %s:%s (%s), beyond the newest %d", repository, tag, digest, keep
                    )
        return deleted

    return run_coro_as_sync(go())


# ---------------------------------------------------------------- stages
#
# The flow is a chain of stages; each takes what it needs and returns what it decided (a frozen
# dataclass, a TierResult, the deleted tags). Nothing is shared between them but their values.


@dataclass(frozen=True)
class TierSources:
    """What the tiers are built from, read from one checkout of the revision."""

    commit: str
    prelude: str  # the Dockerfile's lines before the first FROM (global ARGs)
    stages: dict[str, str]  # stage name -> its text (stage_texts)
    files: dict[str, dict[str, bytes]]  # tier name -> {file name: content}


@dataclass(frozen=True)
class TierBuild:
    """A tier's cache image after this run: built (with its build's id and report) or kept."""

    action: str  # "built" | "skipped"
    facts: il.ImageFacts
    build_id: str | None = None
    report: BuildLogReport | None = None


def _read_sources(
    settings: BuildSettings, tiers: CacheTiers, git_url: str, revision: str
) -> TierSources:
    """Check out the revision, read its Dockerfile's stages and the tiers' files, clean up; every
    tier's target must be a stage of that Dockerfile."""
    root, commit = checkout_task(git_url, revision)
    try:
        context = Path(root) / settings.source_dir
        dockerfile = context / tiers.dockerfile
        if not dockerfile.is_file():
            raise PermanentError(
                f"CacheTiers.dockerfile {tiers.dockerfile!r} is not in {settings.source_dir!r} of "
                f"{public_url(git_url)} at {commit[:12]}"
            )
        try:
            prelude, stages = stage_texts(dockerfile.read_text())
        except DockerfileError as exc:
            raise PermanentError(f"CacheTiers.dockerfile {tiers.dockerfile!r}: {exc}") from None
        files = {t.name: read_tier_files(context, t.files, t.name) for t in tiers.tiers}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    missing = [t.target for t in tiers.tiers if t.target.lower() not in stages]
    if missing:
        raise PermanentError(
            f"CacheTiers: stage(s) {', '.join(missing)} are not in {tiers.dockerfile}; its stages "
            f"are {', '.join(stages)}. Fix the tiers' `target`."
        )
    return TierSources(commit, prelude, stages, files)


def _fingerprints(tiers: CacheTiers, sources: TierSources, base: str) -> list[str]:
    """Each tier's fingerprint, bottom up: a tier's covers the fingerprints of those below."""
    below: list[str] = []
    for tier in tiers.tiers:
        stage = sources.stages[tier.target.lower()]
        below.append(
            tier_fingerprint(stage, sources.prelude, base, below, sources.files[tier.name])
        )
    return below


@dataclass(frozen=True)
class TierBuilder:
    """What every tier's check and build share: the blocks, the cache repository, the base
    image and the commit."""

    settings: BuildSettings
    cloud: GoogleCloud
    tiers: CacheTiers
    repo: str
    base: str
    commit: str

    def image(self, tier: CacheTier) -> str:
        """The tier's cache image, repository:cache-<tier>."""
        return f"{self.repo}:{self.tiers.tag(tier)}"


def _build_tier(builder: TierBuilder, index: int, fingerprint: str) -> TierBuild:
    """Build tier `index` (`--target` its stage, `cache-from` every tier up to it, an inline
    cache), labelled with its fingerprint; the pushed image must carry that fingerprint."""
    tiers, tier = builder.tiers, builder.tiers.tiers[index]
    tag = builder.image(tier)
    spec = BuildSpec(
        base_image=builder.base,
        tags=[tag],
        cache_from=[builder.image(t) for t in tiers.tiers[: index + 1]],
        cache_to="type=inline",
        target=tier.target,
        labels={
            FINGERPRINT_LABEL: fingerprint,
            TIER_LABEL: tier.name,
            REVISION_LABEL: builder.commit,
        },
        dockerfile=tiers.dockerfile,
    )
    run = run_build(
        builder.settings,
        builder.cloud,
        spec,
        commit=builder.commit,
        build_tags=["shipyard-prewarm", f"tier-{tier.name}"],
        what=f"prewarm {tier.name}",
    )
    facts = read_image(builder.repo, tiers.tag(tier))
    if facts is None or facts.labels.get(FINGERPRINT_LABEL) != fingerprint:
        raise PermanentError(
            f"tier {tier.name}: build {run.build_id} succeeded but {tag} does not carry "
            f"fingerprint {fingerprint[:19]}"
        )
    return TierBuild("built", facts, run.build_id, run.report)


def _prewarm_tier(builder: TierBuilder, index: int, fingerprint: str, force: bool) -> TierBuild:
    """Skip the tier when its cache image already carries `fingerprint` (and not `force`),
    else build it."""
    tier = builder.tiers.tiers[index]
    facts = read_image(builder.repo, builder.tiers.tag(tier))
    current = facts.labels.get(FINGERPRINT_LABEL) if facts else None
    if facts is not None and current == fingerprint and not force:
        get_run_logger().info(
            "tier %s: %s already has fingerprint %s",
            tier.name,
            builder.image(tier),
            fingerprint[:19],
        )
        return TierBuild("skipped", facts)
    get_run_logger().info(
        "tier %s: building --target %s (%s)",
        tier.name,
        tier.target,
        "forced" if force else ("new" if facts is None else "inputs changed"),
    )
    return _build_tier(builder, index, fingerprint)


def _tier_result(
    tier: CacheTier,
    image: str,
    fingerprint: str,
    quarter_tag: str,
    outcome: TierBuild,
    seconds: float,
) -> TierResult:
    report = outcome.report
    return TierResult(
        tier=tier.name,
        target=tier.target,
        action=outcome.action,
        image=image,
        digest=outcome.facts.digest,
        size=outcome.facts.size,
        fingerprint=fingerprint,
        seconds=seconds,
        quarter_tag=quarter_tag,
        build_id=outcome.build_id,
        steps_by_stage=report.by_stage() if report else {},
        hit_rate=round(report.hit_rate, 3) if report else None,
    )


def _artifact(
    results: list[TierResult], repo: str, quarter: str, commit: str, deleted: list[str]
) -> None:
    create_table_artifact(
        key="prewarm-cache-tiers",
        table=[
            {
                "tier": r.tier,
                "action": r.action,
                "digest": r.digest,
                "size": r.size,
                "hit_rate": "" if r.hit_rate is None else f"{100 * r.hit_rate:.0f}%",
                "fingerprint": r.fingerprint[:19],
                "seconds": r.seconds,
            }
            for r in results
        ],
        description=(
            f"Cache tiers in {repo}, quarter {quarter}, commit {commit[:12]}. "
            + (f"Deleted quarterly tags: {', '.join(deleted)}." if deleted else "No tag deleted.")
        ),
    )


def _blocks(
    settings_block: str | None,
    tiers_block: str | None,
    cloud_block: str | None,
    target: str | None,
) -> tuple[BuildSettings, CacheTiers, GoogleCloud]:
    """The blocks by name; those not named come from the release target `target`, if any."""
    cloud = None
    if target:
        from shipyard.blocks.release_target import ReleaseTarget

        try:
            release_target = cast(ReleaseTarget, ReleaseTarget.load(target))
        except ValueError:
            raise PermanentError(
                f"prewarm target={target!r}: no ReleaseTarget block of that name; run "
                "`shipyard setup` (or `shipyard init` in the service's repository), or give "
                "settings_block and tiers_block"
            ) from None
        settings_block = settings_block or release_target.build_settings_block
        tiers_block = tiers_block or release_target.build_tiers_block
        cloud = None if cloud_block else release_target.cloud
    return load_blocks(settings_block, tiers_block, cloud_block, cloud)


# ---------------------------------------------------------------- flow


@flow(
    timeout_seconds=3 * 3600,  # bounded: a stuck run ends TimedOut
    name="prewarm-cache-tiers",
    # Timed out, cancelled or crashed: the tier's Cloud Build still running is cancelled (every
    # tier's build carries the tag `shipyard-prewarm`, see _build_tier; only this run's, those
    # created since it started). Tiers already pushed stay: each is a complete cache image.
    **combined(
        stage_hooks("prewarm"),
        undo_hooks(
            cancel_builds_hook(
                "prewarm-cache-tiers", lambda _: "shipyard-prewarm", since_start=True
            )
        ),
    ),
)
def prewarm_cache_tiers(
    force: bool = False,
    revision: str = "HEAD",
    base_image: str | None = None,
    run_date: dt.date | None = None,
    settings_block: str | None = None,
    tiers_block: str | None = None,
    cloud_block: str | None = None,
    target: str | None = None,
) -> PrewarmResult:
    """Build the cache tiers that changed (all with `force`), tag the quarter, apply retention.

    `revision`: the git revision whose Dockerfile and files are prewarmed (default HEAD of the
    repository in the build settings). `base_image`: REPOSITORY@sha256:… (default: the mirror's
    pin). `run_date`: decides the quarter tag (default: today, UTC). `target`: a ReleaseTarget
    block (`default` is the one `shipyard setup` / `shipyard init` make): its cloud, build
    settings and cache tiers, the ones its releases build with; `settings_block`, `tiers_block`
    and `cloud_block` override them one by one.
    """
    settings, tiers, cloud = _blocks(settings_block, tiers_block, cloud_block, target)
    when = run_date or dt.datetime.now(dt.UTC).date()
    quarter = quarter_of(when)
    git_url = settings.resolved_git_url()
    base = resolve_base_image(base_image, settings)
    sources = _read_sources(settings, tiers, git_url, revision)
    commit = sources.commit
    repo = tiers.cache_repository or settings.resolved_image_repository()
    builder = TierBuilder(settings, cloud, tiers, repo, base, commit)
    fingerprints = _fingerprints(tiers, sources, base)
    results: list[TierResult] = []
    for index, (tier, fingerprint) in enumerate(zip(tiers.tiers, fingerprints, strict=True)):
        started = time.monotonic()
        outcome = _prewarm_tier(builder, index, fingerprint, force)
        qtag = tiers.quarter_tag(tier, when)
        ensure_quarter_tag(repo, outcome.facts, qtag, quarter, outcome.action == "built")
        seconds = round(time.monotonic() - started, 2)
        results.append(_tier_result(tier, builder.image(tier), fingerprint, qtag, outcome, seconds))
    deleted = apply_retention(repo, [t.name for t in tiers.tiers], tiers.quarterly_tags_to_keep)
    _artifact(results, repo, quarter, commit, deleted)
    return PrewarmResult(
        quarter=quarter, commit=commit, base_image=base, tiers=results, deleted_tags=deleted
    )
