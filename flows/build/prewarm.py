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
from pathlib import Path
from typing import cast

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTiers, parse_quarter_tag, quarter_of
from shipyard.blocks.cloud import GoogleCloud, default_cloud
from shipyard.flows.build.backend import BuildSpec, run_build
from shipyard.flows.build.cloud_build_request import REVISION_LABEL
from shipyard.flows.build.inputs import checkout_task, resolve_base_image
from shipyard.flows.build.tier_fingerprint import (
    FINGERPRINT_LABEL,
    TIER_LABEL,
    read_tier_files,
    stage_texts,
    tier_fingerprint,
)
from shipyard.flows.observe.stage_events import stage_hooks
from shipyard.tasks import image_lookup as il
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

    def action(self, tier: str) -> str:
        return next(t.action for t in self.tiers if t.tier == tier)


def load_blocks(
    settings_block: str | None,
    tiers_block: str | None,
    cloud_block: str | None,
    cloud: GoogleCloud | None = None,
) -> tuple[BuildSettings, CacheTiers, GoogleCloud]:
    """The blocks by name, else their defaults. `cloud`, when given, is used as is (a release
    builds with its target's cloud block); else the `cloud_block` name, else the environment."""
    # Block.load is sync-compatible: called from sync code it returns the block, not a coroutine
    settings = cast(BuildSettings, BuildSettings.load(settings_block)) if settings_block else None
    tiers = cast(CacheTiers, CacheTiers.load(tiers_block)) if tiers_block else None
    if cloud is None and cloud_block:
        cloud = cast(GoogleCloud, GoogleCloud.load(cloud_block))
    return settings or BuildSettings(), tiers or CacheTiers(), cloud or default_cloud()
    return settings, tiers, cloud


@task(name="read-cache-image", cache_policy=NO_CACHE, persist_result=False)
def read_image(repository: str, reference: str) -> il.ImageFacts | None:
    async def go():
        async with il.client_for(repository) as client:
            return await il.image_facts(client, repository, reference)

    return run_coro_as_sync(go())


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


@flow(
    timeout_seconds=3 * 3600,  # bounded: a stuck run ends TimedOut
    name="prewarm-cache-tiers",
    **stage_hooks("prewarm"),
)
def prewarm_cache_tiers(
    force: bool = False,
    revision: str = "HEAD",
    base_image: str | None = None,
    run_date: dt.date | None = None,
    settings_block: str | None = None,
    tiers_block: str | None = None,
    cloud_block: str | None = None,
) -> PrewarmResult:
    """Build the cache tiers that changed (all with `force`), tag the quarter, apply retention.

    `revision`: the git revision whose Dockerfile and files are prewarmed (default HEAD of the
    repository in the build settings). `base_image`: REPOSITORY@sha256:… (default: the mirror's
    pin). `run_date`: decides the quarter tag (default: today, UTC).
    """
    logger = get_run_logger()
    settings, tiers, cloud = load_blocks(settings_block, tiers_block, cloud_block)
    when = run_date or dt.datetime.now(dt.UTC).date()
    quarter = quarter_of(when)
    git_url = settings.resolved_git_url()
    base = resolve_base_image(base_image, settings)
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
    repo = tiers.cache_repository or settings.resolved_image_repository()
    results: list[TierResult] = []
    below: list[str] = []
    for i, tier in enumerate(tiers.tiers):
        started = time.monotonic()
        fingerprint = tier_fingerprint(
            stages[tier.target.lower()], prelude, base, below, files[tier.name]
        )
        below.append(fingerprint)
        tag = f"{repo}:{tiers.tag(tier)}"
        facts = read_image(repo, tiers.tag(tier))
        current = facts.labels.get(FINGERPRINT_LABEL) if facts else None
        build_id, report = None, None
        if facts is not None and current == fingerprint and not force:
            action = "skipped"
            logger.info("tier %s: %s already has fingerprint %s", tier.name, tag, fingerprint[:19])
        else:
            action = "built"
            logger.info(
                "tier %s: building --target %s (%s)",
                tier.name,
                tier.target,
                "forced" if force else ("new" if facts is None else "inputs changed"),
            )
            spec = BuildSpec(
                base_image=base,
                tags=[tag],
                cache_from=[f"{repo}:{tiers.tag(t)}" for t in tiers.tiers[: i + 1]],
                cache_to="type=inline",
                target=tier.target,
                labels={
                    FINGERPRINT_LABEL: fingerprint,
                    TIER_LABEL: tier.name,
                    REVISION_LABEL: commit,
                },
                dockerfile=tiers.dockerfile,
            )
            run = run_build(
                settings,
                cloud,
                spec,
                commit=commit,
                build_tags=["shipyard-prewarm", f"tier-{tier.name}"],
                what=f"prewarm {tier.name}",
            )
            build_id, report = run.build_id, run.report
            facts = read_image(repo, tiers.tag(tier))
            if facts is None or facts.labels.get(FINGERPRINT_LABEL) != fingerprint:
                raise PermanentError(
                    f"tier {tier.name}: build {run.build_id} succeeded but {tag} does not carry "
                    f"fingerprint {fingerprint[:19]}"
                )
        qtag = tiers.quarter_tag(tier, when)
        ensure_quarter_tag(repo, facts, qtag, quarter, action == "built")
        results.append(
            TierResult(
                tier=tier.name,
                target=tier.target,
                action=action,
                image=tag,
                digest=facts.digest,
                size=facts.size,
                fingerprint=fingerprint,
                seconds=round(time.monotonic() - started, 2),
                quarter_tag=qtag,
                build_id=build_id,
                steps_by_stage=report.by_stage() if report else {},
                hit_rate=round(report.hit_rate, 3) if report else None,
            )
        )
    deleted = apply_retention(repo, [t.name for t in tiers.tiers], tiers.quarterly_tags_to_keep)
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
    return PrewarmResult(
        quarter=quarter, commit=commit, base_image=base, tiers=results, deleted_tags=deleted
    )
