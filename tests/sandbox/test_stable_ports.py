"""A sandbox restart changes nothing blocks, variables and deployments hold: `sandbox up` asks
for fixed ports (a setting), falls back with one line when one is taken, keeps the registry's
data; the mirror's destination is read when a run starts (a Variable), so its pin is still found
and still served after the restart."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from sandbox.manager import start_sandbox
from sandbox.procs import free_port, pick_port


def test_a_taken_port_falls_back_and_says_so():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        port, note = pick_port(busy, "registry")
    assert port != busy
    assert f"port {busy} for the registry is taken" in note and str(port) in note
    assert "shipyard setup" in note
    wanted = free_port()
    assert pick_port(wanted, "emulator") == (wanted, "")


@pytest.mark.slow  # two sandbox starts
def test_restart_on_the_same_ports_keeps_the_pin(prefect_server, tmp_path):
    from prefect.variables import Variable

    from sandbox.seed import seed_cuda_image
    from shipyard.flows.mirror.flow import DESTINATION_VARIABLE, mirror_base_image, read_base_pin

    ports = {"registry_port": free_port(), "emulator_port": free_port()}
    first = start_sandbox(root=tmp_path / "sandbox", **ports)
    saved = Variable.get(DESTINATION_VARIABLE, default=None)
    try:
        assert first.registry_url == f"http://127.0.0.1:{ports['registry_port']}"
        assert first.emulator_url == f"http://127.0.0.1:{ports['emulator_port']}"
        assert not first.port_notes
        upstream = seed_cuda_image(first.registry_url, "upstream/cuda", "12.1.1-cudnn8")
        destination = f"{first.registry_host}/restart/cuda"
        Variable.set(DESTINATION_VARIABLE, destination, overwrite=True)
        mirrored = asyncio.run(mirror_base_image(upstream.ref))  # destination read at run time
        assert mirrored["destination"] == destination
    finally:
        first.stop()
        if saved is None:
            Variable.unset(DESTINATION_VARIABLE)
        else:
            Variable.set(DESTINATION_VARIABLE, saved, overwrite=True)

    again = start_sandbox(root=tmp_path / "sandbox", **ports)
    try:
        assert (again.registry_url, again.emulator_url) == (first.registry_url, first.emulator_url)
        pin = read_base_pin(destination)
        assert pin is not None and pin["digest"] == mirrored["digest"]
        served = httpx.head(
            f"{again.registry_url}/v2/restart/cuda/manifests/{pin['digest']}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert served.status_code == 200, served.text
    finally:
        again.stop()
