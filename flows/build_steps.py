"""What the prewarm and the release build share: the Cloud Build request, its run, the base pin.

- `buildx_args` / `build_request`: a Cloud Build v1 request that runs on Google unchanged —
  `gitSource {url, revision, dir}` (or `storageSource`), step 0 creates a docker-container
  builder (registry cache export needs it; the default docker driver refuses `--cache-to
  type=registry`), step 1 `docker buildx build` with the cache chain, `--provenance=false` (one
  image manifest, not an index with an attestation), `--push`; options machineType, diskSizeGb,
  logging CLOUD_LOGGING_ONLY; a timeout; Cloud Build tags for finding builds later.
- `run_cloud_build`: submit (retried on transient errors only), follow with fast polling and
  progress logs, fetch the log from Cloud Logging, parse CACHED vs RUN. A build that did not
  succeed raises `BuildFailedError` naming the Cloud Build step, the Dockerfile step, the error
  and the last log lines.
- `resolve_base_image`: the `BASE_IMAGE` build arg, by digest: an explicit parameter, else the pin
  the mirror flow recorded for the base repository (`flows.mirror.read_base_pin`).
- Dockerfile stage texts and tier fingerprints.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from google.cloud.devtools import cloudbuild_v1
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.asyncutils import run_coro_as_sync

from blocks.build_settings import BuildSettings
from blocks.cloud import GoogleCloud
from tasks import cloud_build as cb
from tasks import git_source as gitsrc
from tasks.buildkit_log import BuildLogReport, parse_buildkit_log
from tasks.errors import PermanentError, is_transient

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
FINGERPRINT_LABEL = "dev.shipyard.cache.fingerprint"
TIER_LABEL = "dev.shipyard.cache.tier"
REVISION_LABEL = "org.opencontainers.image.revision"
_DIGEST_REF = re.compile(r"@sha256:[0-9a-f]{64}$")


class BuildFailedError(PermanentError):
    """A Cloud Build build ended without SUCCESS (or was refused)."""

    def __init__(self, message: str, *, build_id: str = "", step: str = "", detail: str = ""):
        super().__init__(message)
        self.build_id, self.step, self.detail = build_id, step, detail


def sync(coro):
    """Run a registry coroutine from a sync flow/task (whether or not a loop is running)."""
    return run_coro_as_sync(coro)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # the task's exception
        return is_transient(exc)
    return False


def public_url(url: str) -> str:
    """A URL without user:password@ (labels and logs must never carry a secret)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


# ---------------------------------------------------------------- Dockerfile stages


def stage_texts(dockerfile: str) -> tuple[str, dict[str, str]]:
    """(prelude, {stage name: text}) with comments and blank lines dropped (they change nothing
    BuildKit caches). Stages without a name are keyed by their index."""
    prelude: list[str] = []
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    index = 0
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0].upper() == "FROM" and (current is None or not _continued(current)):
            name = words[3].lower() if len(words) >= 4 and words[2].lower() == "as" else str(index)
            current = stages.setdefault(name, [])
            index += 1
        (prelude if current is None else current).append(line)
    return "\n".join(prelude), {k: "\n".join(v) for k, v in stages.items()}


def _continued(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].endswith("\\")


def tier_fingerprint(
    stage_text: str, prelude: str, base_image: str, below: list[str], files: dict[str, bytes]
) -> str:
    """sha256 over the stage's Dockerfile text, the global ARGs, the base image, the tiers
    below and the content of the tier's files (by name)."""
    h = hashlib.sha256()
    for part in (prelude, stage_text, base_image, *below):
        h.update(part.encode() + b"\0")
    for name in sorted(files):
        h.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\0".encode())
    return "sha256:" + h.hexdigest()


def read_tier_files(context: Path, names: list[str], tier: str) -> dict[str, bytes]:
    out = {}
    for name in names:
        path = context / name
        if not path.is_file():
            raise PermanentError(
                f"cache tier {tier!r}: file {name!r} is not in the build context {context}; fix "
                "the CacheTiers block's `files` for this tier"
            )
        out[name] = path.read_bytes()
    return out


# ---------------------------------------------------------------- the request


def buildx_args(
    *,
    base_image: str,
    tags: list[str],
    cache_from: list[str],
    cache_to: str,
    target: str,
    labels: dict[str, str],
    dockerfile: str = "Dockerfile",
    context: str = ".",
) -> list[str]:
    args = ["buildx", "build", "--progress=plain", "--provenance=false", "--file", dockerfile]
    args += ["--target", target, "--build-arg", f"BASE_IMAGE={base_image}"]
    for ref in cache_from:
        args += ["--cache-from", f"type=registry,ref={ref}"]
    args += ["--cache-to", cache_to]
    for tag in tags:
        args += ["--tag", tag]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return [*args, "--push", context]


def build_request(
    settings: BuildSettings,
    *,
    source: dict[str, Any],
    args: list[str],
    build_tags: list[str],
) -> cloudbuild_v1.Build:
    settings.check()
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(**source),
        steps=[
            cloudbuild_v1.BuildStep(
                name=DOCKER_BUILDER,
                id="builder",
                args=["buildx", "create", "--name", "shipyard", "--driver", "docker-container"]
                + ["--bootstrap", "--use"],
            ),
            cloudbuild_v1.BuildStep(name=DOCKER_BUILDER, id="build", args=args),
        ],
        options=cloudbuild_v1.BuildOptions(
            machine_type=cloudbuild_v1.BuildOptions.MachineType[settings.machine_type],
            disk_size_gb=settings.disk_size_gb,
            logging=cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
        ),
        timeout={"seconds": settings.timeout_s},
        tags=[re.sub(r"[^a-zA-Z0-9_.-]", "_", t)[:128] for t in build_tags],
    )


def git_source(settings: BuildSettings, revision: str) -> dict[str, Any]:
    return {
        "git_source": cloudbuild_v1.GitSource(
            url=settings.resolved_git_url(), revision=revision, dir=settings.source_dir
        )
    }


# ---------------------------------------------------------------- running it


@dataclass
class BuildRun:
    build_id: str
    status: str
    images: dict[str, str]  # name -> digest (results.images; empty when buildx pushed itself)
    seconds: float
    log_url: str
    report: BuildLogReport
    tail: list[str] = field(default_factory=list)


@task(
    name="cloud-build-submit",
    retries=3,
    retry_delay_seconds=[0.5, 1, 2],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def submit_task(cloud: GoogleCloud, request: cloudbuild_v1.Build) -> str:
    client = cloud.builds_client()
    try:
        build = cb.submit_build(client, cloud.resolved_project(), request)
    except Exception as exc:
        if is_transient(exc):
            raise
        raise BuildFailedError(f"Cloud Build refused the build request: {exc}") from None
    return build.id


@task(name="cloud-build-follow", cache_policy=NO_CACHE, persist_result=False)
def follow_task(cloud: GoogleCloud, build_id: str, timeout_s: float, poll_s: float) -> dict:
    logger = get_run_logger()
    client = cloud.builds_client()
    project = cloud.resolved_project()

    def read(bid: str) -> cloudbuild_v1.Build:
        for attempt in range(1, 6):
            try:
                return cb.get_build(client, project, bid)
            except Exception as exc:
                if not is_transient(exc) or attempt == 5:
                    raise
                time.sleep(min(2.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")

    def changed(build: cloudbuild_v1.Build) -> None:
        logger.info("build %s: %s", build.id, build.status.name)

    build = cb.wait_build(
        client, project, build_id, timeout_s=timeout_s, poll_s=poll_s, on_change=changed, get=read
    )
    return {
        "status": build.status.name,
        "status_detail": build.status_detail,
        "failure": build.failure_info.detail if build.failure_info else "",
        "images": {i.name: i.digest for i in build.results.images},
        "log_url": build.log_url,
        "seconds": (
            (build.finish_time - build.start_time).total_seconds()
            if build.start_time and build.finish_time
            else 0.0
        ),
    }


@task(
    name="cloud-build-log",
    retries=3,
    retry_delay_seconds=[0.5, 1, 2],
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def log_task(cloud: GoogleCloud, build_id: str) -> list[str]:
    return cb.fetch_build_log(cloud.logging_client(), cloud.resolved_project(), build_id)


def run_cloud_build(
    cloud: GoogleCloud, settings: BuildSettings, request: cloudbuild_v1.Build, what: str
) -> BuildRun:
    """Submit, follow, read the log; raise BuildFailedError unless the build succeeded."""
    logger = get_run_logger()
    started = time.monotonic()
    build_id = submit_task(cloud, request)
    logger.info("%s: submitted Cloud Build %s", what, build_id)
    final = follow_task(cloud, build_id, settings.timeout_s + 120, settings.poll_s)
    lines = log_task(cloud, build_id)
    report = parse_buildkit_log(lines)
    run = BuildRun(
        build_id,
        final["status"],
        final["images"],
        final["seconds"] or round(time.monotonic() - started, 3),
        final["log_url"],
        report,
        [line for line in lines if line.strip()][-15:],
    )
    logger.info(
        "%s: build %s %s in %.1fs; steps CACHED %d, RUN %d (hit rate %.0f%%)",
        what,
        build_id,
        run.status,
        run.seconds,
        report.cached,
        report.run,
        100 * report.hit_rate,
    )
    if run.status != "SUCCESS":
        failed = report.failed_step
        step = failed.name if failed else ""
        error = (failed.error if failed else None) or report.error
        if not error and final["failure"] != final["status_detail"]:
            error = final["failure"]
        if failed is not None and failed.output:
            error = (error or "") + " (step output: " + " | ".join(list(failed.output)[-3:]) + ")"
        tail = "\n".join(run.tail)
        raise BuildFailedError(
            f"{what}: Cloud Build {build_id} ended {run.status}: {final['status_detail']}"
            + (f"; failing step {step}" if step else "")
            + (f": {error}" if error else "")
            + f"\nlast log lines:\n{tail}",
            build_id=build_id,
            step=step,
            detail=error or final["status_detail"],
        )
    return run


# ---------------------------------------------------------------- sources and base image


@task(
    name="git-checkout",
    retries=2,
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def checkout_task(url: str, revision: str) -> tuple[str, str]:
    root, commit = gitsrc.checkout(url, revision)
    return str(root), commit


@task(name="resolve-base-image", cache_policy=NO_CACHE, persist_result=False)
def resolve_base_image(base_image: str | None, settings: BuildSettings) -> str:
    """`repo@sha256:…`: the parameter if given (must be by digest), else the mirror's pin."""
    if base_image:
        if not _DIGEST_REF.search(base_image):
            raise PermanentError(
                f"base_image {base_image!r} is not pinned by digest: give REPOSITORY@sha256:… "
                "(tags move and NVIDIA deletes old CUDA tags), or leave it empty to use the "
                "mirror's pin"
            )
        return base_image
    from flows.mirror import read_base_pin

    repository = settings.resolved_base_repository()
    pin = read_base_pin(repository)
    if not pin or not pin.get("image"):
        raise PermanentError(
            f"no base image pin is recorded for {repository}: run `shipyard mirror "
            f"nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04 {repository}` first, or pass "
            "base_image=REPOSITORY@sha256:…"
        )
    return pin["image"]
