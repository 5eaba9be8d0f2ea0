"""One build, on the backend BuildSettings chooses: Cloud Build (default) or a Docker daemon.

Flows describe a build once (`BuildSpec` in spec.py: base image, tags, cache chain, target,
labels) and call `run_build`; both backends return a `BuildRun` whose report (CACHED vs RUN, hit
rate) is parsed from the build's own BuildKit log, and both raise BuildFailedError naming the
failing step. Only this adapter knows which backend runs.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from google.cloud.devtools import cloudbuild_v1
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect_gcp.cloud_storage import GcsBucket

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.build.cloud_build_request import build_request, buildx_args, git_source
from shipyard.flows.build.cloud_build_run import BuildRun, run_cloud_build
from shipyard.flows.build.docker_build_run import run_docker_build
from shipyard.flows.build.spec import BuildSpec
from shipyard.tasks import git_source as git
from shipyard.tasks.errors import PermanentError


@task(name="upload-source", cache_policy=NO_CACHE, persist_result=False)
def upload_source(settings: BuildSettings, commit: str) -> dict[str, Any]:
    """storageSource: a tar.gz of the build context uploaded with prefect-gcp's GcsBucket."""
    if not settings.storage_bucket_block:
        raise PermanentError(
            "use_storage_source needs BuildSettings.storage_bucket_block (a prefect-gcp GcsBucket "
            "block name)"
        )
    bucket = GcsBucket.load(settings.storage_bucket_block)
    root, _ = git.checkout(settings.resolved_git_url(), commit)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            context = Path(root) / settings.source_dir
            for path in sorted(context.rglob("*")):
                if ".git" not in path.parts:
                    tar.add(path, arcname=path.relative_to(context).as_posix(), recursive=False)
        buf.seek(0)
        name = f"shipyard-source/{commit}.tgz"
        key = bucket.upload_from_file_object(buf, name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"storage_source": cloudbuild_v1.StorageSource(bucket=bucket.bucket, object_=key)}


def run_build(
    settings: BuildSettings,
    cloud: GoogleCloud,
    spec: BuildSpec,
    *,
    commit: str,
    build_tags: list[str],
    what: str,
    use_storage_source: bool = False,
    adopt_tag: str | None = None,
) -> BuildRun:
    """Build `spec` from `commit` on the settings' backend; `build_tags` label a Cloud Build;
    a Cloud Build under `adopt_tag` still running (its run was killed) is followed instead."""
    if settings.backend == "docker":
        return run_docker_build(settings, spec, commit, what)
    source = upload_source(settings, commit) if use_storage_source else git_source(settings, commit)
    request = build_request(
        settings, source=source, args=buildx_args(**asdict(spec)), build_tags=build_tags
    )
    return run_cloud_build(cloud, settings, request, what, adopt_tag=adopt_tag)
