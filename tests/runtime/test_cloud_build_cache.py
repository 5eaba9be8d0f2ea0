"""The sandbox's Cloud Build is a fresh VM each time, on a base with the real base's contract.

A Cloud Build VM has no local build cache: a step is CACHED only when `--cache-from` in the
registry has it. And nvidia/cuda's runtime image has no python3: a Dockerfile that leans on the
base's Python fails here as it would on Cloud Build.
"""

from __future__ import annotations

import os
import time
import uuid

from engine_kit import PROJECT, GitRepo, build_log
from google.cloud.devtools import cloudbuild_v1 as cb

from sandbox.admin import SandboxAdmin
from sandbox.engine.daemon import Engine, docker

# No network, no Python: the steps are cheap, and a cache hit is told by BuildKit alone.
DOCKERFILE = (
    "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
    "RUN echo 'one {marker}' > /one.txt\n"
    "RUN echo two > /two.txt\n"
)


def _request(repo: GitRepo, base: str, tag: str, cache: str | None) -> cb.Build:
    """`docker buildx build` as flows/build/cloud_build_request.py sends it, with the registry
    cache `cache` (read and written) or none at all."""
    args = ["buildx", "build", "--progress=plain", "--provenance=false", "--file", "Dockerfile"]
    args += ["--build-arg", f"BASE_IMAGE={base}", "--tag", tag]
    if cache:
        args += ["--cache-from", f"type=registry,ref={cache}"]
        args += ["--cache-to", f"type=registry,ref={cache},mode=max"]
    return cb.Build(
        source=cb.Source(git_source=cb.GitSource(url=repo.url, revision="HEAD")),
        steps=[cb.BuildStep(name="gcr.io/cloud-builders/docker", args=[*args, "--push", "."])],
        timeout={"seconds": 300},
    )


def _run(repo: GitRepo, base: str, tag: str, cache: str | None) -> tuple[cb.Build, str, dict]:
    """Run the build; (its end, its log, {BuildKit step: CACHED | DONE | ERROR})."""
    from shipyard.blocks.cloud import GoogleCloud

    client = GoogleCloud().builds_client()
    operation = client.create_build(
        project_id=PROJECT, build=_request(repo, base, tag, cache), timeout=30
    )
    build_id = operation.metadata.build.id
    deadline = time.monotonic() + 300
    build = client.get_build(project_id=PROJECT, id=build_id, timeout=30)
    while build.status.name in ("QUEUED", "WORKING") and time.monotonic() < deadline:
        time.sleep(0.2)
        build = client.get_build(project_id=PROJECT, id=build_id, timeout=30)
    admin = SandboxAdmin(os.environ["SHIPYARD_GOOGLE_ENDPOINT"])
    try:
        steps = dict(admin.get("/_sandbox/builds")[build_id]["steps"][0])
    finally:
        admin.close()
    return build, build_log(build_id), steps


def _cached(steps: dict[str, str]) -> list[str]:
    return sorted(name for name, end in steps.items() if end == "CACHED")


def test_the_base_declares_nvidias_environment_and_has_no_python(
    engine_sandbox, engine_cuda, tmp_path
):
    run = (
        'RUN echo "seen $NVIDIA_VISIBLE_DEVICES $NVIDIA_DRIVER_CAPABILITIES $LD_LIBRARY_PATH" '
        "&& cat /etc/ld.so.conf.d/nvidia.conf && python3 -c 'print(42)'\n"
    )
    repo = GitRepo(
        tmp_path / "repo", {"Dockerfile": f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\n{run}"}
    )
    tag = f"{engine_sandbox.registry_host}/runtime/nopython:{uuid.uuid4().hex[:8]}"
    build, log, _ = _run(repo, engine_cuda, tag, None)
    assert build.status == cb.Build.Status.FAILURE
    # NVIDIA's ENV and ld.so.conf.d lines (sandbox/seed.py, sandbox/engine/rootfs.py cite them)
    assert "seen all compute,utility /usr/local/nvidia/lib:/usr/local/nvidia/lib64" in log
    assert any(line.endswith(" /usr/local/nvidia/lib") for line in log.splitlines())  # the cat
    assert "python3: not found" in log  # the shell's own words, as on Cloud Build
    assert "is a stand-in: Debian 12" in log  # the difference it cannot hide, said first
    assert log.index("is a stand-in") < log.index("python3: not found")


def test_cache_hits_come_from_the_registry_only(engine_sandbox, engine_cuda, tmp_path):
    marker = uuid.uuid4().hex
    repo = GitRepo(tmp_path / "repo", {"Dockerfile": DOCKERFILE.replace("{marker}", marker)})
    host = engine_sandbox.registry_host
    cache = f"{host}/runtime/cache-tier:{marker[:8]}"
    engine = Engine(engine_sandbox.docker_host)

    first, _, steps = _run(repo, engine_cuda, f"{host}/runtime/cached:a{marker[:8]}", cache)
    assert first.status == cb.Build.Status.SUCCESS, first.status_detail
    assert not _cached(steps), steps  # a new cache: everything ran
    runs = sorted(name for name in steps if " RUN " in name)
    assert len(runs) == 2, steps

    # Wipe the daemon's build cache: the hits must still come, from the registry.
    assert docker(engine, "builder", "prune", "--all", "--force").returncode == 0
    again, log, steps = _run(repo, engine_cuda, f"{host}/runtime/cached:b{marker[:8]}", cache)
    assert again.status == cb.Build.Status.SUCCESS, again.status_detail
    assert set(runs) <= set(_cached(steps)), steps
    assert f"importing cache manifest from {cache}" in log

    # The daemon now holds those layers (its build cache, the cache image pulled): a build
    # without --cache-from still has no hit, as on a fresh Cloud Build VM.
    assert docker(engine, "pull", cache, timeout=120).returncode == 0
    usage = docker(engine, "system", "df", "--format", "{{.Type}} {{.TotalCount}}")
    assert "Build Cache 0" not in usage.stdout, usage.stdout
    bare, log, steps = _run(repo, engine_cuda, f"{host}/runtime/cached:c{marker[:8]}", None)
    assert bare.status == cb.Build.Status.SUCCESS, bare.status_detail
    assert _cached(steps) == [], steps
    assert set(runs) <= set(steps), steps
