"""Google's facts about GPUs on Cloud Run, as the emulator enforces them (Google's 400s).

From "Configure GPUs for services" (https://cloud.google.com/run/docs/configuring/services/gpu):
an `nvidia-l4` instance needs at least 4 CPU and 16 GiB of memory, CPU always allocated
(instance-based billing), and the accelerator node selector together with the `nvidia.com/gpu`
limit; GPUs are offered in the regions listed there (these were listed at the time of writing).

The sandbox keeps its own copy: it plays Google, it does not read the pipeline's configuration.
tests/configuration/test_sandbox_agrees.py checks that the pipeline's list
(blocks/gpu_regions.py) says the same.
"""

from __future__ import annotations

CLOUD_RUN_GPU_REGIONS: dict[str, tuple[str, ...]] = {
    "nvidia-l4": ("asia-southeast1", "europe-west1", "europe-west4", "us-central1", "us-east4"),
}
# One GPU per instance: the GPU page configures `--gpu=1` with `nvidia-l4`; the Cloud Run
# example in huggingface/Google-Cloud-Containers#82 says "`--gpu` and `--gpu-type`: The number
# of GPUs and the GPU type to use. Needs to be set to 1 and `nvidia-l4`".
GPU_MAX_PER_INSTANCE = 1
GPU_MIN_CPU: dict[str, float] = {"nvidia-l4": 4.0}
GPU_MIN_MEMORY_GIB: dict[str, float] = {"nvidia-l4": 16.0}


def gpu_regions(accelerator: str) -> tuple[str, ...]:
    """The regions where Cloud Run offers `accelerator` (none for an unknown accelerator)."""
    return CLOUD_RUN_GPU_REGIONS.get(accelerator, ())
