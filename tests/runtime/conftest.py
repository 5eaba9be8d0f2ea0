"""Fixtures of the container-engine group: a sandbox whose builds and revisions run on its own
Docker daemon, the base image over the Debian root filesystem, a throwaway git repository.

The root filesystem is cached at $SHIPYARD_ROOTFS_CACHE (the Makefile exports a stable path and
builds it before pytest, so the group does not pay for debootstrap; without it the first test
bootstraps it). The whole group is marked `runtime` and `slow`, and `make test` runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("SHIPYARD_ROOTFS_CACHE", str(Path.home() / ".cache" / "shipyard" / "rootfs"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.runtime)
            item.add_marker(pytest.mark.slow)
    _one_backend_after_the_other(items)


def _one_backend_after_the_other(items) -> None:
    """All of one build backend's release tests run before the other's, in file order.

    pytest's own grouping of the module-scoped `variant` interleaves the tests parametrized with
    one backend only (the start faults) with the others: the variant's fixtures (its commit, its
    first release) were then torn down and set up again, and the Docker variant's second set-up
    wrote a commit that already existed. Runs after pytest's reordering (trylast) and moves
    items only among the module's own places."""
    places = [
        i
        for i, item in enumerate(items)
        if item.nodeid.split("::")[0].endswith("test_release_on_containers.py")
    ]

    def backend(item) -> int:
        callspec = getattr(item, "callspec", None)
        return 0 if callspec is None or callspec.params.get("variant") != "docker" else 1

    ordered = sorted((items[i] for i in places), key=backend)
    for place, item in zip(places, ordered, strict=True):
        items[place] = item


@pytest.fixture(scope="session")
def engine_session(tmp_path_factory):
    """Registry, Docker daemon and emulator, one per session. The environment is pointed at
    them per test only (`engine_sandbox`): other modules on the same worker use the session's
    in-process sandbox."""
    from sandbox.engine.daemon import ENGINE_ENV, unavailable_reason
    from sandbox.manager import start_sandbox

    reason = unavailable_reason()
    if reason is not None and os.environ.get(ENGINE_ENV, "").lower() == "off":
        pytest.skip(f"the container engine is switched off ({reason})")
    assert reason is None, f"the container engine cannot start here: {reason}"
    from sandbox.engine.revision_instances import MEMORY_CAP_ENV

    # Revision containers get at most 256 MiB here (the page service needs ~80): an OOM drill
    # is killed quickly and the group never holds much of the shared machine's memory.
    saved = os.environ.get(MEMORY_CAP_ENV)
    os.environ[MEMORY_CAP_ENV] = "256"
    try:
        info = start_sandbox(root=tmp_path_factory.mktemp("engine-sandbox"), engine=True)
    finally:
        if saved is None:
            os.environ.pop(MEMORY_CAP_ENV)
        else:
            os.environ[MEMORY_CAP_ENV] = saved
    assert info.mode == "containers", info.mode_note
    try:
        yield info
    finally:
        info.stop()


@pytest.fixture
def engine_sandbox(engine_session):
    """The engine sandbox, with the environment pointing Shipyard at it for this test."""
    with engine_session.env_applied():
        yield engine_session


@pytest.fixture(scope="session")
def engine_upstream(engine_session):
    """The upstream CUDA image over the Debian root filesystem (`SeededImage`), seeded once:
    the toy builds use it as is, the release rehearsal mirrors it."""
    from sandbox.engine.rootfs import ensure_rootfs
    from sandbox.seed import UPSTREAM_REPOSITORY, UPSTREAM_TAG, seed_cuda_image

    return seed_cuda_image(
        engine_session.registry_url, UPSTREAM_REPOSITORY, UPSTREAM_TAG, rootfs=ensure_rootfs()
    )


@pytest.fixture(scope="session")
def engine_cuda(engine_upstream) -> str:
    """The upstream CUDA image, by digest: no python3, as NVIDIA's runtime image."""
    return f"{engine_upstream.repository}@{engine_upstream.digest}"


@pytest.fixture(scope="session")
def engine_base(engine_session, engine_cuda) -> str:
    """The upstream CUDA image plus python3, by digest: the base the toy services run on. The
    upstream has no Python (as NVIDIA's); a service installs it in its Dockerfile, so this is
    built once per session, as such a Dockerfile would, and pushed."""
    from sandbox.engine.daemon import DOCKER_CLI, Engine, docker

    engine = Engine(engine_session.docker_host)
    tag = f"{engine_session.registry_host}/runtime/python-base:session"
    dockerfile = (
        f"FROM {engine_cuda}\nRUN apt-get update && apt-get install -y --no-install-recommends "
        "python3 && rm -rf /var/lib/apt/lists/*\n"
    )
    built = subprocess.run(
        [DOCKER_CLI, "build", "--network=host", "--tag", tag, "-"],
        input=dockerfile,
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    pushed = docker(engine, "push", tag, timeout=300)
    assert pushed.returncode == 0, pushed.stdout[-2000:] + pushed.stderr[-2000:]
    digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed.stdout)
    assert digest, pushed.stdout
    return f"{tag.rsplit(':', 1)[0]}@{digest.group(1)}"
