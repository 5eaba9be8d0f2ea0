"""Fixtures for the mirror tests: real distribution registries, started and stopped by PID."""

from __future__ import annotations

import itertools

import pytest
from mirror_servers import FlakyProxy, ThreadedServer, TokenServer

from sandbox.registry import start_registry

_counter = itertools.count()


@pytest.fixture
def start(tmp_path):
    """start(**kw) -> a fresh real registry (kw go to start_registry); all stopped at teardown."""
    started = []

    def _start(**kw):
        reg = start_registry(tmp_path / f"registry-{next(_counter)}", **kw)
        started.append(reg)
        return reg

    yield _start
    for reg in started:
        reg.stop()


@pytest.fixture
def src(start):
    return start()


@pytest.fixture
def dst(start):
    return start()


@pytest.fixture
def flaky():
    """flaky(backend_url, fail_every=3) -> a started FlakyProxy (with .server.host)."""
    servers = []

    def _flaky(backend: str, fail_every: int = 3, **faults) -> FlakyProxy:
        proxy = FlakyProxy(backend, fail_every, **faults)
        proxy.server = ThreadedServer(proxy)
        servers.append(proxy.server)
        return proxy

    yield _flaky
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory):
    """A registry with `auth: token:` and the JWT token server that answers its challenge."""
    yield from _token_registry(tmp_path_factory, strict=False)


@pytest.fixture(scope="module")
def strict_token_registry(tmp_path_factory):
    """The same, with a token server that refuses a whole request when one scope is denied."""
    yield from _token_registry(tmp_path_factory, strict=True)


def _token_registry(tmp_path_factory, strict: bool):
    from sandbox.registry import start_registry as _start

    root = tmp_path_factory.mktemp("strict-token-registry" if strict else "token-registry")
    tokens = TokenServer(
        root / "tokens",
        users={"mirror-bot": "s3cret-Token-pw", "push-bot": "push-Only-pw"},
        grants={"push-bot": ("mounted/",)},  # may push there, may not read anything else
        strict=strict,
    )
    server = ThreadedServer(tokens)
    reg = _start(root / "registry", extra_auth=tokens.registry_auth(f"{server.url}/token"))
    yield reg, tokens
    reg.stop()
    server.stop()
