"""Run one build on a Docker daemon (BuildSettings.backend = "docker"), the way Cloud Build would.

The same inputs as a Cloud Build request (flows/build/spec.py's BuildSpec), translated for a
daemon's BuildKit:

| Cloud Build step (buildx, docker-container driver) | Docker daemon (Engine API, BuildKit) |
| --- | --- |
| `gitSource {url, revision, dir}` | a checkout of that commit; `dir` is the context |
| `--cache-from type=registry,ref=R` | `cachefrom R`: R carries an inline cache |
| `--cache-to type=inline` | build arg `BUILDKIT_INLINE_CACHE=1` |
| `--cache-to type=registry,ref=R,mode=max` | R is also a tag of the built image (inline cache), pushed |
| `--push` of every `--tag` | `docker push` of every tag with DockerRegistryCredentials |
| `options.diskSizeGb` | a check: the daemon's data root has `min_free_disk_gb` free |

The log is BuildKit's plain progress, so the CACHED vs RUN report and the hit rate come from
the same parser as Cloud Build's log; a failing step raises BuildFailedError with its output.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from shipyard.blocks.build_settings import BuildSettings
from shipyard.flows.build.build_ticker import BuildTicker
from shipyard.flows.build.cloud_build_run import RETRIED_READ, BuildFailedError, BuildRun
from shipyard.flows.build.spec import BuildSpec
from shipyard.tasks import docker_daemon as dd
from shipyard.tasks import git_source as git
from shipyard.tasks.buildkit_log import parse_buildkit_log
from shipyard.tasks.errors import PermanentError

GB = 1_000_000_000


class DiskSpaceError(PermanentError):
    """The daemon's data root has less free space than BuildSettings.min_free_disk_gb."""


def _figure(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


@task(name="docker-disk-check", cache_policy=NO_CACHE, persist_result=False)
def check_disk(settings: BuildSettings, probe_image: str) -> dd.DataRoot:
    with settings.docker_client_host().get_client() as client:
        root = dd.data_root_free(client, probe_image)
        url = dd.daemon_url(client)
    need = settings.min_free_disk_gb * GB
    if root.free_bytes < need:
        raise DiskSpaceError(
            f"the Docker daemon {url} has {root.free_bytes / GB:.1f} GB free on its data root "
            f"{root.path} (docker info: DockerRootDir), below BuildSettings.min_free_disk_gb = "
            f"{_figure(settings.min_free_disk_gb)} GB: free space there (`docker system prune`, "
            "`docker builder prune`) or give the daemon a larger disk; lower min_free_disk_gb "
            "only for small images"
        )
    get_run_logger().info(
        "Docker daemon %s: %.1f GB free on %s (min %g GB)",
        url,
        root.free_bytes / GB,
        root.path,
        settings.min_free_disk_gb,
    )
    return root


def _registry_ref(spec: str) -> str | None:
    parts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    return parts.get("ref") if parts.get("type") == "registry" else None


@task(name="docker-build", cache_policy=NO_CACHE, persist_result=False)
def build_task(settings: BuildSettings, spec: BuildSpec, commit: str) -> dd.BuildResult:
    logger = get_run_logger()
    cache_ref = _registry_ref(spec.cache_to)
    request = dd.BuildRequest(
        dockerfile=spec.dockerfile,
        target=spec.target,
        build_args={"BASE_IMAGE": spec.base_image, "BUILDKIT_INLINE_CACHE": "1"},
        labels=spec.labels,
        cache_from=spec.cache_from,
        tags=[*spec.tags, *([cache_ref] if cache_ref else [])],
        network_mode=settings.docker_network,
        drop_syntax_directive=settings.docker_builtin_frontend,
    )
    root, _ = git.checkout(settings.resolved_git_url(), commit)
    try:
        context = Path(root) / settings.source_dir / spec.context
        with (
            settings.docker_client_host().get_client() as client,
            BuildTicker(logger, "docker-build") as ticker,
        ):
            return dd.build(client, context, request, ticker.line)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@task(name="docker-push", **RETRIED_READ)
def push_task(settings: BuildSettings, ref: str) -> str:
    creds = settings.docker_registry_credentials
    auth = None
    if creds is not None:
        auth = {
            "username": creds.username,
            "password": creds.password.get_secret_value(),
            "serveraddress": creds.registry_url,
        }
    logger = get_run_logger()
    with settings.docker_client_host().get_client() as client:
        return dd.push(client, ref, auth, lambda line: logger.info("%s", line))


def run_docker_build(settings: BuildSettings, spec: BuildSpec, commit: str, what: str) -> BuildRun:
    """Check the disk, build, push every tag; raise BuildFailedError unless the build succeeded."""
    logger = get_run_logger()
    started = time.monotonic()
    check_disk(settings, spec.base_image)
    logger.info(
        "%s: the local Docker backend keeps the daemon's build cache: a CACHED step may come from "
        "an earlier build on this machine, which a fresh Cloud Build VM never has (there only "
        "--cache-from in the registry counts)",
        what,
    )
    result = build_task(settings, spec, commit)
    report = parse_buildkit_log(result.lines)
    tail = [line for line in result.lines if line.strip()][-15:]
    build_id = f"docker-{result.image_id.split(':')[-1][:12]}" if result.image_id else "docker"
    logger.info(
        "%s: Docker build %s in %.1fs; steps CACHED %d, RUN %d (hit rate %.0f%%)",
        what,
        "failed" if result.error else "succeeded",
        time.monotonic() - started,
        report.cached,
        report.run,
        100 * report.hit_rate,
    )
    if result.error is not None:
        step, error = report.failure()
        raise BuildFailedError(
            f"{what}: the Docker build failed"
            + (f"; failing step {step}" if step else "")
            + f": {error or result.error}\nlast log lines:\n"
            + "\n".join(tail),
            build_id=build_id,
            step=step,
            detail=error or result.error,
        )
    cache_ref = _registry_ref(spec.cache_to)
    images = {ref: push_task(settings, ref) for ref in spec.tags}
    if cache_ref:
        push_task(settings, cache_ref)
    return BuildRun(
        build_id, "SUCCESS", images, round(time.monotonic() - started, 3), "", report, tail
    )
