"""Cloud Build's `docker buildx build` step, executed for real on the sandbox's Docker daemon.

The request is never changed (it must still run on Google as is); this module translates it
for the local engine. The translation, in one place:

| Google's builder (buildx, docker-container driver) | the sandbox's engine (dockerd 20.10, embedded BuildKit) |
| --- | --- |
| `buildx create --driver docker-container --use` | nothing to create: the daemon's BuildKit builds |
| `# syntax=docker/dockerfile:1` (pulls the frontend from Docker Hub) | the directive is dropped (no Docker Hub here); the built-in frontend parses the same Dockerfile |
| `--cache-from type=registry,ref=R` | `--cache-from R`: R is an image carrying its inline cache |
| `--cache-to type=registry,ref=R,mode=max` (a cache manifest) | R is pushed as the built image with an inline cache (`BUILDKIT_INLINE_CACHE=1`): it covers the target's chain (mode=min), which is what the tiers reuse |
| `--cache-to type=inline` | `--build-arg BUILDKIT_INLINE_CACHE=1` |
| `--provenance=false` | nothing (20.10 writes no attestations) |
| `--push` | `docker push` of every `--tag` (and of the cache refs) after the build |
| Cloud Build's worker network | `--network host` (the daemon runs with `--bridge=none`): RUN reaches the package registries this host reaches |
| a fresh VM per build: no local build cache | before each build, under one lock per daemon: `docker builder prune --all --force` and the `--cache-from` names untagged locally, so the only cache left is `--cache-from` in the registry |

A fresh VM, because a `CACHED` step must mean on Google what it meant here: the daemon's BuildKit
would otherwise hit its own cache of earlier builds (which a Cloud Build VM never has), and its
`--cache-from R` looks for R among the daemon's local images before the registry (moby's
builder-next/adapters/localinlinecache: `tryImportLocal`, then the registry importer). So the
build cache is emptied and every `--cache-from` name is untagged locally first (other local
images feed no cache: their layers only spare downloads); builds on one daemon run one at a time, so one build's reset never lands in another's
middle. Layers a running revision container uses stay (an untag never deletes them); the
daemon's local Docker backend keeps its own cache between its builds and says so.

Every line of BuildKit's plain progress goes through `emit` as it comes, so Cloud Logging shows
`CACHED` vs real step output, and a failing RUN fails with its real output.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.buildkit import BuildFailed, BuildOutput, BuildxArgs
from sandbox.engine.daemon import DOCKER_CLI, Engine
from sandbox.seed import STAND_IN_DIFFERENCE

# One build at a time per daemon (see "a fresh VM" in the module's docstring); keyed by event
# loop too, as an asyncio.Lock belongs to the loop it is first used in.
_VM_LOCKS: dict[tuple[str, int], asyncio.Lock] = {}
RESET_TIMEOUT_S = 120.0

SYNTAX_DIRECTIVE = re.compile(r"^#\s*syntax\s*=.*$", re.IGNORECASE | re.MULTILINE)
VERTEX_NAME = re.compile(r"^#(\d+) (\[[^\]]+\] .*)$")
VERTEX_END = re.compile(r"^#(\d+) (CACHED|DONE [\d.]+s|ERROR: .*)$")
PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64})")


def _registry_ref(spec: str) -> str | None:
    """`type=registry,ref=R[,…]` → R (None for other cache types)."""
    parts = dict(p.split("=", 1) for p in spec.split(",") if "=" in p)
    if parts.get("type", "registry") == "registry" and parts.get("ref"):
        return parts["ref"]
    return None


def docker_build_args(buildx: BuildxArgs, dockerfile: Path, context: Path) -> list[str]:
    """The `docker build` arguments equivalent to a buildx request (see the table above)."""
    args = ["build", "--progress=plain", "--network=host", "--file", str(dockerfile)]
    if buildx.target:
        args += ["--target", buildx.target]
    for key, value in buildx.build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    args += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    for key, value in buildx.labels.items():
        args += ["--label", f"{key}={value}"]
    for ref in buildx.cache_from:
        resolved = _registry_ref(ref) if "=" in ref else ref
        if resolved:
            args += ["--cache-from", resolved]
    for tag in [*buildx.tags, *cache_refs(buildx)]:
        args += ["--tag", tag]
    if buildx.no_cache:
        args.append("--no-cache")
    return [*args, str(context)]


def cache_refs(buildx: BuildxArgs) -> list[str]:
    """Registry cache exports, pushed as inline-cache images (see the table above)."""
    refs = []
    for spec in buildx.cache_to:
        if spec.get("type", "registry") == "registry" and spec.get("ref"):
            refs.append(spec["ref"])
    return refs


async def _stream(
    args: list[str], engine: Engine, emit: Callable[[str], None]
) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        DOCKER_CLI,
        *args,
        env=engine.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None  # noqa: S101 - the process was started with stdout=PIPE
    lines: list[str] = []
    try:
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            emit(line)
        return await proc.wait(), lines
    except asyncio.CancelledError:
        proc.kill()
        await proc.wait()
        raise


def _steps(lines: list[str]) -> list[tuple[str, str]]:
    names: dict[str, str] = {}
    ends: dict[str, str] = {}
    for line in lines:
        if m := VERTEX_NAME.match(line):
            names.setdefault(m.group(1), m.group(2))
        elif m := VERTEX_END.match(line):
            ends[m.group(1)] = "CACHED" if m.group(2) == "CACHED" else m.group(2).split()[0]
    return [
        (name, ends.get(n, "UNFINISHED"))
        for n, name in names.items()
        if not name.startswith("[internal]")
    ]


async def _quiet(engine: Engine, *args: str) -> tuple[int, str]:
    """A docker CLI call whose output only matters when it fails."""
    proc = await asyncio.create_subprocess_exec(
        DOCKER_CLI,
        *args,
        env=engine.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RESET_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"docker {args[0]} did not finish within {RESET_TIMEOUT_S:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace").strip()


def local_names(buildx: BuildxArgs) -> list[str]:
    """The build's `--cache-from` names, which the daemon would read from its local images
    before the registry. Other local images feed no cache (BuildKit matches cache keys only in
    its build cache and in the imported caches), and their layers spare a re-download."""
    names = [_registry_ref(ref) if "=" in ref else ref for ref in buildx.cache_from]
    out = set()
    for name in names:
        if name and "@" not in name:  # a digest names no tag to remove
            out.add(name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest")
    return sorted(out)


async def fresh_vm(engine: Engine, buildx: BuildxArgs, emit: Callable[[str], None]) -> None:
    """Leave the daemon's cache as a new Cloud Build VM finds it: no build cache, and no
    `--cache-from` name local (an image still used by a container only loses the name)."""
    started = time.monotonic()
    code, out = await _quiet(engine, "builder", "prune", "--all", "--force")
    if code != 0:
        raise BuildFailed("[internal] fresh build VM", f"docker builder prune failed: {out}")
    local = await _quiet(engine, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    present = set(local[1].splitlines()) if local[0] == 0 else set()
    stale = [name for name in local_names(buildx) if name in present]
    if stale:
        code, out = await _quiet(engine, "image", "rm", "--no-prune", *stale)
        if code != 0:
            raise BuildFailed("[internal] fresh build VM", f"docker image rm failed: {out}")
    emit(
        f"shipyard sandbox: a fresh build VM (build cache emptied, {len(stale)} local "
        f"--cache-from name(s) removed, in {time.monotonic() - started:.1f} s): CACHED steps come "
        "only from --cache-from in the registry, as on Cloud Build"
    )


async def engine_build(
    engine: Engine, cwd: Path, buildx: BuildxArgs, emit: Callable[[str], None]
) -> BuildOutput:
    """Build and push on the engine as on a fresh Cloud Build VM (see the module's docstring).
    Raises BuildFailed naming the failing step."""
    lock = _VM_LOCKS.setdefault((engine.host, id(asyncio.get_running_loop())), asyncio.Lock())
    async with lock:
        emit(f"NOTE: {STAND_IN_DIFFERENCE}")
        await fresh_vm(engine, buildx, emit)
        return await _build_and_push(engine, cwd, buildx, emit)


async def _build_and_push(
    engine: Engine, cwd: Path, buildx: BuildxArgs, emit: Callable[[str], None]
) -> BuildOutput:
    context = (cwd / buildx.context).resolve()
    source = (cwd / buildx.dockerfile) if buildx.dockerfile else context / "Dockerfile"
    if not source.is_file():
        raise BuildFailed(
            "[internal] load build definition from Dockerfile",
            f"failed to read dockerfile: open {source.name}: no such file or directory",
        )
    with tempfile.TemporaryDirectory(prefix="shipyard-dockerfile-") as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        dockerfile.write_text(SYNTAX_DIRECTIVE.sub("", source.read_text(), count=1))
        code, lines = await _stream(docker_build_args(buildx, dockerfile, context), engine, emit)
    steps = _steps(lines)
    if code != 0:
        failed = next((name for name, end in steps if end == "ERROR"), "")
        final = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), f"exit code {code}")
        raise BuildFailed(failed, final)
    images: list[dict[str, str]] = []
    if buildx.push:
        for ref in [*buildx.tags, *cache_refs(buildx)]:
            code, out = await _stream(["push", ref], engine, emit)
            if code != 0:
                raise BuildFailed("pushing " + ref, out[-1] if out else f"exit code {code}")
            digest = next((m.group(1) for ln in out if (m := PUSHED_DIGEST.search(ln))), "")
            if ref in buildx.tags:
                images.append({"name": ref, "digest": digest})
    digest = images[0]["digest"] if images else None
    return BuildOutput(digest=digest, images=images, steps=steps, cache_exports=[], config={})
