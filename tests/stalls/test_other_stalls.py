"""The other outside clients against a server that accepts and never answers: the OCI registry
(httpx), the Docker daemon (docker-py) and git each end within their deadline (plus the
registry's retry budget), with a transient error for the caller's retry policy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import docker
from stall_server import bound, ended

from shipyard.tasks import deadlines
from shipyard.tasks.docker_daemon import BuildRequest, build, data_root_free
from shipyard.tasks.errors import TransientError, is_transient
from shipyard.tasks.git_source import _git
from shipyard.tasks.registry import RegistryClient
from shipyard.tasks.registry.errors import RegistryUnavailable

CALL_S = 0.5


def test_a_registry_request_ends_within_its_deadline_and_budget(stall):
    budget_s = 1.0  # the operation's retry budget: attempts of CALL_S each within it

    async def read() -> object:
        registry = f"127.0.0.1:{stall.port}"
        client = RegistryClient(
            registry, base_url=stall.url, timeout=CALL_S, retry_budget=budget_s, backoff_base=0.05
        )
        async with client:
            return await client.get_manifest("team/app", "v1")

    error, seconds = ended(lambda: asyncio.run(read()), bound(CALL_S + budget_s))
    assert isinstance(error, RegistryUnavailable) and is_transient(error), repr(error)
    assert "Timeout" in str(error)
    assert seconds < bound(CALL_S + budget_s)


def _daemon(stall, **attached: float) -> docker.DockerClient:
    # A fixed API version: "auto" would ask the (stalled) daemon at construction.
    client = docker.DockerClient(
        base_url=f"tcp://127.0.0.1:{stall.port}", version="1.43", timeout=CALL_S
    )
    return deadlines.attach(client, deadlines.Deadlines(**attached)) if attached else client


def test_a_docker_daemon_call_ends_within_the_clients_timeout(stall):
    client = _daemon(stall)
    error, seconds = ended(lambda: data_root_free(client), bound(CALL_S))
    assert isinstance(error, TransientError), repr(error)
    assert seconds < bound(CALL_S)


def test_a_silent_build_stream_ends_within_its_silence_deadline(stall, tmp_path: Path):
    """A build streams for as long as it builds (no per-call timeout), but a stream that stays
    silent past `docker_build_silence_s` is a stalled daemon (before: `timeout=None`, forever)."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    client = _daemon(stall, docker_build_silence_s=CALL_S)
    error, seconds = ended(
        lambda: build(client, tmp_path, BuildRequest(tags=["x:1"]), lambda _line: None),
        bound(CALL_S),
    )
    assert isinstance(error, TransientError), repr(error)
    assert seconds < bound(CALL_S)


def test_a_git_command_ends_within_its_timeout(stall):
    """tasks/git_source.py gives every git command a deadline (120 s, 60 s for ls-remote)."""
    error, seconds = ended(
        lambda: _git("ls-remote", f"{stall.url}/team/app.git", timeout=1.0), bound(1.0)
    )
    assert isinstance(error, TransientError) and "timed out" in str(error), repr(error)
    assert seconds < bound(1.0)
