"""Build the release image of one commit, with the cache-tier chain, on the settings' backend.

`build_release_image(git_tag, commit)`:

1. Tags: the git tag (made a valid Docker tag: `/` → `-`) and `sha-<commit[:12]>`.
2. Reuse: when `sha-<commit12>` exists and its config label `org.opencontainers.image.revision`
   is the commit, nothing is built (invariant 4); a missing git tag is added to that manifest.
3. Otherwise one build (flows/build/backend.py: Cloud Build by default, or the Docker daemon of
   BuildSettings.docker_host). On Cloud Build, one request (flows/build/cloud_build_request.py): gitSource url + commit + dir (or a
   storageSource upload through prefect-gcp's GcsBucket), `docker buildx build --target runtime`
   with `--cache-from` every tier (`cache-base`, `cache-python`, `cache-node`) and
   `cache-builder`, `--cache-to` `cache-builder` only (mode=max), both tags, OCI labels,
   `BASE_IMAGE` = the mirror's pin by digest, machineType / diskSizeGb / timeout / Cloud Logging.
   A build of the commit still running (its release was killed mid-build) is followed instead.
4. Follow, fetch the log, parse CACHED vs RUN per step → hit rate. A failed build raises
   BuildFailedError with the failing step and the last log lines.
5. Digest from results.images, else (Google: buildx pushed, so results.images is empty) a HEAD of
   the commit tag. Pull bytes for a deploy host holding the previous release image: the size of
   the layers it does not have yet; a warning above `pull_warn_mb` (300 MB).
6. A table artifact of the steps and one of the summary; the image becomes the "previous image"
   of the next build (Prefect Variable `shipyard-last-build-<repository>`), unless the caller
   passes `previous_image` explicitly (the release flow knows the last good revision's image).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.variables import Variable
from pydantic import BaseModel

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cache_tiers import CacheTiers
from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.build.backend import run_build
from shipyard.flows.build.cloud_build_request import REVISION_LABEL
from shipyard.flows.build.cloud_build_run import BuildRun
from shipyard.flows.build.inputs import load_blocks, read_image, resolve_base_image
from shipyard.flows.build.spec import BuildSpec
from shipyard.flows.observe.stage_events import stage_hooks
from shipyard.flows.observe.undo_hooks import cancel_builds_hook, combined, undo_hooks
from shipyard.flows.observe.variables import set_variable
from shipyard.tasks import git_source as git
from shipyard.tasks import image_lookup as il
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.git_source import public_url

_TAG_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class StepRow(BaseModel):
    stage: str
    step: str
    instruction: str
    status: str
    seconds: float | None = None


class ReleaseImage(BaseModel):
    """What the release flow deploys: `image` is repository@digest."""

    image: str
    repository: str
    digest: str
    tags: list[str]
    git_tag: str
    commit: str
    reused: bool
    build_id: str | None = None
    seconds: float = 0.0
    cached_steps: int = 0
    run_steps: int = 0
    hit_rate: float = 0.0
    steps: list[StepRow] = []
    previous_image: str | None = None
    pull_bytes: int = 0
    pull_warning: str | None = None
    log_url: str | None = None


def docker_tag(git_tag: str) -> str:
    tag = git_tag.strip().replace("/", "-")
    if not _TAG_OK.match(tag):
        raise PermanentError(
            f"git_tag {git_tag!r} cannot be a Docker tag: use letters, digits, '_', '.', '-' "
            "(not starting with '.' or '-', at most 128 characters), e.g. v1.4.2"
        )
    return tag


def last_build_variable(repository: str) -> str:
    return (
        "shipyard-last-build-" + re.sub(r"[^a-z0-9_-]+", "-", repository.lower()).strip("-")[:200]
    )


@task(name="resolve-commit", cache_policy=NO_CACHE, persist_result=False)
def resolve_commit(url: str, commit: str) -> str:
    return git.resolve_revision(url, commit)


@task(name="add-tag", cache_policy=NO_CACHE, persist_result=False)
def add_tag(repository: str, facts: il.ImageFacts, tag: str) -> bool:
    async def go() -> bool:
        async with il.client_for(repository) as client:
            if await il.manifest_digest(client, repository, tag) == facts.digest:
                return False
            await il.put_tag(client, repository, facts.manifest, tag)
            return True

    return run_coro_as_sync(go())


# ---------------------------------------------------------------- stages
#
# The flow is a chain of stages; each takes what it needs and returns what it decided (a frozen
# dataclass, a BuildSpec, the ReleaseImage). Nothing is shared between them but their values.


@dataclass(frozen=True)
class BuildTarget:
    """The blocks and the commit the release image is built from, and where it goes."""

    settings: BuildSettings
    tiers: CacheTiers
    cloud: GoogleCloud
    repository: str
    cache_repository: str
    git_url: str
    git_tag: str
    tag: str  # the git tag as a Docker tag
    commit: str  # a full sha

    @property
    def commit_tag(self) -> str:
        return f"sha-{self.commit[:12]}"

    @property
    def tags(self) -> list[str]:
        return [self.tag, self.commit_tag]


@dataclass(frozen=True)
class Built:
    """A build that succeeded, and the image the registry serves under the commit tag."""

    run: BuildRun
    facts: il.ImageFacts


@dataclass(frozen=True)
class PullEstimate:
    """What a deploy host holding the previous image pulls for this one, and the warning when
    that is above BuildSettings.pull_warn_mb."""

    size: int  # bytes
    warning: str | None


def _target(
    git_tag: str,
    commit: str,
    settings_block: str | None,
    tiers_block: str | None,
    cloud_block: str | None,
    cloud: GoogleCloud | None,
) -> BuildTarget:
    """The blocks (or their defaults), the repositories, the Docker tag and the commit's sha."""
    settings, tiers, cloud = load_blocks(settings_block, tiers_block, cloud_block, cloud)
    repo = settings.resolved_image_repository()
    cache_repo = tiers.cache_repository or repo
    tag = docker_tag(git_tag)
    git_url = settings.resolved_git_url()
    return BuildTarget(
        settings=settings,
        tiers=tiers,
        cloud=cloud,
        repository=repo,
        cache_repository=cache_repo,
        git_url=git_url,
        git_tag=git_tag,
        tag=tag,
        commit=resolve_commit(git_url, commit),
    )


def _reuse(target: BuildTarget, previous_image: str | None) -> ReleaseImage | None:
    """The image already built for the commit (the git tag added to it), or None: build it."""
    repo, commit, commit_tag = target.repository, target.commit, target.commit_tag
    existing = read_image(repo, commit_tag)
    if existing is None or existing.labels.get(REVISION_LABEL) != commit:
        return None
    moved = add_tag(repo, existing, target.tag)
    get_run_logger().info(
        "%s:%s already holds commit %s (%s): reused, nothing built%s",
        repo,
        commit_tag,
        commit[:12],
        existing.digest,
        f"; tagged {target.tag}" if moved else "",
    )
    return ReleaseImage(
        image=existing.ref,
        repository=repo,
        digest=existing.digest,
        tags=target.tags,
        git_tag=target.git_tag,
        commit=commit,
        reused=True,
        previous_image=previous_image,
    )


def _last_build(variable: str) -> str | None:
    """The image this flow last built for the repository (the Variable), if any."""
    value = Variable.get(variable)
    return value if isinstance(value, str) else None


def _release_spec(target: BuildTarget, base: str) -> BuildSpec:
    """The release build: every tier and the builder cache as `cache-from`, the builder cache
    alone as `cache-to`, both tags, the OCI labels."""
    tiers, cache_repo = target.tiers, target.cache_repository
    return BuildSpec(
        base_image=base,
        tags=[f"{target.repository}:{t}" for t in target.tags],
        cache_from=[f"{cache_repo}:{tiers.tag(t)}" for t in tiers.tiers]
        + [f"{cache_repo}:{tiers.builder_cache_tag}"],
        cache_to=f"type=registry,ref={cache_repo}:{tiers.builder_cache_tag},mode=max",
        target=target.settings.release_target,
        labels={
            REVISION_LABEL: target.commit,
            "org.opencontainers.image.version": target.git_tag,
            "org.opencontainers.image.source": public_url(target.git_url),
        },
        dockerfile=tiers.dockerfile,
        context=".",
    )


def _build(target: BuildTarget, spec: BuildSpec, use_storage_source: bool) -> Built:
    """Run the build (or follow the one still running for the commit) and read what it pushed."""
    repo, commit_tag = target.repository, target.commit_tag
    run = run_build(
        target.settings,
        target.cloud,
        spec,
        commit=target.commit,
        build_tags=["shipyard-release", target.tag, commit_tag],
        adopt_tag=commit_tag,  # a killed run's build still going: follow it, not build twice
        what=f"release {target.tag}",
        use_storage_source=use_storage_source,
    )
    facts = read_image(repo, commit_tag)
    if facts is None:
        raise PermanentError(
            f"build {run.build_id} succeeded but {repo}:{commit_tag} is not in the registry: "
            "check that the build step pushes (--push) to this repository"
        )
    pushed = run.images.get(f"{repo}:{commit_tag}")
    if pushed and pushed != facts.digest:
        get_run_logger().warning(
            "results.images says %s, the registry serves %s", pushed, facts.digest
        )
    return Built(run, facts)


def _pull_bytes(new: il.ImageFacts, previous: il.ImageFacts | None) -> int:
    have = {digest for digest, _ in previous.layers} if previous else set()
    return sum(size for digest, size in new.layers if digest not in have)


def _pull(settings: BuildSettings, facts: il.ImageFacts, previous_ref: str | None) -> PullEstimate:
    """The layers of `facts` a deploy host holding `previous_ref` (repository@digest) lacks."""
    previous = (
        read_image(*previous_ref.split("@", 1)) if previous_ref and "@" in previous_ref else None
    )
    pull = _pull_bytes(facts, previous)
    warning = None
    if pull > settings.pull_warn_mb * 1_000_000:
        warning = (
            f"a deploy host with {previous_ref or 'no previous image'} must pull "
            f"{pull / 1e6:.0f} MB (> {settings.pull_warn_mb} MB): the dependency tiers changed "
            "or the base image is not shared"
        )
        get_run_logger().warning(warning)
    return PullEstimate(pull, warning)


def _built_result(
    target: BuildTarget,
    built: Built,
    pull: PullEstimate,
    previous_ref: str | None,
    seconds: float,
) -> ReleaseImage:
    run, facts, report = built.run, built.facts, built.run.report
    return ReleaseImage(
        image=facts.ref,
        repository=target.repository,
        digest=facts.digest,
        tags=target.tags,
        git_tag=target.git_tag,
        commit=target.commit,
        reused=False,
        build_id=run.build_id,
        seconds=seconds,
        cached_steps=report.cached,
        run_steps=report.run,
        hit_rate=round(report.hit_rate, 4),
        steps=[
            StepRow(
                stage=s.stage,
                step=f"{s.index}/{s.total}",
                instruction=s.instruction[:120],
                status=s.status,
                seconds=s.seconds,
            )
            for s in report.steps
        ],
        previous_image=previous_ref,
        pull_bytes=pull.size,
        pull_warning=pull.warning,
        log_url=run.log_url,
    )


# ---------------------------------------------------------------- flow


def _release_build_tag(parameters: dict[str, Any]) -> str | None:
    """The build tag of the run's Cloud Build: its git tag as a Docker tag (`_build`)."""
    git_tag = parameters.get("git_tag")
    return docker_tag(git_tag) if isinstance(git_tag, str) and git_tag else None


# Timed out, cancelled or crashed: its Cloud Build still running is cancelled (a Docker build
# stops with its connection). A build that ended on Cloud Build needs nothing: its image is
# reused by the next run, or nothing was pushed.
cancel_release_build = cancel_builds_hook(
    "build-release-image", _release_build_tag, since_start=False
)


@flow(
    timeout_seconds=2 * 3600,  # bounded: a stuck run ends TimedOut
    name="build-release-image",
    **combined(stage_hooks("build"), undo_hooks(cancel_release_build)),
)
def build_release_image(
    git_tag: str,
    commit: str,
    base_image: str | None = None,
    previous_image: str | None = None,
    use_storage_source: bool = False,
    settings_block: str | None = None,
    tiers_block: str | None = None,
    cloud_block: str | None = None,
    cloud: GoogleCloud | None = None,
) -> ReleaseImage:
    """The release image for `commit`, tagged `git_tag`: reused if it exists, else built.

    `commit`: a full sha (or a ref of the git repository, resolved to one). `base_image`:
    REPOSITORY@sha256:… (default: the mirror's pin). `previous_image`: what deploy hosts already
    have (default: the previous image this flow built for the repository). `cloud`: the
    GoogleCloud block to build with (a release passes its target's, so that one project and one
    identity build and deploy); default: the `cloud_block` name, else the environment.
    """
    target = _target(git_tag, commit, settings_block, tiers_block, cloud_block, cloud)
    reused = _reuse(target, previous_image)
    if reused is not None:
        _artifacts(reused)
        return reused

    base = resolve_base_image(base_image, target.settings)
    variable = last_build_variable(target.repository)
    previous_ref = previous_image or _last_build(variable)
    started = time.monotonic()
    built = _build(target, _release_spec(target, base), use_storage_source)
    pull = _pull(target.settings, built.facts, previous_ref)
    result = _built_result(target, built, pull, previous_ref, round(time.monotonic() - started, 2))
    set_variable(variable, built.facts.ref)
    _artifacts(result)
    return result


def _artifacts(result: ReleaseImage) -> None:
    key = "build-" + re.sub(r"[^a-z0-9-]+", "-", result.git_tag.lower()).strip("-")[:100]
    create_table_artifact(
        key=key + "-summary",
        table=[
            {
                "image": result.image,
                "tags": ", ".join(result.tags),
                "reused": result.reused,
                "build": result.build_id or "-",
                "seconds": result.seconds,
                "CACHED": result.cached_steps,
                "RUN": result.run_steps,
                "hit rate": f"{100 * result.hit_rate:.0f}%",
                "pull MB": round(result.pull_bytes / 1e6, 1),
            }
        ],
        description=result.pull_warning or f"Release image for {result.git_tag}",
    )
    if result.steps:
        create_table_artifact(
            key=key + "-steps",
            table=[s.model_dump() for s in result.steps],
            description=f"BuildKit steps of build {result.build_id}: CACHED vs RUN",
        )
