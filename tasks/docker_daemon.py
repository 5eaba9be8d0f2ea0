"""A Docker daemon, through the Docker SDK (a client from prefect-docker's `DockerHost`).

Three things a build needs from it:

- `data_root_free`: the free bytes on the daemon's data root (`docker info` → DockerRootDir). A
  daemon on this machine (unix socket) is measured with statvfs on that path; a remote one by
  running `df` in a throwaway container of an image it has, with the data root mounted read-only.
- `build`: a BuildKit build (`POST /build?version=2`: docker-py's `build()` has no switch for
  BuildKit, so the request is sent with the SDK's own HTTP session). The context is the directory
  after `.dockerignore`, sent as a tar; BuildKit's progress comes back as `moby.buildkit.trace`
  messages, rendered as BuildKit's plain log (tasks/buildkit_trace.py).
- `push`: `docker push` of one reference with the registry credentials given; returns the
  pushed manifest digest.

Messages name the daemon by its URL and never carry a credential. Every call has a deadline: the
client's own timeout (prefect-docker's `DockerHost.timeout`, docker-py's 60 s by default), and a
build's stream tasks/deadlines.py's `docker_build_silence_s` between two reads.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from docker.utils import tar as docker_tar

from shipyard.tasks import deadlines
from shipyard.tasks.buildkit_trace import TRACE_ID, PlainPrinter
from shipyard.tasks.errors import PermanentError, TransientError

SYNTAX_DIRECTIVE = re.compile(r"^#\s*syntax\s*=.*$", re.IGNORECASE | re.MULTILINE)


class DaemonError(PermanentError):
    """The daemon refused or failed an operation."""


def daemon_url(client: docker.DockerClient) -> str:
    """The daemon's address as a user gives it (docker-py shows a socket as http+docker://)."""
    socket_path = getattr(getattr(client.api, "_custom_adapter", None), "socket_path", None)
    if socket_path:
        return f"unix://{socket_path}"
    return str(getattr(client.api, "base_url", "") or "the Docker daemon")


def _call(client: docker.DockerClient, what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except docker.errors.APIError as exc:
        status = getattr(exc, "status_code", None) or 0
        kind = TransientError if status >= 500 else DaemonError
        raise kind(f"{daemon_url(client)}: {what} failed: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, ConnectionError, OSError) as exc:
        raise TransientError(f"{daemon_url(client)}: {what} failed: {exc}") from None


def _chunks(
    client: docker.DockerClient, what: str, stream: Iterator[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The daemon's JSON messages as they come; a broken stream is a transient failure."""
    while True:
        try:
            chunk = next(stream)
        except StopIteration:
            return
        except (docker.errors.DockerException, ConnectionError, OSError) as exc:
            raise TransientError(f"{daemon_url(client)}: {what} failed: {exc}") from None
        yield chunk


@dataclass(frozen=True)
class DataRoot:
    path: str
    free_bytes: int


def data_root_free(client: docker.DockerClient, probe_image: str | None = None) -> DataRoot:
    """Free bytes on the daemon's DockerRootDir. `probe_image`: an image to run `df` in when the
    daemon is not on this machine (else the measure needs the path to be visible here)."""
    info = _call(client, "docker info", client.info)
    root = str(info.get("DockerRootDir") or "")
    if not root:
        raise DaemonError(f"{daemon_url(client)}: docker info reports no DockerRootDir")
    if daemon_url(client).startswith("unix://") and os.path.isdir(root):
        return DataRoot(root, shutil.disk_usage(root).free)
    if probe_image is None:
        raise DaemonError(
            f"{daemon_url(client)}: its data root {root} is not visible from this machine and no "
            "image was given to measure it in"
        )
    _call(client, f"pull {probe_image}", lambda: client.images.pull(probe_image))
    out = _call(
        client,
        f"df {root} in {probe_image}",
        lambda: client.containers.run(
            probe_image,
            ["df", "-Pk", "/data-root"],
            volumes={root: {"bind": "/data-root", "mode": "ro"}},
            network_mode="none",
            remove=True,
        ),
    )
    last = out.decode().strip().splitlines()[-1].split()
    return DataRoot(root, int(last[3]) * 1024)


def _context_tar(context: Path, dockerfile: str, drop_syntax: bool) -> bytes:
    """The context as docker-py's build() sends it (after .dockerignore); the Dockerfile without
    its `# syntax=` line when `drop_syntax` (the daemon's built-in frontend parses it)."""
    ignore = context / ".dockerignore"
    exclude = None
    if ignore.exists():
        lines = [line.strip() for line in ignore.read_text().splitlines()]
        exclude = [line for line in lines if line and not line.startswith("#")]
    with docker_tar(str(context), exclude=exclude, dockerfile=(dockerfile, None)) as fileobj:
        data: bytes = fileobj.read()
    if not drop_syntax:
        return data
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(data)) as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for member in source.getmembers():
            content = source.extractfile(member) if member.isfile() else None
            if member.name == dockerfile and content is not None:
                text = SYNTAX_DIRECTIVE.sub("", content.read().decode(), count=1).encode()
                member.size = len(text)
                content = io.BytesIO(text)
            tar.addfile(member, content)
    return out.getvalue()


@dataclass
class BuildRequest:
    dockerfile: str = "Dockerfile"
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cache_from: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    network_mode: str | None = None
    drop_syntax_directive: bool = False


@dataclass
class BuildResult:
    image_id: str | None
    lines: list[str]
    error: str | None  # the daemon's final error, None on success


def build(
    client: docker.DockerClient,
    context: Path,
    request: BuildRequest,
    emit: Callable[[str], None],
) -> BuildResult:
    """Run a BuildKit build; every plain-progress line goes to `emit` as it comes."""
    params: dict[str, Any] = {
        "version": "2",
        "dockerfile": request.dockerfile,
        "t": request.tags,
        "rm": "1",
        "forcerm": "1",
        "buildargs": json.dumps(request.build_args),
        "labels": json.dumps(request.labels),
        "cachefrom": json.dumps(request.cache_from),
    }
    if request.target:
        params["target"] = request.target
    if request.network_mode:
        params["networkmode"] = request.network_mode
    body = _context_tar(context, request.dockerfile, request.drop_syntax_directive)
    lines: list[str] = []

    def out(line: str) -> None:
        lines.append(line)
        emit(line)

    printer = PlainPrinter(out)
    image_id = error = None
    api = client.api

    def post() -> Any:
        return api._post(  # docker-py's build() cannot ask for BuildKit (version=2)
            api._url("/build"),
            params=params,
            data=body,
            headers={"Content-Type": "application/x-tar"},
            stream=True,
            # A build streams for as long as it builds: not the client's per-call timeout, but
            # a silence this long (between two reads) means the daemon stalled.
            timeout=deadlines.of(client).docker_build_silence_s,
        )

    response = _call(client, "build", post)
    for chunk in _chunks(client, "build", api._stream_helper(response, decode=True)):
        if chunk.get("id") == TRACE_ID:
            printer.feed(chunk["aux"])
        elif chunk.get("id") == "moby.image.id":
            image_id = chunk["aux"]["ID"]
        elif "error" in chunk:
            error = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
            out(f"ERROR: failed to solve: {error}")
        elif chunk.get("stream", "").strip():
            out(chunk["stream"].rstrip("\n"))
    return BuildResult(image_id, lines, error)


def push(
    client: docker.DockerClient,
    ref: str,
    auth: dict[str, str] | None,
    emit: Callable[[str], None],
) -> str:
    """Push `ref` (repository:tag); returns the manifest digest the registry accepted."""
    repository, _, tag = ref.rpartition(":")
    if "/" in tag or not repository:
        repository, tag = ref, "latest"
    digest = ""
    stream = _call(
        client,
        f"push {ref}",
        lambda: client.api.push(repository, tag=tag, auth_config=auth, stream=True, decode=True),
    )
    for chunk in _chunks(client, f"push {ref}", stream):
        if "error" in chunk:
            raise DaemonError(f"{daemon_url(client)}: push {ref} failed: {chunk['error']}")
        aux = chunk.get("aux") or {}
        if aux.get("Digest"):
            digest = aux["Digest"]
            emit(f"pushed {ref}@{digest}")
    if not digest:
        raise DaemonError(f"{daemon_url(client)}: push {ref} reported no digest")
    return digest
