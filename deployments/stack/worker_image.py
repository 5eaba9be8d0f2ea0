"""Shipyard's worker image: deployments/worker/Dockerfile with the wheel built from the checkout.

The build context is made in a temporary directory, never in the checkout: the Dockerfile, the
`shipyard` wheel (built from a copy of the shipped folders, so no `build/` or `*.egg-info` lands
in the checkout) and `requirements.txt`, the wheel's dependencies pinned to the versions of the
environment that builds it (read from its installed metadata: the image runs what was tested).
The image holds no checkout: flow runs import `shipyard…` from the image's site-packages.

Built with BuildKit through the Docker SDK (tasks/docker_daemon.py), with the host's network
(`--network host`: the sandbox's daemon has no bridge, and a RUN reaches the package indexes the
way this machine does). Where the packages come from is this machine's business, handed in as
build args from its environment (PIP_INDEX_URL and friends) when set, never written into a file
here; an index URL that carries credentials is refused, since a build arg used by a RUN is kept
in the image's history.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import docker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from shipyard.tasks.docker_daemon import BuildRequest, build

DISTRIBUTION = "shipyard"
DOCKERFILE = Path("deployments") / "worker" / "Dockerfile"
# What the wheel is built from (pyproject's package-dir and package-data, plus what its
# metadata reads).
SHIPPED = ("flows", "tasks", "blocks", "deployments", "pyproject.toml", "README.md", "prefect.yaml")
# The host's package-index settings handed to the build, when set (see the module docstring).
INDEX_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL")
# The uv the image installs its dependencies with (the Dockerfile's default, kept in step).
UV_VERSION = "0.13.9"
CREDENTIALS = re.compile(r"://[^/@\s]+@")
STEP = re.compile(r"^#(\d+) \[(?!internal)[^\]]*\d+/\d+\] (?!FROM )")
CACHED = re.compile(r"^#(\d+) CACHED$")
# Zip timestamps of the wheel: the same code gives the same wheel, so its COPY stays CACHED.
SOURCE_DATE_EPOCH = "315532800"


class WorkerImageError(RuntimeError):
    """The worker image could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class WorkerImage:
    ref: str
    image_id: str
    seconds: float
    cached_steps: int
    run_steps: int


def checkout_root() -> Path:
    """The checkout this package runs from (the Dockerfile and pyproject.toml live there)."""
    here = Path(__file__).resolve().parents[2]
    if not (here / DOCKERFILE).is_file() or not (here / "pyproject.toml").is_file():
        raise WorkerImageError(
            f"the worker image is built from a checkout of Shipyard: {here} has no {DOCKERFILE} "
            "and pyproject.toml (run it from a checkout's venv, `make setup`)"
        )
    return here


def pinned_requirements(distribution: str = DISTRIBUTION) -> list[str]:
    """`name==version` for every distribution `distribution` needs (with the extras its
    requirements ask for), as installed in this environment; sorted."""
    pins: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(distribution, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        key = (canonicalize_name(name), extras)
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise WorkerImageError(
                f"{name} (needed by {distribution}) is not installed in {sys.prefix}: "
                "install the project's dependencies first (`make setup`)"
            ) from None
        if canonicalize_name(name) != canonicalize_name(distribution):
            pins[canonicalize_name(name)] = f"{dist.metadata['Name']}=={dist.version}"
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return sorted(pins.values(), key=str.lower)


def index_build_args(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The host's package-index settings as build args (file:// indexes, which a build cannot
    read, dropped). Refuses a URL with credentials, naming the variable."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name in INDEX_ARGS:
        urls = [u for u in env.get(name, "").split() if not u.startswith("file:")]
        if any(CREDENTIALS.search(u) for u in urls):
            raise WorkerImageError(
                f"{name} carries credentials (user:password@ in the URL): a build arg is kept in "
                "the image's history; give the index without them (a proxy or a netrc-free "
                "mirror), or build by hand with a BuildKit secret"
            )
        if urls:
            out[name] = " ".join(urls)
    return out


def _build_wheel(root: Path, out: Path, timeout: float) -> Path:
    """The wheel, built from a copy of the shipped folders (see the module docstring)."""
    src = out.parent / "src"
    src.mkdir()
    for name in SHIPPED:
        path = root / name
        if path.is_dir():
            shutil.copytree(
                path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(path, src / name)
    uv = shutil.which("uv")
    if uv:
        args = [uv, "build", "--wheel", "--out-dir", str(out), str(src)]
    else:
        args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, check=False, cwd=src, env=env
    )
    wheels = sorted(out.glob("shipyard-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise WorkerImageError(f"building the shipyard wheel failed ({args[0]}): {tail}")
    return wheels[0]


def build_context(directory: Path, timeout: float = 300) -> Path:
    """Fill `directory` with the worker image's build context; returns it."""
    root = checkout_root()
    context = directory / "context"
    context.mkdir(parents=True)
    _build_wheel(root, context, timeout)
    shutil.copy2(root / DOCKERFILE, context / "Dockerfile")
    pins = pinned_requirements()
    (context / "requirements.txt").write_text(
        "# The shipyard wheel's dependencies, pinned to the environment that built the image.\n"
        + "\n".join(pins)
        + "\n"
    )
    return context


def build_worker_image_details(
    docker_host: str,
    tag: str,
    base: str | None = None,
    timeout: float = 900,
    emit: Callable[[str], None] | None = None,
    context: Path | None = None,
) -> WorkerImage:
    """`build_worker_image`, with how long it took and how many steps were CACHED vs run.
    `context`: a build context `build_context` made before (else a fresh one from the checkout)."""
    started = time.monotonic()
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        if emit is not None:
            emit(line)

    with tempfile.TemporaryDirectory(prefix="shipyard-worker-image-") as tmp:
        if context is None:
            context = build_context(Path(tmp), timeout=timeout)
        build_args = {"UV_VERSION": UV_VERSION, **index_build_args()}
        if base:
            build_args["BASE"] = base
        request = BuildRequest(
            dockerfile="Dockerfile",
            build_args=build_args,
            labels={"org.opencontainers.image.title": "shipyard-worker"},
            tags=[tag],
            network_mode="host",
            # Re-packs the context as a GNU tar: dockerd 20.10's BuildKit took docker-py's
            # PAX tar for a lone Dockerfile ("unknown instruction: ././@PAXHEADER").
            drop_syntax_directive=True,
        )
        client = docker.DockerClient(base_url=docker_host, timeout=int(timeout))
        try:
            result = build(client, context, request, out)
        finally:
            client.close()
    if result.error or not result.image_id:
        tail = " | ".join(lines[-8:])
        raise WorkerImageError(
            f"building the worker image {tag} on {docker_host} failed: {result.error}: {tail}"
        )
    cached, ran = _step_counts(lines)
    return WorkerImage(tag, result.image_id, round(time.monotonic() - started, 1), cached, ran)


def _step_counts(lines: list[str]) -> tuple[int, int]:
    """(CACHED, run) among the Dockerfile's own steps of BuildKit's plain log."""
    steps = {m.group(1) for ln in lines if (m := STEP.match(ln))}
    cached = {m.group(1) for ln in lines if (m := CACHED.match(ln))} & steps
    return len(cached), len(steps - cached)


def build_worker_image(
    docker_host: str, tag: str, base: str | None = None, timeout: float = 900
) -> str:
    """Build the worker image on the Docker daemon at `docker_host` (e.g. the sandbox's
    engine), tagged `tag`, from `base` (None: the Dockerfile's default, python:3.11-slim).
    Returns the image reference (`tag`)."""
    return build_worker_image_details(docker_host, tag, base, timeout).ref
