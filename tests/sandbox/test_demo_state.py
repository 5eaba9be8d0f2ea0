"""What `shipyard demo` keeps between runs (deployments/demo/state.py): a second sandbox over
the same state finds the registry's storage on the same port; `--fresh` (forget) drops it."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.oci import RegistryFailure, SandboxRegistry
from sandbox.seed import UPSTREAM_REPOSITORY, UPSTREAM_TAG, seed_cuda_image
from shipyard.deployments.demo.run import local_cloud
from shipyard.deployments.demo.state import DemoState, DemoStateBusy, forget, holding


def _served_digest(registry_url: str) -> str | None:
    async def go() -> str | None:
        reg = SandboxRegistry(registry_url)
        try:
            return (await reg.get_manifest(UPSTREAM_REPOSITORY, UPSTREAM_TAG))[1]
        except RegistryFailure:
            return None
        finally:
            await reg.aclose()

    return asyncio.run(go())


def test_a_second_demo_sandbox_finds_the_kept_registry_and_fresh_drops_it(tmp_path):
    state = DemoState(tmp_path / "demo")
    assert state.found() == {"registry": False, "engine": False}
    with local_cloud(state=state) as cloud:
        seeded = seed_cuda_image(cloud.info.registry_url)
        first_host = cloud.info.registry_host

    assert state.found()["registry"] is True
    with local_cloud(state=state) as cloud:
        # the same port (image references name it) and the same image, by digest
        assert cloud.info.registry_host == first_host
        assert _served_digest(cloud.info.registry_url) == seeded.digest

    assert forget(state) is True and not state.root.exists()
    assert state.found()["registry"] is False
    with local_cloud(state=state) as cloud:
        assert _served_digest(cloud.info.registry_url) is None


def test_a_second_demo_over_the_same_state_is_told_to_wait(tmp_path):
    state = DemoState(tmp_path / "demo")
    with (
        holding(state),
        pytest.raises(DemoStateBusy, match="another `shipyard demo` is running over"),
        holding(state),
    ):
        pass
    with holding(state):  # released with the first run
        pass
