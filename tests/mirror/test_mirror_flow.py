"""The mirror_base_image flow end to end: real registries, real Prefect server (Variables, artifacts)."""

from __future__ import annotations

import json

import httpx
import pytest
import typer
from mirror_images import client_for, push_image, push_index, run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect_docker import DockerRegistryCredentials
from secrets_scan_kit import remember
from typer.testing import CliRunner

from shipyard.deployments.cli.mirror import register
from shipyard.flows.mirror.flow import (
    CudnnMismatch,
    mirror_base_image,
    pin_variable_name,
    read_base_pin,
)
from shipyard.tasks.registry import NotFound, PlatformNotFound, RegistryAuthError


async def _artifacts_and_logs(flow_run_id):
    await APILogHandler.aflush()
    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return artifacts, logs


def _push(reg, repo, tag, **kw):
    async def go():
        async with client_for(reg.host) as c:
            return await push_image(c, repo, tag, **kw)

    return run(go())


def _dst_state(reg, repo):
    async def go():
        async with client_for(reg.host) as c:
            tags = await c.list_tags(repo)
            return {t: await c.manifest_digest(repo, t) for t in tags}

    return run(go())


def test_mirror_pins_by_digest_records_the_pin_and_a_rerun_moves_no_bytes(src, dst):
    pushed = _push(src, "nvidia/cuda", "12.1.1-cudnn8-runtime-ubuntu22.04", layers=3)
    destination = f"{dst.host}/base-images/cuda"

    state = run(mirror_base_image(pushed.ref, destination, return_state=True))
    first = state.result()
    assert first["status"] == "mirrored" and first["digest"] == pushed.digest
    assert (first["cudnn"], first["cuda"]) == ("8.9.0.131", "12.1.1")
    assert first["blobs_copied"] == 4 and first["bytes_copied"] > 0

    tags = _dst_state(dst, "base-images/cuda")
    dated = first["tags"][0]
    assert tags == {"12.1.1-cudnn8-runtime-ubuntu22.04": pushed.digest, dated: pushed.digest}
    assert dated.startswith("12.1.1-cudnn8-runtime-ubuntu22.04-20")

    pin = read_base_pin(destination)
    assert pin["digest"] == pin["source_digest"] == pushed.digest
    assert pin["image"] == f"{destination}@{pushed.digest}" and pin["dated_tag"] == dated
    assert pin["cudnn"] == "8.9.0.131" and pin["cuda"] == "12.1.1"
    assert (
        pin_variable_name(destination) == f"shipyard-base-pin-127-0-0-1-{dst.port}-base-images-cuda"
    )

    artifacts, _ = run(_artifacts_and_logs(state.state_details.flow_run_id))
    kinds = {a.type: a for a in artifacts}
    assert kinds["progress"].data == 100.0
    assert pushed.digest in kinds["markdown"].data and "8.9.0.131" in kinds["markdown"].data

    second = run(mirror_base_image(pushed.ref, destination))
    assert second["digest"] == pushed.digest and second["tags"] == first["tags"]
    assert (second["blobs_copied"], second["bytes_copied"], second["blobs_skipped"]) == (0, 0, 4)


def test_cudnn_9_is_refused_before_any_byte_moves(src, dst):
    pushed = _push(src, "nvidia/cuda", "12.4.1-cudnn-runtime-ubuntu22.04", cudnn="9.1.0.70")
    with pytest.raises(CudnnMismatch) as err:
        run(mirror_base_image(pushed.ref, f"{dst.host}/base-images/cuda"))
    text = str(err.value)
    assert (
        "cuDNN 9.1.0.70" in text and "expected cuDNN major 8" in text and "--expect-cudnn" in text
    )
    catalog = httpx.get(f"{dst.url}/v2/_catalog").json()
    assert catalog["repositories"] == []
    assert read_base_pin(f"{dst.host}/base-images/cuda") is None


def test_one_platform_of_a_manifest_list(src, dst):
    async def go():
        async with client_for(src.host) as c:
            return await push_index(c, "nvidia/cuda", "multi")

    index, children = run(go())
    destination = f"{dst.host}/base/cuda"
    result = run(mirror_base_image(index.ref, destination, platforms=["linux/arm64"]))
    assert result["digest"] == children["arm64"].digest and result["platforms"] == [
        "linux/arm64/v8"
    ]
    assert read_base_pin(destination)["source_digest"] == index.digest
    all_result = run(mirror_base_image(index.ref, f"{dst.host}/all/cuda"))
    assert all_result["digest"] == index.digest and len(all_result["platforms"]) == 2
    with pytest.raises(PlatformNotFound, match="index has linux/amd64, linux/arm64/v8"):
        run(mirror_base_image(index.ref, f"{dst.host}/s390x/cuda", platforms=["linux/s390x"]))
    single = _push(src, "nvidia/cuda", "amd64-only")
    with pytest.raises(PlatformNotFound, match="single linux/amd64 image, not linux/arm64"):
        run(mirror_base_image(single.ref, f"{dst.host}/single/cuda", platforms=["linux/arm64"]))
    assert httpx.get(f"{dst.url}/v2/_catalog").json()["repositories"] == ["all/cuda", "base/cuda"]


def test_buildx_image_with_attestations_passes_the_cudnn_gate_and_keeps_its_digest(src, dst):
    """`docker buildx build --push` adds an attestation manifest per image (unknown/unknown,
    docs.docker.com/build/metadata/attestations/attestation-storage): not a platform, so the
    cuDNN gate checks the two images only, and the index is mirrored as is."""

    async def go():
        async with client_for(src.host) as c:
            return await push_index(c, "nvidia/cuda", "buildx", docker=False, attestations=True)

    index, children = run(go())
    destination = f"{dst.host}/base/cuda"
    result = run(mirror_base_image(index.ref, destination, expect_cudnn=8))
    assert result["status"] == "mirrored" and result["digest"] == index.digest
    assert result["platforms"] == ["linux/amd64", "linux/arm64/v8"]
    assert result["cudnn"] == "8.9.0.131"
    served = _dst_state(dst, "base/cuda")
    assert set(served.values()) == {index.digest}
    for name in ("att-amd64", "att-arm64"):
        assert httpx.head(
            f"{dst.url}/v2/base/cuda/manifests/{children[name].digest}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).is_success


def test_drift_keeps_the_pin_unless_accepted_and_upstream_gone_keeps_serving(src, dst):
    old = _push(src, "nvidia/cuda", "12.1.1-cudnn8", seed=1)
    destination = f"{dst.host}/base/cuda"
    first = run(mirror_base_image(old.ref, destination))
    new = _push(src, "nvidia/cuda", "12.1.1-cudnn8", seed=2)

    drift = run(mirror_base_image(new.ref, destination))
    assert drift["status"] == "drift" and drift["digest"] == old.digest
    assert (
        old.digest in drift["message"]
        and new.digest in drift["message"]
        and "--accept-drift" in drift["message"]
    )
    assert read_base_pin(destination)["digest"] == old.digest
    assert _dst_state(dst, "base/cuda")["12.1.1-cudnn8"] == old.digest

    accepted = run(mirror_base_image(new.ref, destination, accept_drift=True))
    assert accepted["status"] == "mirrored" and read_base_pin(destination)["digest"] == new.digest
    tags = _dst_state(dst, "base/cuda")
    assert (
        tags["12.1.1-cudnn8"] == new.digest and tags[first["tags"][0]] == old.digest
    )  # dated tag never moves
    assert tags[accepted["tags"][0]] == new.digest and accepted["tags"][0] != first["tags"][0]

    httpx.delete(f"{src.url}/v2/nvidia/cuda/manifests/{new.digest}").raise_for_status()
    gone = run(mirror_base_image(new.ref, destination))
    assert gone["status"] == "upstream-gone" and gone["digest"] == new.digest
    assert (
        "gone" in gone["message"]
        and "MANIFEST_UNKNOWN" in gone["message"]
        and "still served" in gone["message"]
    )
    assert read_base_pin(destination)["digest"] == new.digest


def test_unknown_tag_without_a_pin_fails_plainly(src, dst):
    _push(src, "nvidia/cuda", "exists")
    with pytest.raises(NotFound) as err:
        run(mirror_base_image(f"{src.host}/nvidia/cuda:11.0-gone", f"{dst.host}/base/cuda"))
    assert "11.0-gone" in str(err.value) and "no pin" in str(err.value)


def test_credentials_from_blocks_and_no_secret_anywhere(src, start):
    remember("mirror registry password", "Pw-d0nt-leak-42")
    remember("wrong mirror registry password", "Wr0ng-d0nt-leak")
    private = start(htpasswd=("mirror-bot", "Pw-d0nt-leak-42"))
    run(
        DockerRegistryCredentials(
            username="mirror-bot", password="Pw-d0nt-leak-42", registry_url=private.host
        ).asave("mirror-dst-ok", overwrite=True)
    )
    run(
        DockerRegistryCredentials(
            username="mirror-bot", password="Wr0ng-d0nt-leak", registry_url=private.host
        ).asave("mirror-dst-bad", overwrite=True)
    )
    pushed = _push(src, "nvidia/cuda", "b1")

    ok = run(
        mirror_base_image(
            pushed.ref, f"{private.host}/base/cuda", destination_credentials="mirror-dst-ok"
        )
    )
    assert ok["digest"] == pushed.digest

    state = run(
        mirror_base_image(
            pushed.ref,
            f"{private.host}/other/cuda",
            destination_credentials="mirror-dst-bad",
            return_state=True,
        )
    )
    assert state.is_failed()
    with pytest.raises(RegistryAuthError) as err:
        state.result()
    assert "DockerRegistryCredentials block 'mirror-dst-bad'" in str(
        err.value
    ) and private.host in str(err.value)
    artifacts, logs = run(_artifacts_and_logs(state.state_details.flow_run_id))
    everything = (
        str(err.value)
        + json.dumps([a.data for a in artifacts], default=str)
        + " ".join(entry.message for entry in logs)
    )
    assert logs and "mirror-dst-bad" in everything
    assert "Wr0ng-d0nt-leak" not in everything and "Pw-d0nt-leak-42" not in everything


def test_cli_mirror_command(src, dst):
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps typer's subcommand form
    good = _push(src, "nvidia/cuda", "12.1.1-cudnn8", cudnn="8.9.0.131")
    bad = _push(src, "nvidia/cuda", "12.4.1-cudnn9", seed=7, cudnn="9.1.0.70")
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "mirror",
            good.ref,
            f"{dst.host}/base/cuda",
            "--expect-cudnn",
            "8",
            "--platform",
            "linux/amd64",
            "--json",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["digest"] == good.digest
    refused = runner.invoke(app, ["mirror", bad.ref, f"{dst.host}/base/cuda9"])
    assert refused.exit_code == 1 and "cuDNN 9.1.0.70" in refused.output
    malformed = runner.invoke(app, ["mirror", "nvidia/CUDA:1", f"{dst.host}/base/cuda"])
    assert (
        malformed.exit_code == 1
        and "source 'nvidia/CUDA:1' is not a valid image reference" in malformed.output
    )
