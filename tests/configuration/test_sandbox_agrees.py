"""The sandbox imports nothing of the pipeline (tests/configuration/test_import_graph.py), so the
few facts both hold are written twice: Google's GPU rules for Cloud Run (the emulator answers
400 by them, the `ReleaseTarget` block refuses by them) and the names a release gives its
revisions (the sandbox's invariant checks look for them). Here the two copies must agree."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.emulator import cloud_run_gpu
from sandbox.release_invariants import release_revision_name
from shipyard.blocks import gpu_regions
from shipyard.blocks.names import revision_name


def test_the_emulator_enforces_the_gpu_facts_the_pipeline_plans_with():
    assert cloud_run_gpu.CLOUD_RUN_GPU_REGIONS == gpu_regions.CLOUD_RUN_GPU_REGIONS
    assert cloud_run_gpu.GPU_MIN_CPU == gpu_regions.GPU_MIN_CPU
    assert cloud_run_gpu.GPU_MIN_MEMORY_GIB == gpu_regions.GPU_MIN_MEMORY_GIB
    for accelerator in [*gpu_regions.CLOUD_RUN_GPU_REGIONS, "nvidia-h100", ""]:
        assert cloud_run_gpu.gpu_regions(accelerator) == gpu_regions.gpu_regions(accelerator)


SERVICES = ["page-service", "svc", "a" * 40, "translator-gpu-" + "x" * 30]
TAGS = ["v1.2.3", "V1.2.3-RC.1", "release/2025_10_01", "v" + "9." * 40 + "1", "1.0", "v1..2"]


def test_the_invariants_look_for_the_revisions_a_release_creates():
    for service in SERVICES:
        for tag in TAGS:
            assert release_revision_name(service, tag) == revision_name(service, tag), (
                service,
                tag,
            )


@settings(max_examples=300, deadline=None)
@given(
    service=st.from_regex(r"[a-z][a-z0-9-]{0,48}[a-z0-9]", fullmatch=True),
    tag=st.text(alphabet="abcvV0123456789.-_/+ ", min_size=1, max_size=90),
)
def test_revision_names_agree_for_any_service_and_tag(service, tag):
    try:
        expected = revision_name(service, tag)
    except ValueError:
        return  # a tag the pipeline refuses: no release, no revision to look for
    assert release_revision_name(service, tag) == expected
