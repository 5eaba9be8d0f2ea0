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

Every line of BuildKit's plain progress goes through `emit` as it comes, so Cloud Logging shows
`CACHED` vs real step output, and a failing RUN fails with its real output.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from sandbox.buildkit import BuildFailed, BuildOutput, BuildxArgs
from sandbox.engine.daemon import DOCKER_CLI, Engine

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


async def engine_build(
    engine: Engine, cwd: Path, buildx: BuildxArgs, emit: Callable[[str], None]
) -> BuildOutput:
    """Build and push on the engine. Raises BuildFailed naming the failing step."""
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
